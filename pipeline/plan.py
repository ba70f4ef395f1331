"""Plan stage: dedupe by content, skip what the atlas holds, cut length-sorted work units.

Given the accepted and rejected records of a run and the atlas's current state, decide:

* which rejects are new (``rejects.reject_key`` not yet in the atlas);
* which accepted records already have their entry row (same accession, sequence and model):
  nothing to do, ever again;
* which records only need an entry row because their sequence was already predicted by this
  model (another accession, an earlier run, or a run that died between publishing a unit's
  structures and its entries): *link* entries, no model time;
* which unique sequences must be predicted, sorted by length and cut into work units of at most
  ``unit_max_residues`` residues. A unit's id is a hash of its sequences, so its shard names
  are deterministic.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pipeline.config import PlanConfig
from pipeline.ingest import AcceptedRecord, RejectedRecord
from pipeline.msa_stage import MSASpec, MSAStat
from storage.atlas import Atlas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str
    model: str
    sequences: tuple[str, ...]  # unique, sorted by length
    records: tuple[AcceptedRecord, ...]  # every record of this run whose sequence is in the unit
    msa_cached: tuple[tuple[str, MSAStat], ...] = ()  # (sha256, stats) of MSAs already in the atlas

    @property
    def residues(self) -> int:
        return sum(len(s) for s in self.sequences)


@dataclass
class Plan:
    model: str
    units: list[WorkUnit] = field(default_factory=list)
    link_records: list[AcceptedRecord] = field(default_factory=list)
    already_done: int = 0  # accepted records whose entry row exists
    new_rejects: list[RejectedRecord] = field(default_factory=list)
    known_rejects: int = 0
    msa_known: dict[str, MSAStat] = field(default_factory=dict)  # sha256 -> cached MSA stats
    reused: dict[str, list[AcceptedRecord]] = field(default_factory=dict)  # model -> records (pipeline.reuse)

    @property
    def sequences_to_predict(self) -> int:
        return sum(len(u.sequences) for u in self.units)

    @property
    def residues_to_predict(self) -> int:
        return sum(u.residues for u in self.units)


def reject_key(rec: RejectedRecord) -> str:
    h = hashlib.sha256()
    for part in (rec.header or "", rec.raw_sequence or "", rec.code):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def atlas_state(atlas: Atlas, model: str) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """(entry keys (accession, sha256), predicted sha256s, reject keys) already in the atlas."""
    con = atlas.duckdb()
    try:
        entries = con.execute(
            f"SELECT DISTINCT accession, sequence_sha256 FROM read_parquet('{atlas.glob('entries')}', "
            "union_by_name=true) WHERE model = ?", [model]).fetchall()
        structures = con.execute(
            f"SELECT DISTINCT sequence_sha256 FROM read_parquet('{atlas.glob('structures')}', "
            "union_by_name=true) WHERE model = ?", [model]).fetchall()
        rejects = con.execute(
            f"SELECT DISTINCT reject_key FROM read_parquet('{atlas.glob('rejects')}', union_by_name=true)"
        ).fetchall()
    finally:
        con.close()
    return {(a, s) for a, s in entries}, {s for (s,) in structures}, {k for (k,) in rejects}


def cached_msas(atlas: Atlas, spec: MSASpec, sha256s: Iterable[str]) -> dict[str, MSAStat]:
    """Stats of the MSAs the atlas already holds for these sequences with this database and parameters."""
    keys = {spec.key(s): s for s in sha256s}
    if not keys:
        return {}
    con = atlas.duckdb()
    try:
        con.execute("CREATE TEMP TABLE want(k VARCHAR)")
        con.executemany("INSERT INTO want VALUES (?)", [(k,) for k in keys])
        rows = con.execute(
            f"SELECT DISTINCT m.msa_key, m.depth, m.neff FROM read_parquet('{atlas.glob('msas')}', "
            "union_by_name=true) m JOIN want ON m.msa_key = want.k").fetchall()
    finally:
        con.close()
    return {keys[k]: MSAStat(k, int(d), float(n)) for k, d, n in rows}


def unit_id_for(model: str, sha256s: Iterable[str]) -> str:
    h = hashlib.sha256()
    for s in sorted(sha256s):
        h.update(bytes.fromhex(s))
    return f"{model}-{h.hexdigest()[:20]}"


def cut_units(by_sha: dict[str, list[AcceptedRecord]], model: str, cfg: PlanConfig,
              msa_known: dict[str, MSAStat] | None = None) -> list[WorkUnit]:
    order = sorted(by_sha, key=lambda s: (len(by_sha[s][0].sequence), s))
    units: list[WorkUnit] = []
    current: list[str] = []
    residues = 0

    def close() -> None:
        if current:
            recs = tuple(r for s in current for r in by_sha[s])
            cached = tuple((s, msa_known[s]) for s in current if msa_known and s in msa_known)
            units.append(WorkUnit(unit_id_for(model, current), model,
                                  tuple(by_sha[s][0].sequence for s in current), recs, cached))

    for sha in order:
        n = len(by_sha[sha][0].sequence)
        if current and (residues + n > cfg.unit_max_residues or len(current) >= cfg.unit_max_sequences):
            close()
            current, residues = [], 0
        current.append(sha)
        residues += n
    close()
    return units


def make_plan(accepted: list[AcceptedRecord], rejected: list[RejectedRecord], atlas: Atlas,
              model: str, cfg: PlanConfig, msa: MSASpec | None = None,
              reuse_models: Sequence[str] = ()) -> Plan:
    entry_keys, predicted, reject_keys = atlas_state(atlas, model)
    plan = Plan(model=model)
    for bad in rejected:
        if reject_key(bad) in reject_keys:
            plan.known_rejects += 1
        else:
            plan.new_rejects.append(bad)
    to_predict: dict[str, list[AcceptedRecord]] = defaultdict(list)
    for rec in accepted:
        if (rec.accession, rec.sha256) in entry_keys:
            plan.already_done += 1
        elif rec.sha256 in predicted:
            plan.link_records.append(rec)
        else:
            to_predict[rec.sha256].append(rec)
    if reuse_models and to_predict:
        from pipeline.reuse import apply_reuse

        apply_reuse(plan, to_predict, atlas, reuse_models)
    if msa is not None:
        plan.msa_known = cached_msas(atlas, msa, {r.sha256 for r in accepted})
    plan.units = cut_units(to_predict, model, cfg, plan.msa_known)
    log.info("plan: %d units, %d sequences to predict, %d link entries, %d already done, %d new rejects",
             len(plan.units), plan.sequences_to_predict, len(plan.link_records), plan.already_done,
             len(plan.new_rejects))
    return plan
