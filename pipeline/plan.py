"""Plan stage: dedupe by content, skip what the atlas holds, cut length-sorted work units.

Given a run's ingest (:class:`pipeline.spill.IngestSpill`: accepted and rejected records in
Parquet) and the atlas's current state, :func:`plan_run` decides, in DuckDB SQL over the spill and
the atlas's ``read_parquet`` globs (memory-limited, spilling to the run's scratch directory):

* which rejects are new (``rejects.reject_key`` not yet in the atlas);
* which accepted records already have their entry row (same accession, sequence and model):
  nothing to do, ever again;
* which records only need an entry row because their sequence was already predicted by this
  model (another accession, an earlier run, or a run that died between publishing a unit's
  structures and its entries): *link* entries, no model time;
* which records reuse an imported structure (:mod:`pipeline.reuse`);
* which unique sequences must be predicted, sorted by length and cut into work units of at most
  ``unit_max_residues`` residues and ``unit_max_sequences`` sequences. A unit's id is a hash of its
  sequences (:func:`unit_id_for`), so its shard names are deterministic.

Everything streams: the results are Parquet files in the plan directory (new rejects, link and
reuse entries with the structure metrics they copy, and the work units, one row per unit with its
pickled :class:`WorkUnit` as the payload), read back in bounded batches; the driver holds unit ids
and counts, never the records. :func:`make_plan` is the same planner over in-memory lists (tests,
small tools).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import pickle
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import PlanConfig
from pipeline.ingest import (
    AcceptedRecord,
    IngestPolicy,
    LiteRef,
    RejectedRecord,
    lite_from_record,
    record_from_lite,
)
from pipeline.msa_stage import MSASpec, MSAStat
from storage.atlas import Atlas

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
UNIT_GROUP_ROWS = 64  # units per Parquet row group of the units files
PARALLEL_RECORDS = 50_000  # fewer records to predict: units are built in the driver process
UNITS_SCHEMA = pa.schema([
    pa.field("unit_id", pa.string()), pa.field("payload", pa.large_binary()),
    pa.field("sequences", pa.int64()), pa.field("records", pa.int64()), pa.field("residues", pa.int64()),
])
#: Structure columns copied into link and reuse entry rows (``write.entry_rows_for_links``).
_METRICS = ("global_metric_value", "fraction_plddt_very_low", "fraction_plddt_low", "fraction_plddt_confident",
            "fraction_plddt_very_high", "ptm", "mean_plddt", "tier", "published", "created_at")


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
    """The plan as lists (:func:`make_plan`), for tests and small inputs."""

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
    """(entry keys (accession, sha256), predicted sha256s, reject keys) already in the atlas.

    Sets in memory: for the importer's small batches, not for planning a run."""
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
    """Stats of the MSAs the atlas already holds for these sequences with this database and
    parameters (a lookup for a few sequences: those re-routed after running out of memory)."""
    from storage.query import msa_rows

    keys = {spec.key(s): s for s in sha256s}
    if not keys:
        return {}
    return {keys[k]: MSAStat(k, int(d), float(n)) for k, d, n in msa_rows(atlas, keys, ["depth", "neff"])}


def unit_id_for(model: str, sha256s: Iterable[str]) -> str:
    h = hashlib.sha256()
    for s in sorted(sha256s):
        h.update(bytes.fromhex(s))
    return f"{model}-{h.hexdigest()[:20]}"


def cut_units(by_sha: dict[str, list[AcceptedRecord]], model: str, cfg: PlanConfig,
              msa_known: dict[str, MSAStat] | None = None) -> list[WorkUnit]:
    """Units from records grouped by sequence, in memory (:func:`plan_run` cuts the same units by streaming)."""
    order = sorted(by_sha, key=lambda s: (len(by_sha[s][0].sequence), s))
    units: list[WorkUnit] = []
    for members in _cut(((s, len(by_sha[s][0].sequence)) for s in order), cfg):
        recs = tuple(r for s in members for r in by_sha[s])
        cached = tuple((s, msa_known[s]) for s in members if msa_known and s in msa_known)
        units.append(WorkUnit(unit_id_for(model, members), model, tuple(by_sha[s][0].sequence for s in members),
                              recs, cached))
    return units


class _Cutter:
    """Greedy cut of unique ``(sha256, length)`` in (length, sha256) order: a unit closes before the
    sequence that would take it over ``unit_max_residues`` or past ``unit_max_sequences`` (a longer
    sequence is a unit alone)."""

    def __init__(self, cfg: PlanConfig) -> None:
        self.cfg = cfg
        self.current: list[str] = []
        self.residues = 0

    def add(self, sha: str, n: int) -> list[str] | None:
        """Add the next sequence; returns the unit it closed, if it closed one."""
        closed = None
        if self.current and (self.residues + n > self.cfg.unit_max_residues
                             or len(self.current) >= self.cfg.unit_max_sequences):
            closed, self.current, self.residues = self.current, [], 0
        self.current.append(sha)
        self.residues += n
        return closed


def _cut(ordered: Iterable[tuple[str, int]], cfg: PlanConfig) -> Iterator[list[str]]:
    cutter = _Cutter(cfg)
    for sha, n in ordered:
        if (closed := cutter.add(sha, n)) is not None:
            yield closed
    if cutter.current:
        yield cutter.current


def route_long(units: Sequence[WorkUnit], above: int | None) -> tuple[list[WorkUnit], list[WorkUnit]]:
    """(normal units, long units): a unit straddling ``above`` is cut in two (deterministic ids)."""
    if above is None:
        return list(units), []
    normal: list[WorkUnit] = []
    long: list[WorkUnit] = []
    for u in units:
        short_seqs = tuple(s for s in u.sequences if len(s) <= above)
        if len(short_seqs) in (0, len(u.sequences)):
            (normal if short_seqs else long).append(u)
            continue
        for seqs, dest in ((short_seqs, normal), (tuple(s for s in u.sequences if len(s) > above), long)):
            recs = tuple(r for r in u.records if r.sequence in set(seqs))
            shas = {r.sha256 for r in recs}
            dest.append(WorkUnit(unit_id_for(u.model, shas), u.model, seqs, recs,
                                 tuple(m for m in u.msa_cached if m[0] in shas)))
    return normal, long


# --------------------------------------------------------------------------------------------
# The streamed plan


@dataclass
class StreamPlan:
    """What :func:`plan_run` decided; the records stay in Parquet files under ``root``."""

    model: str
    root: Path
    units_files: dict[str, Path] = field(default_factory=dict)  # "normal" / "long" -> units Parquet
    units: int = 0
    units_long: int = 0
    sequences_to_predict: int = 0
    residues_to_predict: int = 0
    already_done: int = 0
    known_rejects: int = 0
    new_rejects: int = 0
    linked: int = 0  # records that get a link entry (this model predicted their sequence earlier)
    reused: int = 0  # records that get an entry pointing to an imported structure
    unit_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # unit id -> (sequences, residues)

    def iter_units(self, kind: str | None = None, batch_rows: int = UNIT_GROUP_ROWS) -> Iterator[WorkUnit]:
        for k, path in self.units_files.items():
            if kind is None or kind == k:
                for batch in pq.ParquetFile(path).iter_batches(batch_rows, columns=["payload"]):
                    for payload in batch.column(0).to_pylist():
                        yield pickle.loads(payload)

    def load_units(self, unit_ids: Iterable[str]) -> list[WorkUnit]:
        """The units with these ids, read back from the units files (lost units, crash failure rows)."""
        want = pa.array(sorted(set(unit_ids)), pa.string())
        found: dict[str, WorkUnit] = {}
        for path in self.units_files.values():
            for batch in pq.ParquetFile(path).iter_batches(UNIT_GROUP_ROWS, columns=["unit_id", "payload"]):
                hit = batch.filter(pc.is_in(batch.column(0), value_set=want))
                for uid, payload in zip(hit.column(0).to_pylist(), hit.column(1).to_pylist(), strict=True):
                    found[uid] = pickle.loads(payload)
        return [found[u] for u in want.to_pylist() if u in found]

    def iter_new_rejects(self, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Batches of the spill's REJECTED_SCHEMA (with ``reject_key``), in input order."""
        yield from _batches(self.root / "new_rejects.parquet", batch_rows)

    def iter_entry_batches(self, kind: str, batch_rows: int = BATCH_ROWS
                           ) -> Iterator[tuple[str, list[AcceptedRecord], dict[str, dict[str, Any]], dict[str, MSAStat]]]:
        """``kind`` "link" or "reuse": ``(model, records, structure metrics by sha256, MSA stats by
        sha256)`` per batch of at most ``batch_rows`` records, one model per batch."""
        from pipeline.spill import records_from_table

        for batch in _batches(self.root / f"{kind}.parquet", batch_rows):
            models = batch.column("entry_model").to_pylist()
            for model in sorted(set(models)):
                part = batch.filter(pa.array([m == model for m in models]))
                records = records_from_table(part)
                structures: dict[str, dict[str, Any]] = {}
                msa: dict[str, MSAStat] = {}
                for row in part.select(["sha256", *[f"s_{c}" for c in _METRICS], "msa_key", "msa_depth",
                                        "msa_neff"]).to_pylist():
                    structures[row["sha256"]] = {c: row[f"s_{c}"] for c in _METRICS}
                    if row["msa_key"] is not None:
                        msa[row["sha256"]] = MSAStat(row["msa_key"], int(row["msa_depth"]), float(row["msa_neff"]))
                yield model, records, structures, msa


def write_units_file(path: Path, units: Sequence[WorkUnit]) -> Path:
    """Units held in memory in the units Parquet layout (:data:`UNITS_SCHEMA`)."""
    pq.write_table(pa.table({
        "unit_id": [u.unit_id for u in units], "payload": [pickle.dumps(u, protocol=5) for u in units],
        "sequences": [len(u.sequences) for u in units], "records": [len(u.records) for u in units],
        "residues": [u.residues for u in units]}, schema=UNITS_SCHEMA), path, row_group_size=8)
    return path


def units_plan(parts: dict[str, Sequence[WorkUnit]], model: str, root: Path) -> StreamPlan:
    """A :class:`StreamPlan` of units held in memory (few: a pass's lost units split into single
    sequences, sequences re-routed after running out of memory), ``parts`` by kind ("normal",
    "long"); their units files are written under ``root`` (emptied first)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    plan = StreamPlan(model=model, root=root)
    for kind, units in parts.items():
        if not units:
            continue
        plan.units_files[kind] = write_units_file(root / f"units-{kind}.parquet", units)
        plan.unit_counts.update({u.unit_id: (len(u.sequences), u.residues) for u in units})
        plan.units += len(units)
        plan.units_long += len(units) if kind == "long" else 0
        plan.sequences_to_predict += sum(len(u.sequences) for u in units)
        plan.residues_to_predict += sum(u.residues for u in units)
    return plan


def _batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    if path.exists():
        yield from pq.ParquetFile(path).iter_batches(batch_rows)


def _q(p: str | Path) -> str:
    return str(p).replace("'", "''")


def plan_run(spill: Any, atlas: Atlas, model: str, cfg: PlanConfig, out_dir: str | Path, *,
             msa: MSASpec | None = None, reuse_models: Sequence[str] = (), long_above: int | None = None,
             memory_limit: str = "2GB", batch_rows: int = BATCH_ROWS, workers: int | None = None) -> StreamPlan:
    """Plan a run from its ingest spill; writes the plan's files under ``out_dir`` (emptied first)."""
    from pipeline.spill import duckdb_connect

    root = Path(out_dir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    plan = StreamPlan(model=model, root=root)
    con = duckdb_connect(root, memory_limit, con=atlas.duckdb())
    try:
        _plan_sql(con, spill, atlas, plan, msa, reuse_models)
        _write_units(con, plan, cfg, long_above, batch_rows, workers or min(2, os.cpu_count() or 1))
    finally:
        con.close()
        shutil.rmtree(root / "duckdb-tmp", ignore_errors=True)
    log.info("plan: %d units (%d long), %d sequences to predict, %d link entries, %d reused, %d already done, "
             "%d new rejects", plan.units, plan.units_long, plan.sequences_to_predict, plan.linked, plan.reused,
             plan.already_done, plan.new_rejects)
    return plan


def _count(con: Any, sql: str, params: Sequence[Any] = ()) -> int:
    return int(con.execute(sql, list(params)).fetchall()[0][0])


def _plan_sql(con: Any, spill: Any, atlas: Atlas, plan: StreamPlan, msa: MSASpec | None,
              reuse_models: Sequence[str]) -> None:
    root = plan.root
    acc = spill.accepted_sql()
    g = {t: f"read_parquet('{_q(atlas.glob(t))}', union_by_name=true)" for t in ("entries", "structures", "rejects",
                                                                                 "msas")}
    # rejects: known to the atlas or new
    con.execute(f"COPY (SELECT r.* FROM {spill.rejected_sql()} r ANTI JOIN (SELECT DISTINCT reject_key FROM "
                f"{g['rejects']}) k USING (reject_key) ORDER BY r.file_no, r.record_index) "
                f"TO '{_q(root / 'new_rejects.parquet')}' (FORMAT parquet)")
    plan.new_rejects = _count(con, f"SELECT count(*) FROM read_parquet('{_q(root / 'new_rejects.parquet')}')")
    plan.known_rejects = spill.rejected - plan.new_rejects

    con.execute(f"CREATE TEMP TABLE ekeys AS SELECT DISTINCT accession, sequence_sha256 AS sha256 FROM {g['entries']} "
                "WHERE model = $1", [plan.model])
    con.execute(f"CREATE TEMP TABLE pred AS SELECT DISTINCT ON (sequence_sha256) sequence_sha256 AS sha256, "
                f"{', '.join(f'{c} AS s_{c}' for c in _METRICS)} FROM {g['structures']} WHERE model = $1",
                [plan.model])
    if msa is not None:  # cached MSA stats of every accepted sequence (units and link entries carry them)
        con.execute(
            f"CREATE TEMP TABLE msa_known AS SELECT DISTINCT ON (k.sha256) k.sha256, m.msa_key, m.depth AS msa_depth, "
            f"m.neff AS msa_neff FROM (SELECT DISTINCT sha256, sha256(sha256 || ':' || $1 || ':' || $2) AS msa_key "
            f"FROM {acc}) k JOIN {g['msas']} m ON m.msa_key = k.msa_key", [msa.db_id, msa.params_key])
    else:
        con.execute("CREATE TEMP TABLE msa_known (sha256 VARCHAR, msa_key VARCHAR, msa_depth BIGINT, msa_neff DOUBLE)")
    # one pass over the spill: records without their entry row, and whether this model predicted them
    # (a temp table: DuckDB keeps it compressed and spills it beyond the memory limit)
    con.execute(f"CREATE TEMP TABLE not_done AS SELECT a.* EXCLUDE (chunk_offset, chunk_length, chunk_sub), "
                f"a.sha256 IN (SELECT sha256 FROM pred) AS predicted FROM {acc} a ANTI JOIN ekeys e "
                "ON a.accession = e.accession AND a.sha256 = e.sha256")
    plan.already_done = _count(con, f"SELECT count(*) FROM {acc}") - _count(con, "SELECT count(*) FROM not_done")
    # link entries: the sequence was predicted by this model
    con.execute("COPY (SELECT a.* EXCLUDE (predicted), $1 AS entry_model, p.* EXCLUDE (sha256), m.* EXCLUDE (sha256) "
                "FROM not_done a JOIN pred p ON a.sha256 = p.sha256 LEFT JOIN msa_known m ON a.sha256 = m.sha256 "
                f"WHERE a.predicted ORDER BY a.file_no, a.record_index, a.fragment) TO '{_q(root / 'link.parquet')}' "
                "(FORMAT parquet)", [plan.model])
    plan.linked = _count(con, "SELECT count(*) FROM not_done WHERE predicted")
    todo = "(SELECT * EXCLUDE (predicted) FROM not_done WHERE NOT predicted)"
    if reuse_models:
        todo = _reuse(con, plan, todo, g, reuse_models)
    con.execute(f"CREATE TEMP VIEW todo AS SELECT t.*, m.msa_key, m.msa_depth, m.msa_neff FROM {todo} t "
                "LEFT JOIN msa_known m ON t.sha256 = m.sha256")


def _reuse(con: Any, plan: StreamPlan, todo: str, g: dict[str, str], patterns: Sequence[str]) -> str:
    """Move records whose sequence has a reusable imported structure out of ``todo`` (pipeline.reuse)."""
    from pipeline.reuse import rank_models

    models = [m for (m,) in con.execute(f"SELECT DISTINCT model FROM {g['structures']} WHERE model <> $1",
                                        [plan.model]).fetchall()]
    ranks = rank_models(models, patterns)
    if not ranks:
        return todo
    con.execute("CREATE TEMP TABLE reuse_rank (model VARCHAR, r INTEGER)")
    con.executemany("INSERT INTO reuse_rank VALUES (?, ?)", list(ranks.items()))
    con.execute(f"""CREATE TEMP TABLE chosen AS SELECT sha256, model, {', '.join(f's_{c}' for c in _METRICS)} FROM (
        SELECT s.sequence_sha256 AS sha256, s.model, {', '.join(f's.{c} AS s_{c}' for c in _METRICS)},
               row_number() OVER (PARTITION BY s.sequence_sha256 ORDER BY k.r, s.model) AS rn
        FROM {g['structures']} s JOIN reuse_rank k ON s.model = k.model
        WHERE s.sequence_sha256 IN (SELECT sha256 FROM {todo})) WHERE rn = 1""")
    hit = (f"{todo} t JOIN chosen c ON t.sha256 = c.sha256 LEFT JOIN (SELECT DISTINCT accession, sequence_sha256, "
           f"model FROM {g['entries']} WHERE model IN (SELECT model FROM reuse_rank)) e "
           "ON e.accession = t.accession AND e.sequence_sha256 = t.sha256 AND e.model = c.model")
    plan.already_done += _count(con, f"SELECT count(*) FROM {hit} WHERE e.model IS NOT NULL")
    con.execute(f"COPY (SELECT t.*, c.model AS entry_model, c.* EXCLUDE (sha256, model), m.* EXCLUDE (sha256) "
                f"FROM {hit} LEFT JOIN msa_known m ON t.sha256 = m.sha256 WHERE e.model IS NULL "
                f"ORDER BY c.model, t.file_no, t.record_index, t.fragment) TO '{_q(plan.root / 'reuse.parquet')}' "
                "(FORMAT parquet)")
    plan.reused = _count(con, f"SELECT count(*) FROM read_parquet('{_q(plan.root / 'reuse.parquet')}')")
    n = _count(con, "SELECT count(*) FROM chosen")
    if n:
        log.info("plan: %d sequences reuse structures of %s", n,
                 sorted(m for (m,) in con.execute("SELECT DISTINCT model FROM chosen").fetchall()))
    return f"(SELECT * FROM {todo} WHERE sha256 NOT IN (SELECT sha256 FROM chosen))"


def _write_units(con: Any, plan: StreamPlan, cfg: PlanConfig, long_above: int | None, batch_rows: int,
                 workers: int) -> None:
    """Cut the length-sorted unique sequences into units (streaming), then write each unit's payload."""

    ids: list[str] = []
    cutter = _Cutter(cfg)
    writers: dict[str, pq.ParquetWriter] = {}
    pending: dict[str, list[tuple[str, bytes, int, int, int]]] = {"normal": [], "long": []}

    def flush(kind: str) -> None:
        rows = pending[kind]
        if not rows:
            return
        if kind not in writers:
            plan.units_files[kind] = plan.root / f"units-{kind}.parquet"
            writers[kind] = pq.ParquetWriter(plan.units_files[kind], UNITS_SCHEMA, compression="zstd",
                                            use_dictionary=False)  # payloads and ids are unique
        cols = list(zip(*rows, strict=True))
        writers[kind].write_batch(pa.RecordBatch.from_arrays(
            [pa.array(cols[0], pa.string()), pa.array(cols[1], pa.large_binary()),
             *(pa.array(c, pa.int64()) for c in cols[2:])], schema=UNITS_SCHEMA))
        pending[kind] = []

    def take(built: list[tuple[str, str, bytes, int, int, int]]) -> None:
        for kind, uid, payload, n_seq, n_rec, residues in built:
            pending[kind].append((uid, payload, n_seq, n_rec, residues))
            plan.unit_counts[uid] = (n_seq, residues)
            plan.units += 1
            plan.units_long += kind == "long"
            plan.sequences_to_predict += n_seq
            plan.residues_to_predict += residues
            if len(pending[kind]) >= UNIT_GROUP_ROWS:
                flush(kind)

    n_todo = _count(con, "SELECT count(*) FROM todo")
    # one sort of the records to predict; units are cut from it as it streams (rows of one sequence
    # are adjacent; a unit's id needs all its sequences, so the open unit's rows wait for the next batch)
    reader = con.sql("SELECT * FROM todo ORDER BY length, sha256, file_no, record_index, fragment"
                     ).to_arrow_reader(batch_rows)
    # building records and pickling payloads is most of planning's Python work: worker processes
    # build whole units from slices of the sorted stream, results are written in stream order
    pool = (ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            if workers > 1 and n_todo >= PARALLEL_RECORDS else None)
    futures: deque[Any] = deque()
    carry: pa.Table | None = None
    try:
        for batch in itertools.chain(reader, [None]):
            if batch is None:
                if cutter.current:
                    ids.append(unit_id_for(plan.model, cutter.current))
                ready, carry = carry, None
            else:
                nos = []
                prev = None
                for sha, n in zip(batch.column("sha256").to_pylist(), batch.column("length").to_pylist(), strict=True):
                    if sha != prev:
                        prev = sha
                        if (closed := cutter.add(sha, n)) is not None:
                            ids.append(unit_id_for(plan.model, closed))
                    nos.append(len(ids))  # the open unit's number
                table = pa.Table.from_batches([batch]).append_column("unit_no", pa.array(nos, pa.int64()))
                if carry is not None:
                    table = pa.concat_tables([carry, table])
                unit_no = table.column("unit_no").to_numpy()
                n_done = int(np.count_nonzero(unit_no != len(ids)))  # rows of closed units
                ready, carry = table.slice(0, n_done), table.slice(n_done)
            if ready is None or not ready.num_rows:
                continue
            nos_ready = sorted(set(ready.column("unit_no").to_pylist()))
            args = (ready, {n: ids[n] for n in nos_ready}, plan.model, long_above)
            if pool is None:
                take(build_units(*args))
                continue
            futures.append(pool.submit(build_units, *args))
            while len(futures) > 2 * workers:
                take(futures.popleft().result())
        while futures:
            take(futures.popleft().result())
        for kind in pending:
            flush(kind)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for w in writers.values():
            w.close()


def build_units(table: pa.Table, ids: dict[int, str], model: str, long_above: int | None
                ) -> list[tuple[str, str, bytes, int, int, int]]:
    """Whole units from rows sorted by unit: ``(kind, unit id, pickled WorkUnit, sequences, records,
    residues)`` per unit after long-sequence routing (runs in planning's worker processes).

    A unit's payload holds its rows as Arrow IPC (:class:`_UnitRows`): it unpickles into the
    WorkUnit, records built there (header fields, CRC64, MD5 computed by the Ray worker that loads
    it, off the planning path), so planning makes no Python object per record. A unit that
    straddles ``long_above`` is split by :func:`route_long` (new ids) from its records."""
    out: list[tuple[str, str, bytes, int, int, int]] = []
    n = table.num_rows
    if not n:
        return out
    nos = table.column("unit_no").to_numpy()
    lengths = table.column("length").to_numpy()
    sha = table.column("sha256")
    first = np.ones(n, np.bool_)  # the first row of a sequence (its rows are adjacent)
    if n > 1:
        first[1:] = pc.not_equal(sha.slice(1), sha.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, nos[1:] != nos[:-1]])
    rows = table.select([*_unit_columns()])
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), n], strict=True):
        uid, lens, firsts = ids[int(nos[start])], lengths[start:end], first[start:end].copy()
        firsts[0] = True
        part = rows.slice(start, end - start)
        if long_above is not None and lens.min() <= long_above < lens.max():
            for kind, units in zip(("normal", "long"), route_long([_work_unit(uid, model, part)], long_above),
                                   strict=True):
                out += [(kind, u.unit_id, pickle.dumps(u, protocol=5), len(u.sequences), len(u.records), u.residues)
                        for u in units]
            continue
        kind = "long" if long_above is not None and lens.min() > long_above else "normal"
        out.append((kind, uid, pickle.dumps(_UnitRows(uid, model, _ipc(part)), protocol=5), int(firsts.sum()),
                    end - start, int(lens[firsts].sum())))
    return out


def _unit_columns() -> list[str]:
    from pipeline.spill import RECORD_COLUMNS

    return [*RECORD_COLUMNS, "msa_key", "msa_depth", "msa_neff"]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


class _UnitRows:
    """A unit as its rows (:func:`_unit_columns`, Arrow IPC): pickles as the WorkUnit it unpickles into."""

    __slots__ = ("args",)

    def __init__(self, unit_id: str, model: str, rows: bytes) -> None:
        self.args = (unit_id, model, rows)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return unit_from_rows, self.args


def unit_from_rows(unit_id: str, model: str, rows: bytes) -> WorkUnit:
    """The WorkUnit of a unit's rows (what a :class:`_UnitRows` payload unpickles into)."""
    return _work_unit(unit_id, model, pa.ipc.open_stream(rows).read_all(), lite=False)


def _work_unit(unit_id: str, model: str, rows: pa.Table, lite: bool = True) -> WorkUnit:
    """The WorkUnit of rows of one unit (:func:`_unit_columns`), records in row order; ``lite``:
    LiteRefs (pickle as their AcceptedRecords), else AcceptedRecords."""
    from pipeline.spill import RECORD_COLUMNS

    cols = [rows.column(c).to_pylist() for c in RECORD_COLUMNS]
    records: list[Any] = [LiteRef(v) if lite else record_from_lite(v) for v in zip(*cols, strict=True)]
    keys, depths, neffs = (rows.column(c).to_pylist() for c in ("msa_key", "msa_depth", "msa_neff"))
    seqs: dict[str, str] = {}
    cached: dict[str, MSAStat] = {}
    for i, r in enumerate(records):
        seqs.setdefault(r.sha256, r.sequence)
        if keys[i] is not None:
            cached[r.sha256] = MSAStat(keys[i], int(depths[i]), float(neffs[i]))
    return WorkUnit(unit_id, model, tuple(seqs.values()), tuple(records),
                    tuple((s, cached[s]) for s in seqs if s in cached))


# --------------------------------------------------------------------------------------------
# The same planner over lists


def spill_records(accepted: Sequence[AcceptedRecord], rejected: Sequence[RejectedRecord], root: Path) -> Any:
    """An ingest spill (:class:`pipeline.spill.IngestSpill`) of records held in memory, written under
    ``root`` (records already checked, duplicates resolved): for :func:`make_plan` and for the
    fragments of sequences that ran out of memory (``pipeline.runner``)."""
    from pipeline.spill import IngestSpill, accepted_batch, rejected_batch

    for sub in ("accepted", "rejected"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    files = sorted({r.source for r in accepted} | {r.source for r in rejected})
    file_no = {s: i for i, s in enumerate(files)}
    for src in files or [""]:
        rows = [(*lite_from_record(r), file_no[r.source], r.whole_sha256, r.oom_split, -1, -1, 0)
                for r in accepted if r.source == src]
        pq.write_table(pa.Table.from_batches([accepted_batch(rows, src)]),
                       root / "accepted" / f"records-{file_no.get(src, 0)}.parquet")
    by_file: dict[int, list[RejectedRecord]] = {}
    for bad in rejected:
        by_file.setdefault(file_no[bad.source], []).append(bad)
    batches = [rejected_batch(recs, no) for no, recs in sorted(by_file.items())] or [rejected_batch([], 0)]
    pq.write_table(pa.Table.from_batches(batches), root / "rejected" / "records.parquet")
    spill = IngestSpill(root, IngestPolicy(), accepted=len({(r.source, r.record_index) for r in accepted}))
    spill.rejected_by_reason = dict(Counter(r.code for r in rejected))
    return spill


def make_plan(accepted: list[AcceptedRecord], rejected: list[RejectedRecord], atlas: Atlas,
              model: str, cfg: PlanConfig, msa: MSASpec | None = None,
              reuse_models: Sequence[str] = ()) -> Plan:
    """:func:`plan_run` over in-memory records (already checked, duplicates resolved); returns lists."""
    from pipeline.spill import rejects_from_table

    with tempfile.TemporaryDirectory(prefix="foldatlas-plan-") as tmp:
        root = Path(tmp)
        spill = spill_records(accepted, rejected, root)
        sp = plan_run(spill, atlas, model, cfg, root / "plan", msa=msa, reuse_models=reuse_models)
        plan = Plan(model=model, already_done=sp.already_done, known_rejects=sp.known_rejects)
        plan.units = list(sp.iter_units())
        plan.new_rejects = [r for b in sp.iter_new_rejects() for r in rejects_from_table(b)]
        for _, records, _, known in sp.iter_entry_batches("link"):
            plan.link_records += records
            plan.msa_known.update(known)
        for m, records, _, known in sp.iter_entry_batches("reuse"):
            plan.reused.setdefault(m, []).extend(records)
            plan.msa_known.update(known)
        for u in plan.units:
            plan.msa_known.update(dict(u.msa_cached))
    return plan
