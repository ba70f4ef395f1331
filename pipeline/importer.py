"""``foldatlas import``: existing predictions become atlas entries, with their provenance.

Files are read by :mod:`pipeline.import_files`; here they become rows and shards, published
with the atlas protocol (writer lock, staging, :meth:`storage.atlas.Atlas.publish_unit`):

* one ``structures`` row per (sequence, model): metrics computed as for predictions
  (:mod:`pipeline.confidence`: mean pLDDT, ``globalMetricValue`` over atoms, band fractions, CA-CA
  outliers, mean PAE), ``ptm`` null (no source file has one), ``published`` true (an import is
  explicit: every accepted structure is stored), ``model_version`` naming the source software and
  database version, and a compact record in a structure shard ``mmcif/<unit_id>.tar``;
* one ``entries`` row per accession, status ``predicted``; for AlphaFold DB files the AFDB
  metadata columns come from the mmCIF itself (accession, UniProt id, description, organism,
  taxId, gene, sequence checksum and version date, model creation date, globalMetricValue,
  latestVersion = the file's version); ``ingest_notes`` say which files it came from;
* one ``rejects`` row per bad file, with a reason code (``IMPORT_REJECT_REASONS``).

Units are named ``import-<20 hex>`` from the (sequence, model) keys they hold, so re-importing
the same files publishes the same names; entries already in the atlas (same accession, sequence
and model) are counted as ``already_in_atlas`` and not written again.

A later ``foldatlas run`` reuses imported structures for identical sequences (config
``plan.reuse_models``, see :mod:`pipeline.reuse`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from model.base import ModelInfo
from pipeline.confidence import (
    ConfidencePolicy,
    assign_tier,
    ca_ca_outlier_fraction,
    global_metric_value,
    plddt_band_fractions,
)
from pipeline.import_files import ImportedStructure, ImportReject, collect_files, read_import_files
from pipeline.ingest import AcceptedRecord, sequence_hashes
from pipeline.plan import atlas_state
from pipeline.write import MODEL_VERSION, WriteContext, entry_id, entry_row
from storage.afdb_json import round_plddt
from storage.atlas import Atlas
from storage.layout import write_shard
from storage.mmcif import ModelCIFEntry
from storage.mmcif_shard import RECORD_SUFFIX, write_mmcif_shard
from storage.schema import ENTRIES_SCHEMA, REJECTS_SCHEMA, STRUCTURES_SCHEMA
from storage.structure_record import encode_prediction

log = logging.getLogger(__name__)

UNIT_MAX_STRUCTURES = 500  # structures per import shard


@dataclass
class ImportSummary:
    run_id: str
    atlas: str
    files: int = 0
    structures_read: int = 0
    structures_written: int = 0  # new structures rows (and records)
    entries_written: int = 0
    already_in_atlas: int = 0  # entries that existed before (same accession, sequence, model)
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    units: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def render_text(self) -> str:
        lines = [f"import {self.run_id}: {self.files} files, {self.structures_read} structures read",
                 f"  new structures {self.structures_written}, new entries {self.entries_written}, "
                 f"already in the atlas {self.already_in_atlas}",
                 f"  rejected {self.rejected}" + (f" {self.rejected_by_reason}" if self.rejected else "")]
        return "\n".join(lines)


def _record(s: ImportedStructure) -> AcceptedRecord:
    seq = s.prediction.sequence
    sha, crc, md5 = sequence_hashes(seq)
    meta = s.afdb
    return AcceptedRecord(
        source=s.path, record_index=0, line=0, header="", accession=s.accession,
        uniprot_id=meta.uniprot_id if meta else None, description=meta.description if meta else "",
        organism=meta.organism if meta else None, tax_id=meta.tax_id if meta else None,
        gene=meta.gene if meta else None, is_reviewed=None, protein_existence=None, sequence_version=None,
        sequence=seq, length=len(seq), sha256=sha, crc64=crc, md5=md5, notes=s.notes,
    )


def _metrics(s: ImportedStructure, policy: ConfidencePolicy) -> dict[str, Any]:
    pred = s.prediction
    written = round_plddt(pred.plddt)
    vl, lo, co, vh = plddt_band_fractions(written)
    mean_plddt = float(np.asarray(pred.plddt, dtype=np.float64).mean())
    outliers, _ = ca_ca_outlier_fraction(pred.atom_positions, pred.atom_mask)
    return {
        "mean_plddt": mean_plddt,
        "global_metric_value": global_metric_value(written, pred.atom_mask.sum(axis=1)),
        "fraction_plddt_very_low": vl, "fraction_plddt_low": lo, "fraction_plddt_confident": co,
        "fraction_plddt_very_high": vh, "ptm": None,
        "max_pae": pred.max_pae if s.has_pae else None,
        "mean_pae": float(np.asarray(pred.pae).mean()) if s.has_pae else None,
        "ca_ca_outlier_fraction": outliers,
        "tier": assign_tier(mean_plddt, float("nan"), policy),  # no pTM: pTM tiers are never reached
        "published": True,
    }


def _model_info(s: ImportedStructure) -> ModelInfo:
    extra = {"source": s.source, "source_file": Path(s.path).name, "source_files_sha256": s.files_sha256}
    if s.pae_path:
        extra["source_pae_file"] = Path(s.pae_path).name
    if s.source_version:
        extra["alphafold_db_version"] = s.source_version
    name, _, version = s.software.partition(" ")
    return ModelInfo(name=name, version=version or "unknown", weights_sha256="unknown",
                     trained=True, precision="unknown", extra=extra)


def _modelcif_entry(s: ImportedStructure, rec: AcceptedRecord, created: date) -> ModelCIFEntry:
    meta = s.afdb
    return ModelCIFEntry(
        entry_id=entry_id(s.accession), accession=s.accession, uniprot_id=rec.uniprot_id,
        description=rec.description, organism_scientific_name=rec.organism, tax_id=rec.tax_id,
        sequence_db_name="UNP" if meta else Path(s.path).name,
        sequence_version_date=meta.sequence_version_date if meta else None,
        model_created_date=(meta.model_created_date if meta and meta.model_created_date else created),
        gene_name=rec.gene, sequence_checksum=meta.sequence_checksum if meta else None,
    )


def _entry(s: ImportedStructure, rec: AcceptedRecord, m: dict[str, Any], ctx: WriteContext,
           created_at: datetime) -> dict[str, Any]:
    meta = s.afdb
    created = (date.fromisoformat(meta.model_created_date) if meta and meta.model_created_date
               else created_at.date())
    metrics = {"globalMetricValue": m["global_metric_value"], "fractionPlddtVeryLow": m["fraction_plddt_very_low"],
               "fractionPlddtLow": m["fraction_plddt_low"], "fractionPlddtConfident": m["fraction_plddt_confident"],
               "fractionPlddtVeryHigh": m["fraction_plddt_very_high"], "ptm": None, "mean_plddt": m["mean_plddt"],
               "tier": m["tier"], "published": True, "modelCreatedDate": created}
    row = entry_row(rec, s.model, ctx, created_at, "predicted", metrics)
    row.update(header=None, taxonomy_source="afdb_mmcif" if meta and meta.tax_id is not None else "none")
    if meta:
        version = int(s.source_version) if s.source_version else MODEL_VERSION
        row.update(uniprotAccession=s.accession, sequenceChecksum=meta.sequence_checksum or rec.crc64,
                   sequenceVersionDate=(date.fromisoformat(meta.sequence_version_date)
                                        if meta.sequence_version_date else None),
                   latestVersion=version, allVersions=[version],
                   proteinFullNames=[meta.description] if meta.description else None,
                   uniprotStart=meta.uniprot_start or 1, uniprotEnd=meta.uniprot_end or rec.length)
        if meta.global_metric_value is not None and meta.global_metric_value != m["global_metric_value"]:
            log.warning("%s: the file's globalMetricValue %.2f differs from the mean over its atoms %.2f",
                        s.path, meta.global_metric_value, m["global_metric_value"])
    return row


def _reject_rows(rejects: list[ImportReject], run_id: str, created_at: datetime) -> pa.Table:
    rows = []
    for r in rejects:
        key = hashlib.sha256(f"import\0{Path(r.path).resolve()}\0{r.reason}".encode()).hexdigest()
        rows.append({"reject_key": key, "reason": r.reason, "detail": r.detail, "accession": r.accession,
                     "header": None, "raw_sequence": None, "source_file": Path(r.path).name,
                     "source_record_index": None, "source_line": None, "run_id": run_id, "created_at": created_at})
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def _unit_id(keys: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256("\n".join(f"{m}:{s}" for s, m in sorted(keys)).encode()).hexdigest()[:20]
    return f"import-{h}"


def _write_unit(items: list[tuple[ImportedStructure, AcceptedRecord, bool]], ctx: WriteContext,
                atlas: Atlas, summary: ImportSummary) -> None:
    """Stage and publish one shard of structures plus their entries (``bool``: write the structure)."""
    created_at = datetime.now(UTC)
    staging = Path(ctx.staging)
    keys = [(rec.sha256, s.model) for s, rec, _ in items]
    unit_id = _unit_id(keys)
    provenance = {**ctx.provenance, "unit_id": unit_id}
    members: list[tuple[str, bytes]] = []
    structure_rows: list[dict[str, Any]] = []
    entry_rows: list[dict[str, Any]] = []
    for s, rec, new_structure in items:
        m = _metrics(s, ctx.policy)
        entry_rows.append(_entry(s, rec, m, ctx, created_at))
        if not new_structure:
            continue
        name = f"{entry_id(s.accession)}-model_v{MODEL_VERSION}{RECORD_SUFFIX}"
        if any(name == n for n, _ in members):  # same accession, two models: keep names unique
            name = name.replace(RECORD_SUFFIX, f"-{s.model}{RECORD_SUFFIX}")
        members.append((name, encode_prediction(s.prediction, _modelcif_entry(s, rec, created_at.date()),
                                                _model_info(s), provenance, with_ptm=False, with_pae=s.has_pae)))
        structure_rows.append({
            **m, "sequence_sha256": rec.sha256, "model": s.model, "sequence_md5": rec.md5,
            "sequence_crc64": rec.crc64, "sequence": rec.sequence, "sequence_length": rec.length,
            "model_version": s.software + (f" (AlphaFold DB v{s.source_version})" if s.source_version else ""),
            "weights_sha256": None, "model_trained": True, "precision": None,
            "plddt": [float(x) for x in round_plddt(s.prediction.plddt)],
            "representative_accession": s.accession, "mmcif_member": name, "unit_id": unit_id,
            "run_id": ctx.run_id, "created_at": created_at,
        })
    staged: dict[str, str] = {}
    if members:
        shard_rel = f"mmcif/{unit_id}.tar"
        index = {mem.name: mem for mem in write_mmcif_shard(staging / shard_rel, members)}
        for row in structure_rows:
            mem = index[row["mmcif_member"]]
            row.update(mmcif_shard=shard_rel, mmcif_offset=mem.offset, mmcif_size=mem.size)
            if row["max_pae"] is not None:
                row.update(pae_member=mem.name, pae_offset=mem.offset, pae_size=mem.size)
        staged["mmcif"] = str(staging / shard_rel)
    for table, rows, schema in (("structures", structure_rows, STRUCTURES_SCHEMA),
                                ("entries", entry_rows, ENTRIES_SCHEMA)):
        if rows:
            path = staging / table / f"{unit_id}.parquet"
            write_shard(table, pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows],
                                                    schema=schema), path, provenance)
            staged[table] = str(path)
    counts = {"structures": len(structure_rows), "entries": len(entry_rows), "failures": 0,
              "published_structures": len(members)}
    atlas.publish_unit(ctx.run_id, unit_id, atlas.upload_staged(ctx.run_id, staged), counts)
    summary.units.append(unit_id)
    summary.structures_written += len(structure_rows)
    summary.entries_written += len(entry_rows)


def _dedupe(structures: list[ImportedStructure], rejects: list[ImportReject]) -> list[tuple[ImportedStructure,
                                                                                            AcceptedRecord]]:
    """One entry per (accession, model): later duplicates become rejects."""
    out: list[tuple[ImportedStructure, AcceptedRecord]] = []
    seen: dict[tuple[str, str], str] = {}
    for s in structures:
        key = (s.accession, s.model)
        if key in seen:
            rejects.append(ImportReject(s.path, "duplicate_accession", f"{s.accession} ({s.model}) is already "
                                        f"imported from {Path(seen[key]).name}", s.accession))
            continue
        seen[key] = s.path
        out.append((s, _record(s)))
    return out


def import_predictions(paths: Sequence[str | Path], atlas_root: str | Path, *, source: str | None = None,
                       policy: ConfidencePolicy | None = None) -> ImportSummary:
    """Import AFDB mmCIF + PAE JSON and ColabFold/ESMFold PDB files into the atlas (see the module doc)."""
    from pipeline.runner import git_commit, new_run_id, package_version

    files = collect_files(paths)
    atlas = Atlas(atlas_root)
    run_id = new_run_id()
    summary = ImportSummary(run_id=run_id, atlas=atlas.uri, files=len(files))
    structures, rejects = read_import_files(files, source)
    summary.structures_read = len(structures)
    items = _dedupe(structures, rejects)
    with atlas.locked():
        atlas.init()
        atlas.clean_staging()
        provenance = {"foldatlas_version": package_version(), "git_commit": git_commit(), "run_id": run_id,
                      "command": "import", "started_at": datetime.now(UTC).isoformat()}
        atlas.write_run_file(run_id, "provenance.json", json.dumps(provenance, indent=2))
        staging = atlas.staging_dir(run_id)
        staging.mkdir(parents=True, exist_ok=True)
        ctx = WriteContext(staging=str(staging), atlas=atlas.uri, run_id=run_id,
                           policy=policy or ConfidencePolicy(), provenance=provenance)
        todo: list[tuple[ImportedStructure, AcceptedRecord, bool]] = []
        state: dict[str, tuple[set[tuple[str, str]], set[str]]] = {}
        written: set[tuple[str, str]] = set()  # (sha, model) written by this import
        for s, rec in items:
            if s.model not in state:
                entry_keys, predicted, _ = atlas_state(atlas, s.model)
                state[s.model] = (entry_keys, predicted)
            entry_keys, predicted = state[s.model]
            if (rec.accession, rec.sha256) in entry_keys:
                summary.already_in_atlas += 1
                continue
            new = rec.sha256 not in predicted and (rec.sha256, s.model) not in written
            written.add((rec.sha256, s.model))
            todo.append((s, rec, new))
            summary.models[s.model] = summary.models.get(s.model, 0) + 1
        for start in range(0, len(todo), UNIT_MAX_STRUCTURES):
            _write_unit(todo[start : start + UNIT_MAX_STRUCTURES], ctx, atlas, summary)
        if rejects:
            table = _reject_rows(rejects, run_id, datetime.now(UTC))
            _, _, known = atlas_state(atlas, "")
            table = table.filter(pa.array([k not in known for k in table.column("reject_key").to_pylist()]))
            if table.num_rows:
                name = "rejects-" + hashlib.sha256("\n".join(sorted(table.column("reject_key").to_pylist()))
                                                   .encode()).hexdigest()[:20] + ".parquet"
                write_shard("rejects", table, staging / name, provenance)
                atlas.publish_file(staging / name, "rejects", name)
        summary.rejected = len(rejects)
        for r in rejects:
            summary.rejected_by_reason[r.reason] = summary.rejected_by_reason.get(r.reason, 0) + 1
        atlas.write_run_file(run_id, "import_summary.json", summary.to_json())
        atlas.clean_staging()
    return summary
