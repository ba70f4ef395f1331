"""Export a subset of an atlas as a bulk-download release, like AlphaFold DB's FTP area.

A release (docs/releases.md is the full contract) is a flat set of files under one location
(local directory or ``s3://`` prefix)::

    <name>_v<release>.tar        tar shards of gzipped per-entry files (at most --shard-size entries)
    metadata.parquet             the exported entries rows (+ ``release_shard``)
    accession_ids.csv            AFDB format: accession,first residue,last residue,entryId,version
    sequences.fasta              AFDB format: >FoldAtlas:<entryId> <description> UA= UI= OS= OX= GN=
    manifest.json                every file with size, SHA-256 and entry count; written LAST

Shard names: ``proteome-tax_id-<taxId>-<n>_v<release>.tar`` (``--by taxon``; taxId 0 for
entries without one), ``tm_<lo>_<hi>_plddt_<lo>_<hi>-<n>_v<release>.tar`` (``--by confidence``,
ESM Atlas's bins) or ``shard-<n>_v<release>.tar`` (``--by none``); ``n`` counts from 0 per group.

Streaming: one DuckDB query plans the release (entries joined to structures, ordered by group),
its Arrow record batches are cut into shards as they arrive, and at most ``max_inflight`` shards
are being built at once (Ray tasks with fractional CPUs, or threads); each shard's tar is written
to a local temporary file, hashed and put into the destination store. Metadata files are written
as the shards are planned. Nothing holds more than a few shards' rows in memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pyarrow as pa

from pipeline.errors import ReleaseError
from storage.store import Store, aws_env, open_store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METADATA = "metadata.parquet"
ACCESSION_IDS = "accession_ids.csv"
SEQUENCES = "sequences.fasta"
RELEASE_FORMAT_VERSION = 1
FORMATS = ("mmcif", "pae", "confidence", "msa")
GROUPINGS = ("taxon", "confidence", "none")
UNKNOWN_TAXON = 0
# ESM Metagenomic Atlas bins (scripts/atlas/v0/full/bins.txt): pTM and mean pLDDT / 100, each in
# [0, .40), [.40, .50), ... [.80, .90), [.90, 1]; the last bin includes 1.
CONFIDENCE_EDGES = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_SAFE_RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 20
Engine = Literal["auto", "ray", "threads"]


# ---- names ------------------------------------------------------------------------------------
def member_names(entry_id: str, release: str) -> dict[str, str]:
    """AFDB-style member names of one entry inside a release shard, by format."""
    return {
        "mmcif": f"{entry_id}-model_v{release}.cif.gz",
        "confidence": f"{entry_id}-confidence_v{release}.json.gz",
        "pae": f"{entry_id}-predicted_aligned_error_v{release}.json.gz",
        "msa": f"{entry_id}-msa_v{release}.a3m.gz",
    }


def _edge_label(x: float) -> str:
    """ESM Atlas's spelling of a bin edge: 0, .40, ..., .90, 1."""
    return "0" if x == 0 else "1" if x == 1 else f"{x:.2f}".lstrip("0")


def confidence_bin(ptm: float, mean_plddt: float) -> str:
    """The ESM Atlas bin name ``tm_<lo>_<hi>_plddt_<lo>_<hi>`` (``mean_plddt`` on the 0-100 scale)."""
    return f"tm_{_bin(ptm)}_plddt_{_bin(mean_plddt / 100.0)}"


def _bin(x: float) -> str:
    e = CONFIDENCE_EDGES
    k = next((k for k in range(len(e) - 2) if x < e[k + 1]), len(e) - 2)
    return f"{_edge_label(e[k])}_{_edge_label(e[k + 1])}"


def _bin_sql(column: str) -> str:
    """DuckDB expression equal to :func:`_bin` of ``column``."""
    edges = CONFIDENCE_EDGES
    cases = " ".join(f"WHEN {column} < {edges[k + 1]} THEN '{_edge_label(edges[k])}_{_edge_label(edges[k + 1])}'"
                     for k in range(len(edges) - 2))
    return f"CASE {cases} ELSE '{_edge_label(edges[-2])}_{_edge_label(edges[-1])}' END"


def group_sql(by: str) -> str:
    """The SQL expression (over entries columns, table alias ``m``) of a shard's name stem before ``-<n>``."""
    if by == "taxon":
        return f"'proteome-tax_id-' || coalesce(CAST(m.taxId AS VARCHAR), '{UNKNOWN_TAXON}')"
    if by == "confidence":
        return f"'tm_' || {_bin_sql('m.ptm')} || '_plddt_' || {_bin_sql('m.mean_plddt / 100.0')}"
    if by == "none":
        return "'shard'"
    raise ReleaseError(f"--by {by!r}: unknown grouping", hint=f"Use one of {', '.join(GROUPINGS)}.")


def shard_name(group: str, n: int, release: str) -> str:
    return f"{group}-{n}_v{release}.tar"


# ---- manifest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    """One file of a release as listed in ``manifest.json``."""

    path: str
    size: int
    sha256: str
    entries: int
    kind: str  # shard | metadata | accession_ids | sequences


@dataclass(frozen=True)
class Manifest:
    release: str
    source_atlas: str
    where: str | None
    by: str
    shard_size: int
    formats: list[str]
    created_at: str
    foldatlas_version: str
    git_commit: str
    counts: dict[str, Any]
    files: list[FileRecord]
    format: str = "foldatlas-release"
    format_version: int = RELEASE_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format") != "foldatlas-release":
                raise ValueError(f"format is {d.get('format')!r}, not 'foldatlas-release'")
            known = {f.name for f in fields(FileRecord)}  # newer manifests may add keys: ignore them
            d["files"] = [FileRecord(**{k: v for k, v in f.items() if k in known}) for f in d["files"]]
            return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})
        except (ValueError, TypeError, KeyError) as e:
            raise ReleaseError(f"{where}: not a FoldAtlas release manifest ({e})",
                               hint="Point at the manifest.json that `foldatlas export` wrote.") from e

    def file(self, path: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == path), None)


def sha256_stream(fh: BinaryIO) -> tuple[str, int]:
    """SHA-256 hex digest and byte count of a binary stream, read in 1 MiB chunks."""
    h, n = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def sha256_file(path: str | Path) -> tuple[str, int]:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def read_manifest(store: Store) -> Manifest:
    if not store.exists(MANIFEST):
        raise ReleaseError(f"{store.uri}: no {MANIFEST}",
                           hint="An export without a manifest is incomplete; run `foldatlas export` again.")
    return Manifest.from_json(store.read_bytes(MANIFEST), store.url(MANIFEST))


# ---- planning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportOptions:
    where: str | None = None
    by: str = "taxon"
    shard_size: int = 10_000
    formats: tuple[str, ...] = ("mmcif", "pae", "confidence")
    release: str = "1"
    engine: Engine = "auto"
    max_inflight: int = 4
    cpus_per_task: float = 0.5

    def check(self) -> None:
        if self.by not in GROUPINGS:
            raise ReleaseError(f"--by {self.by!r}: unknown grouping", hint=f"Use one of {', '.join(GROUPINGS)}.")
        if self.shard_size < 1:
            raise ReleaseError(f"--shard-size {self.shard_size}: must be at least 1", hint="Use e.g. 10000.")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ReleaseError(f"--formats: unknown or empty {bad or self.formats}",
                               hint=f"Choose a comma-separated subset of {','.join(FORMATS)}.")
        if not _SAFE_RELEASE.match(self.release):
            raise ReleaseError(f"--release {self.release!r}: not usable in file names",
                               hint="Use letters, digits, '.', '_' and '-', e.g. 1 or 2026_12.")


def _table_glob(store: Store, table: str) -> str:
    return f"read_parquet('{store.url(table)}/*.parquet', union_by_name=true)"


def check_where(con: Any, store: Store, where: str | None) -> str:
    """The predicate as a SQL fragment, after DuckDB has bound it against the entries table."""
    import duckdb

    if not where or not where.strip():
        return "TRUE"
    try:
        con.execute(f"SELECT count(*) FROM (SELECT * FROM {_table_glob(store, 'entries')} LIMIT 0) WHERE ({where})").fetchall()
    except duckdb.Error as e:
        raise ReleaseError(f"--where {where!r} is not a valid predicate on the entries table: {e}",
                           hint="Write a DuckDB boolean expression over entries columns, e.g. "
                                "\"taxId = 9606 AND globalMetricValue > 70\".") from e
    return f"({where})"


def _plan_sql(store: Store, predicate: str, opts: ExportOptions) -> str:
    """Exported entries with their structure row (column ``_structure``) and shard (``_shard``)."""
    return f"""
        WITH m AS (SELECT * FROM {_table_glob(store, 'entries')} WHERE {predicate}),
        x AS (
            SELECT m.*, s AS _structure, {group_sql(opts.by)} AS _group
            FROM m JOIN (SELECT * FROM {_table_glob(store, 'structures')}
                         QUALIFY row_number() OVER (PARTITION BY sequence_sha256, model ORDER BY created_at) = 1) s
              ON s.sequence_sha256 = m.sequence_sha256 AND s.model = m.model
            WHERE m.status = 'predicted' AND s.published)
        SELECT * EXCLUDE (_group),
               _group || '-' || CAST((row_number() OVER (PARTITION BY _group ORDER BY entryId) - 1)
                                     // {opts.shard_size} AS VARCHAR) || '_v{opts.release}.tar' AS _shard
        FROM x ORDER BY _shard, entryId"""


def _counts(con: Any, store: Store, predicate: str) -> dict[str, Any]:
    """How many rows the predicate matched and why some have no structure to export."""
    row = con.execute(f"""
        WITH m AS (SELECT * FROM {_table_glob(store, 'entries')} WHERE {predicate}),
        s AS (SELECT sequence_sha256, model, bool_or(coalesce(published, false)) AS published
              FROM {_table_glob(store, 'structures')} GROUP BY ALL)
        SELECT count(*),
               count(*) FILTER (WHERE m.status = 'predicted' AND s.published),
               count(*) FILTER (WHERE m.status <> 'predicted'),
               count(*) FILTER (WHERE m.status = 'predicted' AND s.sequence_sha256 IS NULL),
               count(*) FILTER (WHERE m.status = 'predicted' AND NOT s.published),
               count(*) - count(DISTINCT m.entryId)
        FROM m LEFT JOIN s ON s.sequence_sha256 = m.sequence_sha256 AND s.model = m.model""").fetchall()[0]
    matched, exported, failed, missing, unpublished, dup = (int(v or 0) for v in row)
    return {"matched_entries": matched, "exported_entries": exported,
            "without_structure": matched - exported,
            "without_structure_by_reason": {"failed": failed, "not_published": unpublished,
                                            "structure_missing": missing},
            "duplicate_entry_ids": dup}


# ---- building one shard -----------------------------------------------------------------------
@dataclass(frozen=True)
class ShardTask:
    name: str
    rows: pa.Table  # entries columns + _structure (+ _shard)
    atlas_uri: str
    dest_uri: str
    formats: tuple[str, ...]
    release: str


def _members(task: ShardTask) -> Iterator[tuple[str, bytes]]:
    """The shard's members, one entry at a time (artifacts read through storage.entry)."""
    from storage.atlas import Atlas
    from storage.entry import FoundEntry

    atlas = Atlas(task.atlas_uri)
    a3m: dict[str, str] = {}
    keys = [k for k in task.rows.column("msa_key").to_pylist() if k] if "msa" in task.formats and \
        "msa_key" in task.rows.column_names else []
    if keys:
        from storage.query import load_a3m

        a3m = load_a3m(task.atlas_uri, sorted(set(keys)))
    for row in task.rows.to_pylist():
        structure = row.pop("_structure")
        row.pop("_shard", None)
        found = FoundEntry(atlas, row, structure)
        names = member_names(found.entry_id, task.release)
        if "mmcif" in task.formats:
            yield names["mmcif"], found.mmcif().encode()
        if "confidence" in task.formats:
            yield names["confidence"], found.confidence_json()
        if "pae" in task.formats:
            yield names["pae"], found.pae_json()
        if row.get("msa_key") in a3m:
            yield names["msa"], a3m[row["msa_key"]].encode()


def build_shard(task: ShardTask) -> FileRecord:
    """Write one release shard to a local temporary file, hash it, put it into the destination."""
    from storage.mmcif_shard import write_mmcif_shard

    dest = open_store(task.dest_uri)
    with tempfile.TemporaryDirectory(prefix="foldatlas-export-") as tmp:
        local = Path(tmp) / task.name
        write_mmcif_shard(local, _members(task))
        digest, size = sha256_file(local)
        dest.put_file(local, task.name)
    return FileRecord(task.name, size, digest, task.rows.num_rows, "shard")


# ---- running shards in parallel ---------------------------------------------------------------
class _Pool:
    """Bounded parallel map of :func:`build_shard`: Ray tasks (fractional CPUs) or threads."""

    def __init__(self, engine: str, max_inflight: int, cpus: float) -> None:
        self.engine, self.max_inflight = engine, max(1, max_inflight)
        self.pending: list[Any] = []
        self.done: list[FileRecord] = []
        if engine == "ray":
            import ray

            if not ray.is_initialized():
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            env = aws_env()
            self._remote = ray.remote(num_cpus=cpus, max_retries=2)(build_shard).options(
                **({"runtime_env": {"env_vars": env}} if env else {}))
        else:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=self.max_inflight, thread_name_prefix="export")

    def submit(self, task: ShardTask) -> None:
        while len(self.pending) >= self.max_inflight:
            self._collect(block_for_one=True)
        if self.engine == "ray":
            import ray

            self.pending.append(self._remote.remote(ray.put(task)))
        else:
            self.pending.append(self._executor.submit(build_shard, task))

    def _collect(self, block_for_one: bool) -> None:
        if self.engine == "ray":
            import ray

            ready, self.pending = ray.wait(self.pending, num_returns=1 if block_for_one else len(self.pending))
            self.done.extend(ray.get(ready))
        else:
            from concurrent.futures import FIRST_COMPLETED, wait

            done, rest = wait(self.pending, return_when=FIRST_COMPLETED if block_for_one else "ALL_COMPLETED")
            self.pending = list(rest)
            self.done.extend(f.result() for f in done)

    def finish(self) -> list[FileRecord]:
        if self.pending:
            self._collect(block_for_one=False)
        if self.engine == "threads":
            self._executor.shutdown()
        return self.done


RAY_MIN_ENTRIES = 10_000


def choose_engine(engine: Engine, shards: int, entries: int) -> str:
    """``auto``: Ray when it is already running, or for more than one shard and >= 10,000 entries.

    Measured on 2 shared cores (docs/releases.md): a cold local Ray costs 20-70 s before the first
    shard is done, and even warm, Ray tasks were slower than threads for 100 entries (25 s vs 4 s),
    the per-entry work being zlib, gemmi and I/O that threads overlap well. Ray pays off for big
    releases, whose shards take minutes each and spread over a cluster's nodes.
    """
    if engine != "auto":
        return engine
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "threads"
    import ray

    return "ray" if ray.is_initialized() or (shards > 1 and entries >= RAY_MIN_ENTRIES) else "threads"


# ---- the export -------------------------------------------------------------------------------
@dataclass
class _SideFiles:
    """metadata.parquet, accession_ids.csv and sequences.fasta, written as shards are planned."""

    dir: Path
    writer: Any = None
    rows: int = 0
    csv_fh: Any = None
    fasta_fh: Any = None
    columns: list[str] = field(default_factory=list)

    def open(self) -> None:
        self.csv_fh = open(self.dir / ACCESSION_IDS, "w", newline="")  # noqa: SIM115 - closed in close()
        self.fasta_fh = open(self.dir / SEQUENCES, "w")  # noqa: SIM115

    def add(self, shard: str, rows: pa.Table) -> None:
        import pyarrow.parquet as pq

        meta = rows.drop_columns([c for c in ("_structure", "_shard") if c in rows.column_names])
        meta = meta.append_column("release_shard", pa.array([shard] * rows.num_rows, pa.string()))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.dir / METADATA, meta.schema, compression="zstd")
        self.writer.write_table(meta)
        self.rows += rows.num_rows
        out = csv.writer(self.csv_fh, lineterminator="\n")
        for r in meta.select(["accession", "uniprotStart", "uniprotEnd", "entryId", "latestVersion",
                              "uniprotDescription", "uniprotId", "organismScientificName", "taxId", "gene",
                              "uniprotSequence"]).to_pylist():
            out.writerow([r["accession"], r["uniprotStart"], r["uniprotEnd"], r["entryId"], r["latestVersion"]])
            self.fasta_fh.write(fasta_record(r))

    def close(self, empty_schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            schema = pa.schema([f for f in empty_schema if f.name not in ("_structure", "_shard")])
            pq.write_table(schema.append(pa.field("release_shard", pa.string())).empty_table(),
                           self.dir / METADATA, compression="zstd")
        else:
            self.writer.close()
        self.csv_fh.close()
        self.fasta_fh.close()


def fasta_record(r: dict[str, Any]) -> str:
    """One ``sequences.fasta`` record in AlphaFold DB's header layout, database tag ``FoldAtlas``.

    AFDB: ``>AFDB:AF-A0A2L2JPH6-F1 Uncharacterized protein UA=A0A2L2JPH6 UI=A0A2L2JPH6_9NOCA
    OS=Nocardia cyriacigeorgica OX=135487 GN=C5B73_08745``; fields that are null are left out.
    """
    parts = [f">FoldAtlas:{r['entryId']}"]
    if r.get("uniprotDescription"):
        parts.append(str(r["uniprotDescription"]))
    for tag, key in (("UA", "accession"), ("UI", "uniprotId"), ("OS", "organismScientificName"),
                     ("OX", "taxId"), ("GN", "gene")):
        if r.get(key) is not None and r.get(key) != "":
            parts.append(f"{tag}={r[key]}")
    return " ".join(parts) + "\n" + str(r["uniprotSequence"]) + "\n"


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    dest: str
    seconds: float
    engine: str


def export_release(atlas_uri: str, dest_uri: str, opts: ExportOptions,
                   progress: Callable[[FileRecord], None] | None = None) -> ExportResult:
    """Write a release of the entries matching ``opts.where`` to ``dest_uri``; manifest last."""
    from pipeline.runner import git_commit, package_version

    opts.check()
    t0 = time.perf_counter()
    atlas, dest = open_store(atlas_uri), open_store(dest_uri)
    if not atlas.exists("atlas.json"):
        raise ReleaseError(f"{atlas.uri} is not a FoldAtlas atlas (no atlas.json)",
                           hint="Give the directory or s3:// prefix that `foldatlas run --atlas` wrote.")
    if dest.exists(MANIFEST):
        raise ReleaseError(f"{dest.uri} already holds a release ({MANIFEST})",
                           hint="Export into a new location; releases are immutable.")
    con = atlas.duckdb()
    try:
        predicate = check_where(con, atlas, opts.where)
        counts = _counts(con, atlas, predicate)
        if counts["duplicate_entry_ids"]:
            raise ReleaseError(f"{counts['duplicate_entry_ids']} entryIds appear more than once among the "
                               "matched entries (several models or sequence versions of one accession)",
                               hint="Narrow --where to one model, e.g. \"model = 'esmfold'\".")
        n_shards = int(con.execute(f"SELECT count(DISTINCT _shard) FROM ({_plan_sql(atlas, predicate, opts)})")
                       .fetchall()[0][0])
        engine = choose_engine(opts.engine, n_shards, counts["exported_entries"])
        log.info("export %s -> %s: %d entries in %d shards (%s)", atlas.uri, dest.uri,
                 counts["exported_entries"], n_shards, engine)
        pool = _Pool(engine, opts.max_inflight, opts.cpus_per_task)
        reader = con.sql(_plan_sql(atlas, predicate, opts)).to_arrow_reader(4096)
        with tempfile.TemporaryDirectory(prefix="foldatlas-release-") as tmp:
            side = _SideFiles(Path(tmp))
            side.open()
            for name, rows in _shards(reader):
                side.add(name, rows)
                pool.submit(ShardTask(name, rows, atlas.uri, dest.uri, tuple(opts.formats), opts.release))
            shards = pool.finish()
            side.close(reader.schema)
            files = sorted(shards, key=lambda f: f.path)
            for name, kind in ((METADATA, "metadata"), (ACCESSION_IDS, "accession_ids"),
                               (SEQUENCES, "sequences")):
                digest, size = sha256_file(Path(tmp) / name)
                dest.put_file(Path(tmp) / name, name)
                files.append(FileRecord(name, size, digest, side.rows, kind))
    finally:
        con.close()
    if progress:
        for f in files:
            progress(f)
    counts["shards"] = len(shards)
    manifest = Manifest(release=opts.release, source_atlas=atlas.uri, where=opts.where, by=opts.by,
                        shard_size=opts.shard_size, formats=list(opts.formats),
                        created_at=datetime.now(UTC).isoformat(), foldatlas_version=package_version(),
                        git_commit=git_commit(), counts=counts, files=files)
    dest.write_text(MANIFEST, manifest.to_json())  # last: a release with a manifest is complete
    return ExportResult(manifest, dest.uri, time.perf_counter() - t0, engine)


def _shards(reader: Any) -> Iterator[tuple[str, pa.Table]]:
    """Cut the ordered plan into shards: consecutive rows with the same ``_shard``."""
    current: str | None = None
    parts: list[pa.Table] = []
    for batch in reader:
        table = pa.Table.from_batches([batch])
        names = table.column("_shard").to_pylist()
        start = 0
        for i in range(1, len(names) + 1):
            if i == len(names) or names[i] != names[start]:
                if current is not None and names[start] != current:
                    yield current, pa.concat_tables(parts)
                    parts = []
                current = names[start]
                parts.append(table.slice(start, i - start))
                start = i
    if current is not None:
        yield current, pa.concat_tables(parts)


def parse_formats(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip())


def human_size(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = min(len(units) - 1, int(math.log(max(n, 1), 1024)))
    return f"{n / 1024 ** k:.1f} {units[k]}" if k else f"{n} B"

