"""Fetch one entry's artifacts from the atlas: mmCIF, PAE JSON, confidence JSON.

An entry (accession) points to a structure (sequence SHA-256 + model). The stored mmCIF carries
the metadata of the structure's representative accession; for another accession with the same
sequence it is re-labelled on the fly. Only the member's byte range is read from the tar shard.
Shards hold compact records (``*.fac``, :mod:`storage.structure_record`): the mmCIF and PAE JSON
are rendered from them, for the entry asked for; older shards hold gzipped files (``*.gz``),
returned as stored (mmCIF re-labelled with :func:`storage.mmcif.retarget_modelcif`).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import AtlasError, EntryNotFound
from storage.afdb_json import write_confidence_json
from storage.atlas import Atlas
from storage.lookup import lookup
from storage.mmcif import ModelCIFEntry, retarget_modelcif
from storage.mmcif_shard import RECORD_SUFFIX, read_shard_range
from storage.structure_record import StoredStructure
from storage.structure_record import read_record as read_stored_record


@dataclass(frozen=True)
class FoundEntry:
    atlas: Atlas
    entry: dict[str, Any]
    structure: dict[str, Any]

    @property
    def entry_id(self) -> str:
        return str(self.entry["entryId"])

    @property
    def model(self) -> str:
        return str(self.entry["model"])

    @property
    def tier(self) -> str:
        return str(self.structure.get("tier")) if self.structure else "-"

    def _member(self, kind: str) -> bytes:
        return gzip.decompress(self._member_bytes(kind))

    def _member_bytes(self, kind: str = "mmcif") -> bytes:
        """The member's stored bytes (one ranged read)."""
        self._require_structure()
        s = self.structure
        if not s.get("published") or not s.get("mmcif_shard"):
            raise AtlasError(
                f"{self.entry_id}: the structure is not published (tier {s.get('tier')!r})",
                hint="Its metrics are in the structures table; the publication policy "
                     "(confidence.publish_tiers) kept its mmCIF out of the atlas.")
        offset, size = int(s[f"{kind}_offset"]), int(s[f"{kind}_size"])
        if self.atlas.is_local:
            return read_shard_range(self.atlas.root / s["mmcif_shard"], offset, size)
        return self.atlas.store.read_range(s["mmcif_shard"], offset, size)  # one ranged GET

    def _record(self) -> StoredStructure | None:
        """The compact record, or None when the member is a gzipped file (shards written before them)."""
        if not str(self.structure.get("mmcif_member") or "").endswith(RECORD_SUFFIX):
            return None
        try:
            return read_stored_record(self._member_bytes("mmcif"))
        except ValueError as e:
            raise AtlasError(f"{self.entry_id}: its structure record cannot be read: {e}",
                             hint="The shard is damaged or newer than this FoldAtlas; re-run or upgrade.") from e

    def mmcif(self) -> str:
        record = self._record()
        if record is not None:
            same = self.structure.get("representative_accession") == self.entry["accession"]
            return record.render_mmcif(None if same else self._target_entry())
        text = self._member("mmcif").decode()
        if self.structure.get("representative_accession") == self.entry["accession"]:
            return text
        return retarget_modelcif(text, self._target_entry())

    def _target_entry(self) -> ModelCIFEntry:
        e = self.entry
        return ModelCIFEntry(
            entry_id=e["entryId"], accession=e["accession"], uniprot_id=e.get("uniprotId"),
            description=e.get("uniprotDescription") or "", organism_scientific_name=e.get("organismScientificName"),
            tax_id=e.get("taxId"), sequence_db_name="UNP" if e.get("isReviewed") is not None else
            (e.get("source_file") or "input"), sequence_version_date=e.get("sequenceVersionDate"),
            model_created_date=e.get("modelCreatedDate"), db_align_begin=e.get("uniprotStart") or 1,
        )

    def pae_json(self) -> bytes:
        record = self._record()
        if record is None:
            return self._member("pae")
        if not record.has_pae:
            raise AtlasError(f"{self.entry_id}: the structure has no PAE ({self.model} files carry none)",
                             hint="Imported PDB files have no PAE; the mmCIF and confidence JSON are available.")
        return record.render_pae_json()

    def confidence_json(self) -> bytes:
        self._require_structure()
        return write_confidence_json(self.structure["plddt"])

    def _require_structure(self) -> None:
        if not self.structure:
            raise AtlasError(f"{self.entry_id}: no structure ({self.entry['status']}, "
                             f"{self.entry.get('failure_reason')})", hint="See the failures table.")

    def a3m(self) -> str:
        """The entry's MSA (A3M) from the ``msas`` table (one pruned lookup by its key)."""
        key = self.entry.get("msa_key")
        if not key:
            raise AtlasError(f"{self.entry_id}: no MSA was searched for this entry",
                             hint="Run with --msa mmseqs2|hmmer --msa-db DBDIR to search and store MSAs.")
        found = lookup(self.atlas.uri, "msas", "msa_key", key, columns=["a3m"])["a3m"].to_pylist()
        if not found:
            raise AtlasError(f"{self.entry_id}: MSA {key[:12]} is missing from the msas table",
                             hint="The atlas is inconsistent; re-run the same input with the same MSA database.")
        return str(found[0])


ENTRY_KEYS = ("accession", "entryId", "sequence_sha256")
_SHA256_HEX = re.compile("[0-9a-f]{64}")


def _newest_first(row: dict[str, Any]) -> tuple[bool, float]:
    """Sort key: newest ``created_at`` first, rows without one last (as ``ORDER BY created_at DESC``)."""
    created = row.get("created_at")
    return created is None, -created.timestamp() if created is not None else 0.0


def find_entries(atlas_root: str | Path, key: str, model: str | None = None) -> list[dict[str, Any]]:
    """``entries`` rows whose accession, entryId or sequence SHA-256 is ``key``: newest first, one per
    (accession, sequence, model). One pruned lookup per column (:func:`storage.lookup.lookup`)."""
    # sequence_sha256 holds hex SHA-256 digests: any other key cannot match it (spares a bloom-filter scan)
    columns = ENTRY_KEYS if _SHA256_HEX.fullmatch(key) else tuple(c for c in ENTRY_KEYS if c != "sequence_sha256")
    rows = [r for column in columns for r in lookup(atlas_root, "entries", column, key, model=model).to_pylist()]
    rows.sort(key=_newest_first)
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in rows:  # a row matching two key columns, or written again by a later run: keep the newest
        newest.setdefault((e["accession"], e["sequence_sha256"], e["model"]), e)
    return list(newest.values())


def find_structure(atlas_root: str | Path, sequence_sha256: str, model: str) -> dict[str, Any] | None:
    """The ``structures`` row of a sequence and model (the newest if a run wrote it twice), or None."""
    rows = lookup(atlas_root, "structures", "sequence_sha256", sequence_sha256, model=model).to_pylist()
    rows.sort(key=_newest_first)
    return rows[0] if rows else None


def fetch_entry(atlas_root: str | Path, key: str, model: str | None = None,
                require_structure: bool = True) -> FoundEntry:
    """Find an entry by accession, entryId or sequence SHA-256 (and model when ambiguous).

    Lookups go through :mod:`storage.lookup`: in a warm process (a server, a notebook, a loop
    over accessions) footers and statistics are cached and one row group per table is read.
    """
    atlas = Atlas(atlas_root)
    atlas.require()
    entries = find_entries(atlas.uri, key, model)
    if not entries:
        raise EntryNotFound(f"No entry {key!r} in {atlas.uri}" + (f" for model {model}" if model else ""),
                            hint="Check the accession with: foldatlas query ATLAS \"SELECT accession FROM entries\"")
    models = sorted({e["model"] for e in entries})
    if len(models) > 1:
        raise AtlasError(f"{key!r} exists for several models {models}", hint="Pass --model NAME.")
    entry = entries[0]
    if require_structure and entry["status"] != "predicted":
        raise AtlasError(f"{entry['entryId']}: prediction {entry['status']} ({entry.get('failure_reason')})",
                         hint="See the failures table for the reason and message.")
    structure = find_structure(atlas.uri, entry["sequence_sha256"], entry["model"])
    if structure is None and require_structure:
        raise AtlasError(f"{entry['entryId']}: entry points to a structure that is missing",
                         hint="The atlas is inconsistent; re-run the same input to repair it.")
    return FoundEntry(atlas, entry, structure or {})
