"""Check an atlas or a release for consistency; every mismatch becomes one :class:`Problem`.

Atlas (a location with ``atlas.json``):

- every ``entries`` row with status ``predicted`` has its ``structures`` row;
- every published ``structures`` row has its shard, member byte ranges inside the tar, members
  that decompress, an mmCIF that parses with gemmi and a PAE JSON that parses;
- every structure is referenced by at least one entry;
- no duplicate (entryId, model) in ``entries``, no duplicate (sequence_sha256, model) in
  ``structures``.

Release (a location with ``manifest.json``):

- every listed file exists with the listed size and SHA-256; no file is unlisted;
- entry counts agree between the manifest, ``metadata.parquet``, ``accession_ids.csv`` and the
  tar members (per shard and in total);
- every tar member decompresses, every mmCIF member parses with gemmi;
- every metadata row has its mmCIF in its ``release_shard`` and every mmCIF member has its row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import tarfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import AtlasError, ReleaseError
from storage.release import (
    ACCESSION_IDS,
    MANIFEST,
    METADATA,
    SEQUENCES,
    Manifest,
    member_names,
    sha256_stream,
)
from storage.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One inconsistency: a short code, the file or row concerned, and what is wrong."""

    code: str
    where: str
    detail: str

    def line(self) -> str:
        return f"{self.code}\t{self.where}\t{self.detail}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    kind: str  # atlas | release
    location: str
    checked: dict[str, int]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "location": self.location, "ok": self.ok, "checked": self.checked,
                           "problems": [p.to_dict() for p in self.problems]}, indent=1) + "\n"


def validate(location: str) -> Report:
    """Validate the atlas or release at ``location`` (local path or ``s3://`` prefix)."""
    store = open_store(location)
    if store.exists(MANIFEST):
        return validate_release(store)
    if store.exists("atlas.json"):
        return validate_atlas(store)
    raise ReleaseError(f"{store.uri} holds neither atlas.json nor {MANIFEST}",
                       hint="Give an atlas (foldatlas run --atlas) or a release (foldatlas export --to).")


def _parse_mmcif(text: str) -> str | None:
    """None when gemmi reads the text as a CIF with one block, else the error."""
    import gemmi

    try:
        doc = gemmi.cif.read_string(text)
    except (ValueError, RuntimeError) as e:
        return str(e).splitlines()[0][:200]
    return None if len(doc) >= 1 and doc.sole_block().find_value("_entry.id") else "no data block with _entry.id"


# ---- atlas ------------------------------------------------------------------------------------
def _glob(store: Store, table: str) -> str:
    return f"read_parquet('{store.url(table)}/*.parquet', union_by_name=true)"


def validate_atlas(store: Store) -> Report:
    problems: list[Problem] = []
    con = store.duckdb()
    e, s = _glob(store, "entries"), _glob(store, "structures")
    try:
        # entryId, not accession: fragments F1..Fn of one accession are distinct entries
        for eid, model, n in con.sql(f"SELECT entryId, model, count(*) FROM {e} GROUP BY ALL HAVING count(*) > 1"
                                     ).fetchall():
            problems.append(Problem("duplicate_entry", f"entries {eid} {model}", f"{n} rows for (entryId, model)"))
        for sha, model, n in con.sql(f"SELECT sequence_sha256, model, count(*) FROM {s} GROUP BY ALL "
                                     "HAVING count(*) > 1").fetchall():
            problems.append(Problem("duplicate_structure", f"structures {sha[:16]} {model}",
                                    f"{n} rows for (sequence_sha256, model)"))
        for acc, model, sha in con.sql(
                f"SELECT e.accession, e.model, e.sequence_sha256 FROM {e} e ANTI JOIN {s} s "
                "ON s.sequence_sha256 = e.sequence_sha256 AND s.model = e.model WHERE e.status = 'predicted'"
        ).fetchall():
            problems.append(Problem("entry_without_structure", f"entries {acc} {model}",
                                    f"status predicted but no structures row for {sha[:16]}"))
        for sha, model in con.sql(f"SELECT s.sequence_sha256, s.model FROM {s} s ANTI JOIN {e} e "
                                  "ON s.sequence_sha256 = e.sequence_sha256 AND s.model = e.model").fetchall():
            problems.append(Problem("unreferenced_structure", f"structures {sha[:16]} {model}",
                                    "no entry points to this structure"))
        counts = dict(zip(("entries", "structures"),
                          con.sql(f"SELECT (SELECT count(*) FROM {e}), (SELECT count(*) FROM {s})").fetchall()[0],
                          strict=True))
        sizes = {f.path: f.size for f in store.list("mmcif", ".tar")}
        reader = con.sql(f"SELECT * FROM {s} WHERE published ORDER BY mmcif_shard, mmcif_offset").to_arrow_reader(1024)
        n_published = members = 0
        for batch in reader:  # streamed: a batch of structures rows at a time
            n_published += batch.num_rows
            members += _check_members(store, sizes, batch.to_pylist(), problems)
    finally:
        con.close()
    counts.update(published_structures=n_published, members_read=members, shards=len(sizes))
    return Report("atlas", store.uri, counts, problems)


def _check_members(store: Store, sizes: dict[str, int], rows: list[dict[str, Any]], problems: list[Problem]) -> int:
    """Read each published structure's members (through storage.entry); returns how many were read."""
    from storage.atlas import Atlas
    from storage.entry import FoundEntry

    atlas = Atlas(store.uri)
    members = 0
    for row in rows:
        where = f"{row.get('mmcif_shard')} {row.get('representative_accession')}"
        shard = row.get("mmcif_shard")
        if shard not in sizes:
            problems.append(Problem("missing_shard", where, "the structure's shard does not exist"))
            continue
        bad_range = [k for k in ("mmcif", "pae") if row.get(f"{k}_offset") is not None
                     and int(row[f"{k}_offset"]) + int(row[f"{k}_size"] or 0) > sizes[shard]]
        if bad_range:
            problems.append(Problem("member_out_of_range", where,
                                    f"{'/'.join(bad_range)} byte range ends past the tar's {sizes[shard]} bytes"))
            continue
        acc = row.get("representative_accession")
        entry = {"accession": acc, "entryId": acc, "model": row["model"], "status": "predicted"}
        found = FoundEntry(atlas, entry, row)
        try:
            err = _parse_mmcif(found.mmcif())
            json.loads(found.pae_json())
        except (ValueError, UnicodeDecodeError, OSError, AtlasError) as ex:
            problems.append(Problem("unreadable_member", where, str(ex).splitlines()[0][:200]))
            continue
        if err:
            problems.append(Problem("bad_mmcif", where, err))
        members += 1
    return members


# ---- release ----------------------------------------------------------------------------------
def validate_release(store: Store) -> Report:
    manifest = Manifest.from_json(store.read_bytes(MANIFEST), store.url(MANIFEST))
    problems: list[Problem] = []
    present = {f.path: f.size for f in store.list()}
    listed = {f.path for f in manifest.files}
    for path in sorted(set(present) - listed - {MANIFEST}):
        problems.append(Problem("unlisted_file", path, "file is not in manifest.json"))
    intact: set[str] = set()
    for rec in manifest.files:
        if rec.path not in present:
            problems.append(Problem("missing_file", rec.path, "listed in manifest.json but absent"))
            continue
        if present[rec.path] != rec.size:
            problems.append(Problem("size_mismatch", rec.path, f"{present[rec.path]} bytes, manifest says {rec.size}"))
        with store.open_read(rec.path) as fh:
            digest, _ = sha256_stream(fh)
        if digest != rec.sha256:
            problems.append(Problem("checksum_mismatch", rec.path, f"sha256 {digest}, manifest says {rec.sha256}"))
        else:
            intact.add(rec.path)

    # metadata rows: entryId -> release_shard
    meta_rows: list[tuple[str, str]] = []
    if METADATA in present:
        try:
            meta_rows = _metadata_rows(store)
        except (OSError, ValueError) as ex:
            problems.append(Problem("unreadable_file", METADATA, str(ex).splitlines()[0][:200]))
    csv_ids: list[str] = []
    if ACCESSION_IDS in present:
        csv_ids, bad = _accession_ids(store.read_text(ACCESSION_IDS))
        problems += [Problem("bad_accession_ids_line", ACCESSION_IDS, b) for b in bad]

    # tar members: entryIds of mmCIF members per shard
    in_tars: dict[str, str] = {}
    per_shard: Counter[str] = Counter()
    for rec in (f for f in manifest.files if f.kind == "shard" and f.path in present):
        ids, shard_problems = _read_release_shard(store, rec.path, manifest.release)
        problems += shard_problems
        for entry_id in ids:
            in_tars[entry_id] = rec.path
        per_shard[rec.path] = len(ids)
        if len(ids) != rec.entries:
            problems.append(Problem("count_mismatch", rec.path,
                                    f"{len(ids)} mmCIF members, manifest says {rec.entries} entries"))

    meta_by_shard = Counter(shard for _, shard in meta_rows)
    for shard in sorted(set(meta_by_shard) | set(per_shard)):
        if meta_by_shard[shard] != per_shard[shard] and shard in present:
            problems.append(Problem("count_mismatch", shard, f"{per_shard[shard]} mmCIF members, "
                                                             f"{meta_by_shard[shard]} metadata rows"))
    fasta_records = _fasta_records(store) if SEQUENCES in present else 0
    total = manifest.counts.get("exported_entries")
    for name, n in ((METADATA, len(meta_rows)), (ACCESSION_IDS, len(csv_ids)), (SEQUENCES, fasta_records),
                    ("tar members", len(in_tars))):
        listed_rec = manifest.file(name)
        if n != total or (listed_rec is not None and listed_rec.entries != n):
            problems.append(Problem("count_mismatch", name, f"{n} entries, manifest says {total} in all"
                                    + (f" and {listed_rec.entries} in this file" if listed_rec is not None else "")))
    meta_ids = dict(meta_rows)
    for entry_id, shard in sorted(meta_ids.items()):
        if in_tars.get(entry_id) != shard:
            problems.append(Problem("metadata_row_without_structure", f"{METADATA} {entry_id}",
                                    f"no mmCIF member for it in {shard}"))
    for entry_id, shard in sorted(in_tars.items()):
        if entry_id not in meta_ids:
            problems.append(Problem("structure_without_metadata_row", f"{shard} {entry_id}",
                                    f"mmCIF member has no row in {METADATA}"))
    for entry_id in sorted(set(csv_ids) ^ set(meta_ids)):
        problems.append(Problem("accession_ids_mismatch", f"{ACCESSION_IDS} {entry_id}",
                                "in only one of accession_ids.csv and metadata.parquet"))
    checked = {"files": len(manifest.files), "intact_files": len(intact), "metadata_rows": len(meta_rows),
               "accession_ids": len(csv_ids), "mmcif_members": len(in_tars)}
    return Report("release", store.uri, checked, problems)


def _metadata_rows(store: Store) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    with store.open_read(METADATA) as fh:
        table = pq.read_table(fh, columns=["entryId", "release_shard"])
    return list(zip(table.column("entryId").to_pylist(), table.column("release_shard").to_pylist(), strict=True))


def _fasta_records(store: Store) -> int:
    with store.open_read(SEQUENCES) as fh:
        return sum(1 for line in io.TextIOWrapper(fh, encoding="utf-8", errors="replace") if line.startswith(">"))


def _accession_ids(text: str) -> tuple[list[str], list[str]]:
    """entryIds of accession_ids.csv, and a description of each malformed line."""
    ids, bad = [], []
    for i, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if len(row) != 5 or not row[1].isdigit() or not row[2].isdigit() or not row[4].isdigit():
            bad.append(f"line {i}: {','.join(row)[:80]!r} is not accession,first,last,entryId,version")
            continue
        ids.append(row[3])
    return ids, bad


def _read_release_shard(store: Store, path: str, release: str) -> tuple[list[str], list[Problem]]:
    """entryIds of the shard's mmCIF members (each parsed with gemmi) and the problems found."""
    suffix = member_names("", release)["mmcif"]
    ids: list[str] = []
    problems: list[Problem] = []
    try:
        with store.open_read(path) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for info in tar:
                data = tar.extractfile(info) if info.isfile() else None
                if data is None:
                    continue
                where = f"{path} {info.name}"
                try:
                    text = gzip.decompress(data.read())
                except (OSError, EOFError, zlib.error) as ex:
                    problems.append(Problem("unreadable_member", where, f"gzip: {ex}"))
                    continue
                if info.name.endswith(suffix):
                    err = _parse_mmcif(text.decode(errors="replace"))
                    if err:
                        problems.append(Problem("bad_mmcif", where, err))
                    ids.append(info.name[: -len(suffix)])
    except (tarfile.TarError, OSError, EOFError) as ex:
        problems.append(Problem("unreadable_file", path, f"tar: {ex}"))
    return ids, problems


def report_lines(report: Report) -> list[str]:
    return [p.line() for p in report.problems]


def describe(report: Report) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in report.checked.items())
    state = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    return f"{report.kind} {report.location}: {state} ({counts})"

