"""Write stage: confidence, structure shard (compact records), Parquet shards, all into staging.

``write_unit`` turns a work unit's fold outcomes into staged files and returns a manifest
(``UnitManifest``) for the driver, which publishes them (:meth:`storage.atlas.Atlas.publish_unit`).
Every record of the unit gets exactly one ``entries`` row (``predicted`` or ``failed``); every
failed sequence one ``failures`` row. ``entry_rows_for_links`` builds entry rows for records whose
sequence the atlas already holds, from the ``structures`` rows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from model.base import ModelInfo, Prediction, PredictionFailure
from pipeline.confidence import ConfidencePolicy, compute_confidence
from pipeline.ingest import AcceptedRecord
from pipeline.msa_stage import MSASpec, MSAStat, MSAUnitResult, params_json
from pipeline.plan import WorkUnit
from storage.layout import write_shard
from storage.mmcif import ModelCIFEntry
from storage.mmcif_shard import RECORD_SUFFIX, write_mmcif_shard
from storage.schema import ENTRIES_SCHEMA, FAILURES_SCHEMA, MSAS_SCHEMA, STRUCTURES_SCHEMA
from storage.structure_record import encode_prediction

log = logging.getLogger(__name__)

MODEL_VERSION = 1  # entries.latestVersion: FoldAtlas model version of an entry
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def entry_id(accession: str, fragment: int = 1) -> str:
    return f"FA-{_SAFE.sub('_', accession)}-F{fragment}"


@dataclass(frozen=True)
class WriteContext:
    staging: str  # staging directory of the run
    atlas: str  # atlas root (workers read the MSA cache from it)
    run_id: str
    policy: ConfidencePolicy
    provenance: dict[str, str]
    is_reference_proteome: bool | None = None
    msa: MSASpec | None = None


@dataclass
class UnitManifest:
    unit_id: str
    staged: dict[str, str] = field(default_factory=dict)  # table -> staged path
    counts: dict[str, int] = field(default_factory=dict)
    mean_plddts: list[float] = field(default_factory=list)
    model_seconds: float = 0.0
    residues: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    model_trained: bool | None = None
    msa_searched: int = 0
    msa_cached: int = 0
    msa_failed: int = 0
    deferred: dict[str, str] = field(default_factory=dict)  # sha256 -> OOM message: left to the driver to re-route


def _modelcif_entry(rec: AcceptedRecord, created: date) -> ModelCIFEntry:
    uniprot = rec.is_reviewed is not None
    return ModelCIFEntry(
        entry_id=entry_id(rec.accession, rec.fragment),
        accession=rec.accession,
        uniprot_id=rec.uniprot_id,
        description=rec.description,
        organism_scientific_name=rec.organism,
        tax_id=rec.tax_id,
        sequence_db_name="UNP" if uniprot else Path(rec.source).name,
        sequence_version_date=None,
        model_created_date=created,
        db_align_begin=rec.start,
    )


def entry_row(rec: AcceptedRecord, model: str, ctx: WriteContext, created_at: datetime, status: str,
              metrics: dict[str, Any] | None, failure_reason: str | None = None,
              msa: MSAStat | None = None, fold_route: str | None = None) -> dict[str, Any]:
    """One ``entries`` row. ``metrics`` uses the AFDB names plus ptm/mean_plddt/tier/published."""
    m = metrics or {}
    row: dict[str, Any] = {name: None for name in ENTRIES_SCHEMA.names}
    row.update(rec.afdb_metadata())
    row.update(
        entryId=entry_id(rec.accession, rec.fragment),
        allVersions=[MODEL_VERSION],
        latestVersion=MODEL_VERSION,
        modelCreatedDate=m.get("modelCreatedDate", created_at.date()),
        proteinFullNames=[rec.description] if rec.description and rec.is_reviewed is not None else None,
        isReferenceProteome=ctx.is_reference_proteome,
        globalMetricValue=m.get("globalMetricValue"),
        fractionPlddtVeryLow=m.get("fractionPlddtVeryLow"),
        fractionPlddtLow=m.get("fractionPlddtLow"),
        fractionPlddtConfident=m.get("fractionPlddtConfident"),
        fractionPlddtVeryHigh=m.get("fractionPlddtVeryHigh"),
        accession=rec.accession,
        model=model,
        status=status,
        ptm=m.get("ptm"),
        mean_plddt=m.get("mean_plddt"),
        tier=m.get("tier"),
        published=m.get("published"),
        sequence_sha256=rec.sha256,
        sequence_md5=rec.md5,
        sequence_length=rec.length,
        failure_reason=failure_reason,
        fold_route=_route(rec, fold_route),
        fragment_of_sha256=rec.whole_sha256,
        msa_depth=msa.depth if msa else None,
        msa_neff=msa.neff if msa else None,
        msa_key=msa.key if msa else None,
        taxonomy_source="uniprot_header" if rec.tax_id is not None else "none",
        source_file=Path(rec.source).name,
        source_record_index=rec.record_index,
        header=rec.header,
        protein_existence=rec.protein_existence,
        sequence_version=rec.sequence_version,
        ingest_notes=list(rec.notes),
        run_id=ctx.run_id,
        created_at=created_at,
    )
    return row


def _route(rec: AcceptedRecord, route: str | None) -> str | None:
    """The ``fold_route`` recorded for ``rec``: every fragment of an out-of-memory split says so."""
    return "oom_fragment" if rec.oom_split else route


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _member_name(base: str, used: set[str], sha: str) -> str:
    name = base if base not in used else f"{base}-{sha[:12]}"
    used.add(name)
    return name


def _failure_row(sha: str, seq: str, recs: list[AcceptedRecord], unit: WorkUnit, reason: str, message: str,
                 batch_size: int, attempts: int, ctx: WriteContext, created_at: datetime,
                 route: str | None = None) -> dict[str, Any]:
    return {"fold_route": _route(recs[0], route), "sequence_sha256": sha, "model": unit.model, "sequence_length": len(seq),
            "accessions": [r.accession for r in recs], "reason": reason, "message": message,
            "batch_size": batch_size, "attempts": attempts, "unit_id": unit.unit_id, "run_id": ctx.run_id,
            "created_at": created_at}


def _msa_rows(unit: WorkUnit, msa: MSAUnitResult, spec: MSASpec, ctx: WriteContext,
              created_at: datetime) -> list[dict[str, Any]]:
    params = params_json(spec)
    return [{"msa_key": msa.stats[sha].key, "sequence_sha256": sha, "db_id": spec.db_id, "db_name": spec.db_name,
             "tool": spec.tool, "tool_version": spec.tool_version, "params": params,
             "depth": msa.stats[sha].depth, "neff": msa.stats[sha].neff, "a3m": text,
             "search_seconds": msa.seconds.get(sha), "unit_id": unit.unit_id, "run_id": ctx.run_id,
             "created_at": created_at} for sha, text in msa.a3m.items()]


def write_unit(unit: WorkUnit, outcomes: list[Prediction | PredictionFailure], info: ModelInfo,
               batch_sizes: dict[str, int], ctx: WriteContext, msa: MSAUnitResult | None = None,
               route: str | None = None) -> UnitManifest:
    """Stage the unit's shards; one outcome per ``unit.sequences`` entry, same order. ``route``: the
    fold pool's ``fold_route`` label (pipeline.oom_route), written into entry and failure rows."""
    if len(outcomes) != len(unit.sequences):
        raise ValueError(f"unit {unit.unit_id}: {len(outcomes)} outcomes for {len(unit.sequences)} sequences")
    created_at = datetime.now(UTC)
    staging = Path(ctx.staging)
    manifest = UnitManifest(unit.unit_id, residues=unit.residues, model_trained=info.trained)
    records_by_sha: dict[str, list[AcceptedRecord]] = {}
    for rec in sorted(unit.records, key=lambda r: (r.source, r.record_index)):
        records_by_sha.setdefault(rec.sha256, []).append(rec)

    members: list[tuple[str, bytes]] = []
    member_of: dict[str, tuple[str, str]] = {}  # sha -> (cif member, pae member)
    structure_rows: list[dict[str, Any]] = []
    failure_rows: list[dict[str, Any]] = []
    entry_rows: list[dict[str, Any]] = []
    used: set[str] = set()
    provenance = {**ctx.provenance, "unit_id": unit.unit_id}

    sha_by_sequence = {r.sequence: r.sha256 for r in unit.records}
    for outcome in outcomes:
        recs = records_by_sha[sha_by_sequence[outcome.sequence]]
        rep, sha = recs[0], recs[0].sha256
        if isinstance(outcome, Prediction):
            metrics = compute_confidence(outcome, ctx.policy)
            if metrics.failure_reason:
                outcome = PredictionFailure(outcome.sequence, metrics.failure_reason, metrics.failure_message,
                                            batch_sizes.get(outcome.sequence, 1))
        msa_stat = msa.stats.get(sha) if msa else None
        if msa and sha in msa.failed and not (isinstance(outcome, PredictionFailure) and outcome.reason == "msa_error"):
            # an MSA-free model folded it anyway; the failed search is still recorded
            failure_rows.append(_failure_row(sha, outcome.sequence, recs, unit, "msa_error", msa.failed[sha], 0,
                                             msa.attempts, ctx, created_at))
        if isinstance(outcome, PredictionFailure):
            attempts = msa.attempts if msa and outcome.reason == "msa_error" else 1
            failure_rows.append(_failure_row(sha, outcome.sequence, recs, unit, outcome.reason, outcome.message,
                                             outcome.batch_size, attempts, ctx, created_at, route))
            entry_rows += [entry_row(r, unit.model, ctx, created_at, "failed", None, outcome.reason, msa_stat, route)
                           for r in recs]
            manifest.failure_reasons[outcome.reason] = manifest.failure_reasons.get(outcome.reason, 0) + 1
            continue
        pred = outcome
        if metrics.published:
            # one compact record (coordinates, pLDDT, PAE, model and provenance); `foldatlas get`
            # renders the ModelCIF and PAE JSON from it, so mmcif_* and pae_* name the same member
            record = encode_prediction(pred, _modelcif_entry(rep, created_at.date()), info, provenance)
            name = _member_name(f"{entry_id(rep.accession, rep.fragment)}-model_v{MODEL_VERSION}{RECORD_SUFFIX}", used, sha)
            members.append((name, record))
            member_of[sha] = (name, name)
        afdb = metrics.afdb_columns()
        structure_rows.append({
            "sequence_sha256": sha, "model": unit.model, "sequence_md5": rep.md5, "sequence_crc64": rep.crc64,
            "sequence": pred.sequence, "sequence_length": len(pred.sequence), "model_version": info.version,
            "weights_sha256": info.weights_sha256, "model_trained": info.trained, "precision": info.precision,
            "plddt": [float(x) for x in pred.plddt], "mean_plddt": metrics.mean_plddt_residues,
            "global_metric_value": metrics.global_metric_value,
            "fraction_plddt_very_low": metrics.fraction_plddt_very_low,
            "fraction_plddt_low": metrics.fraction_plddt_low,
            "fraction_plddt_confident": metrics.fraction_plddt_confident,
            "fraction_plddt_very_high": metrics.fraction_plddt_very_high,
            "ptm": metrics.ptm, "max_pae": metrics.max_pae, "mean_pae": metrics.mean_pae,
            "ca_ca_outlier_fraction": metrics.ca_ca_outlier_fraction, "tier": metrics.tier,
            "published": metrics.published, "representative_accession": rep.accession,
            "model_seconds": pred.seconds, "batch_size": batch_sizes.get(pred.sequence, 1),
            "unit_id": unit.unit_id, "run_id": ctx.run_id, "created_at": created_at,
        })
        manifest.mean_plddts.append(metrics.mean_plddt_residues)
        manifest.tiers[metrics.tier] = manifest.tiers.get(metrics.tier, 0) + 1
        manifest.model_seconds += pred.seconds
        entry_metrics = {**afdb, "ptm": metrics.ptm, "mean_plddt": metrics.mean_plddt_residues,
                         "tier": metrics.tier, "published": metrics.published,
                         "modelCreatedDate": created_at.date()}
        entry_rows += [entry_row(r, unit.model, ctx, created_at, "predicted", entry_metrics, None, msa_stat, route)
                       for r in recs]

    if members:
        shard_rel = f"mmcif/{unit.unit_id}.tar"
        index = {m.name: m for m in write_mmcif_shard(staging / shard_rel, members)}
        for row in structure_rows:
            names = member_of.get(row["sequence_sha256"])
            if names:
                cif_m, pae_m = index[names[0]], index[names[1]]
                row.update(mmcif_shard=shard_rel, mmcif_member=cif_m.name, mmcif_offset=cif_m.offset,
                           mmcif_size=cif_m.size, pae_member=pae_m.name, pae_offset=pae_m.offset,
                           pae_size=pae_m.size)
        manifest.staged["mmcif"] = str(staging / shard_rel)
    msa_rows = _msa_rows(unit, msa, ctx.msa, ctx, created_at) if msa and ctx.msa else []
    if msa:
        manifest.msa_searched, manifest.msa_failed = msa.searched, len(msa.failed)
        manifest.msa_cached = len(dict(unit.msa_cached))
    for table, rows, schema in (("msas", msa_rows, MSAS_SCHEMA),
                                ("structures", structure_rows, STRUCTURES_SCHEMA),
                                ("failures", failure_rows, FAILURES_SCHEMA),
                                ("entries", entry_rows, ENTRIES_SCHEMA)):
        if rows:
            path = staging / table / f"{unit.unit_id}.parquet"
            write_shard(table, _table([{k: r.get(k) for k in schema.names} for r in rows], schema), path, provenance)
            manifest.staged[table] = str(path)
    manifest.counts = {"structures": len(structure_rows), "failures": len(failure_rows),
                       "entries": len(entry_rows), "published_structures": len(member_of), "msas": len(msa_rows)}
    return manifest


def entry_rows_for_links(records: list[AcceptedRecord], structures: dict[str, dict[str, Any]], model: str,
                         ctx: WriteContext, msa_known: dict[str, MSAStat] | None = None) -> pa.Table:
    """Entry rows for records whose sequence is already predicted (``structures`` by sha256)."""
    created_at = datetime.now(UTC)
    rows = []
    for rec in records:
        s = structures[rec.sha256]
        metrics = {
            "globalMetricValue": s["global_metric_value"], "fractionPlddtVeryLow": s["fraction_plddt_very_low"],
            "fractionPlddtLow": s["fraction_plddt_low"], "fractionPlddtConfident": s["fraction_plddt_confident"],
            "fractionPlddtVeryHigh": s["fraction_plddt_very_high"], "ptm": s["ptm"],
            "mean_plddt": s["mean_plddt"], "tier": s["tier"], "published": s["published"],
            "modelCreatedDate": s["created_at"].date() if s.get("created_at") else created_at.date(),
        }
        rows.append(entry_row(rec, model, ctx, created_at, "predicted", metrics, None,
                              (msa_known or {}).get(rec.sha256)))
    return _table(rows, ENTRIES_SCHEMA)
