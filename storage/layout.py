"""Physical layout of the atlas tables: sort keys, row groups, bloom filters, generations.

Why (measured in ``benchmarks/query_speed.py``, see ``docs/benchmarks.md``): DuckDB answers a
point lookup by skipping row groups whose min/max statistics or bloom filter exclude the key, and
it pays a footer read per file its glob matches. So each table file is

* **sorted by its key** (:data:`LAYOUTS`): min/max statistics then exclude all but one row group
  for the primary key (``entries.accession``, ``structures.sequence_sha256`` ...);
* written with **Parquet bloom filters** on the columns looked up by equality that are *not* the
  sort key (``entries.sequence_sha256``, ``entries.entryId``): DuckDB 2.x reads the split-block
  bloom filters pyarrow writes and skips row groups they exclude (``EXPLAIN ANALYZE`` shows
  "Row Groups Scanned: 1 / N");
* cut into **row groups sized by bytes, not rows**: a ``SELECT *`` lookup decompresses one whole
  row group, so tables with per-residue lists (``structures.plddt``) or A3M text (``msas``) get
  small row groups, metric-only tables larger ones.

Per work unit the pipeline writes one small shard per table (:func:`write_shard`: sorted, bloom
filters). Tens of thousands of small files make every query pay tens of thousands of footer
reads, so :func:`compact` merges them into large sorted files (``c-<generation>-<n>.parquet``,
``target_rows`` each). Files are range-partitioned by the sort key (one global sort), not
hash-partitioned into sub-directories: range files keep the flat ``<table>/*.parquet`` glob, and
DuckDB prunes them by their statistics without the query naming a partition column.

Generations (how compaction stays atomic for readers of a plain glob)::

    <atlas>/<table>                       -> symlink to _tables/<table>/g000003 (relative)
    <atlas>/_tables/<table>/g000003/      current generation: hard links to kept files + new ones
    <atlas>/_tables/<table>/g000002/      retired generation, RETIRED holds the retirement time;
                                          deleted by a later compaction after the grace period

A compaction builds the next generation directory aside (hard links to the files it keeps, the
merged files it writes), then switches the table path to it with one atomic rename of a symlink
(``os.replace``). ``Atlas.init`` creates every local table as generation ``g000000`` behind its
symlink (:func:`init_table`); the first compaction of a table that is still a plain directory (an
atlas made by an older version) swaps directory and symlink with ``renameat2(RENAME_EXCHANGE)``. A glob's listing of ``<table>/*.parquet`` is one
``readdir`` of one generation, so it never holds a small shard and the merged file that contains
its rows. A reader that listed the old generation and opens its files after the switch finds the
kept ones (same hard-linked bytes) and gets a "file not found" error for merged-away ones: an
error, never a duplicate or a missing row. FoldAtlas's own readers avoid even that by resolving
the symlink once (:func:`table_glob`), so they read an immutable generation until its grace
period ends. Runs publish new shards into the current generation through the symlink; both hold
the atlas writer lock, so they never overlap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import AtlasError
from storage.schema import TABLES
from storage.store import fsync_dir

log = logging.getLogger(__name__)

GENERATIONS_DIR = "_tables"
RETIRED_MARKER = "RETIRED"
COMPACTED_PREFIX = "c-"
_GEN_RE = re.compile(r"^g(\d{6})$")
BLOOM_FPP = 0.01


@dataclass(frozen=True)
class TableLayout:
    """How one table's Parquet files are written.

    Attributes:
        sort_by: columns the rows are sorted by inside every file (the lookup key first).
        bloom: columns that get a Parquet bloom filter (equality lookups on non-sort columns).
        row_group_rows: rows per row group: about 1-4 MB compressed for the table's typical row.
    """

    sort_by: tuple[str, ...]
    bloom: tuple[str, ...]
    row_group_rows: int


LAYOUTS: dict[str, TableLayout] = {
    # ~0.35 kB per row compressed, ~1 kB decoded (sequence included): 4,096 rows ~ 1.4 MB on disk,
    # ~4 MB decoded by a SELECT * lookup (docs/benchmarks.md "Query speed and layout": 4,096 vs
    # 8,192 / 16,384 / 65,536 rows measured; footers grow to ~1.7 MB per million rows).
    "entries": TableLayout(("accession", "model"), ("accession", "entryId", "sequence_sha256"), 4_096),
    # per-residue pLDDT lists (~1.2 kB raw per 300-residue row): row groups as small as entries'.
    "structures": TableLayout(("sequence_sha256", "model"), ("sequence_sha256",), 4_096),
    "failures": TableLayout(("sequence_sha256", "model"), ("sequence_sha256",), 65_536),
    # A3M text: tens of kB per row.
    "msas": TableLayout(("msa_key",), ("msa_key", "sequence_sha256"), 1_024),
    "rejects": TableLayout(("reject_key",), ("reject_key",), 65_536),
}


def layout_for(table: str) -> TableLayout:
    try:
        return LAYOUTS[table]
    except KeyError:
        raise AtlasError(f"no layout for table {table!r}", hint=f"Tables are {sorted(LAYOUTS)}.") from None


def parquet_options(table: str, rows: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``pq.write_table`` / ``pq.ParquetWriter`` for a file of ``table``.

    ``rows`` (rows in the file) sizes the bloom filters: one per row group, for at most
    ``min(rows, row_group_rows)`` distinct values at 1 % false positives (~1.2 bytes per value).
    """
    lay = layout_for(table)
    ndv = max(1, min(rows if rows is not None else lay.row_group_rows, lay.row_group_rows))
    return {
        "compression": "zstd",
        "write_statistics": True,
        "bloom_filter_options": {c: {"ndv": ndv, "fpp": BLOOM_FPP} for c in lay.bloom},
    }


def sort_table(table_name: str, table: pa.Table) -> pa.Table:
    keys = [(c, "ascending") for c in layout_for(table_name).sort_by if c in table.column_names]
    return table.sort_by(keys) if keys and table.num_rows > 1 else table


def with_provenance(table: pa.Table, provenance: dict[str, Any] | None) -> pa.Table:
    import json

    meta = dict(table.schema.metadata or {})
    if provenance:
        meta[b"foldatlas.provenance"] = json.dumps(provenance, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def write_shard(table_name: str, table: pa.Table, path: Path, provenance: dict[str, Any] | None = None) -> None:
    """Write one work unit's shard of ``table_name``: sorted by its key, bloom filters, zstd."""
    table = with_provenance(sort_table(table_name, table), provenance)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=layout_for(table_name).row_group_rows,
                   **parquet_options(table_name, table.num_rows))


def key_lookup_sql(source: str, columns: Sequence[str], model: bool = False) -> str:
    """Rows of ``source`` where any of ``columns`` equals ``$key`` (and ``model = $model``).

    One ``UNION ALL`` branch per column: DuckDB prunes each equality by statistics and bloom
    filters, whereas ``a = ? OR b = ?`` across columns scans the whole table (measured: ~2 minutes
    on 10M entries). A row matching in two columns comes back twice; callers dedupe.
    """
    extra = " AND model = $model" if model else ""
    return " UNION ALL ".join(f'SELECT * FROM {source} WHERE "{c}" = $key{extra}' for c in columns)


# ---- generations -------------------------------------------------------------------------------

def table_dir(root: Path, table: str) -> Path:
    """The directory holding the table's files now (the current generation, symlink resolved)."""
    return Path(os.path.realpath(root / table))


def init_table(root: Path, table: str) -> None:
    """Create a new local table as generation 0: ``<root>/<table>`` -> ``_tables/<table>/g000000``.

    Every table of an atlas made by :meth:`storage.atlas.Atlas.init` is a generation symlink from
    the start, so even its first compaction is a plain symlink switch that :func:`table_glob`
    snapshots cover. A table that already exists (a plain directory written by an older version)
    is left as it is; its first compaction exchanges it atomically (:func:`switch_generation`).
    """
    link = root / table
    if link.is_symlink() or link.exists():
        return
    gen = root / GENERATIONS_DIR / table / "g000000"
    gen.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{table}.next"
    if tmp.is_symlink() or tmp.exists():
        _remove_path(tmp)
    os.symlink(os.path.relpath(gen, root), tmp)
    os.replace(tmp, link)
    fsync_dir(root)


def table_glob(root: str | Path, table: str) -> str:
    """Glob of the table's current files, symlink resolved once: a stable snapshot for one query.

    Use it instead of ``<atlas>/<table>/*.parquet`` in FoldAtlas's own readers; the result stays
    readable for the grace period of :func:`compact` even if a compaction switches generations.
    Tables created by ``Atlas.init`` are generations from the start (:func:`init_table`); only a
    table that is still a plain directory (an atlas made before that) is unprotected during its
    first compaction: a reader that resolved it then can fail with "No such file" (never a wrong
    answer) and must retry.
    """
    if str(root).startswith("s3://"):  # no symlinks, no generations on S3: the plain glob
        return f"{str(root).rstrip('/')}/{table}/*.parquet"
    return str(table_dir(Path(root), table) / "*.parquet")


def _generations(root: Path, table: str) -> list[tuple[int, Path]]:
    base = root / GENERATIONS_DIR / table
    if not base.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in base.iterdir() if (m := _GEN_RE.match(p.name)) and p.is_dir()]
    return sorted(out)


def _generation_no(root: Path, table: str, gen_dir: Path) -> int:
    """Number of a generation directory; 0 for a table that is still a plain directory."""
    m = _GEN_RE.match(gen_dir.name)
    return int(m.group(1)) if m and gen_dir.parent == root / GENERATIONS_DIR / table else 0


def _rename_exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise AtlasError("this C library has no renameat2: cannot switch a table directory atomically",
                         hint="Compact on Linux (glibc >= 2.28) or on a filesystem that supports RENAME_EXCHANGE.")
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise AtlasError(f"renameat2(RENAME_EXCHANGE) {a} <-> {b} failed: {os.strerror(err)}",
                         hint="The filesystem must support RENAME_EXCHANGE (ext4, xfs, btrfs, tmpfs) "
                              "for the first compaction of a table.")


def switch_generation(root: Path, table: str, new_gen: Path) -> Path | None:
    """Point ``<root>/<table>`` at ``new_gen`` atomically; returns the retired directory.

    The first switch of a table that is still a real directory moves that directory to
    ``_tables/<table>/g000000`` (after the atomic exchange, so readers never see it vanish).
    """
    link = root / table
    tmp = root / f".{table}.next"
    if tmp.is_symlink() or tmp.exists():
        _remove_path(tmp)
    os.symlink(os.path.relpath(new_gen, root), tmp)
    retired: Path | None
    if link.is_symlink():
        retired = table_dir(root, table)
        os.replace(tmp, link)
    elif link.is_dir():
        _rename_exchange(tmp, link)
        retired = new_gen.parent / "g000000"
        os.rename(tmp, retired)  # tmp is now the old real directory
    else:
        os.replace(tmp, link)
        retired = None
    fsync_dir(root)
    if retired is not None:
        (retired / RETIRED_MARKER).write_text(f"{time.time():.3f}\n")
    return retired


def _remove_path(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    else:
        shutil.rmtree(p)


def drop_retired(root: Path, table: str, grace_s: float) -> list[Path]:
    """Delete retired generations of ``table`` older than ``grace_s`` seconds (never the current one)."""
    current = table_dir(root, table)
    dropped = []
    now = time.time()
    for _, gen in _generations(root, table):
        marker = gen / RETIRED_MARKER
        if gen == current or not marker.exists():
            continue
        try:
            retired_at = float(marker.read_text().strip())
        except ValueError:
            retired_at = marker.stat().st_mtime
        if now - retired_at >= grace_s:
            shutil.rmtree(gen)
            dropped.append(gen)
    return dropped


# ---- compaction ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TableCompaction:
    table: str
    files_before: int
    files_after: int
    rows_merged: int
    files_merged: int
    generation: str
    seconds: float


@dataclass(frozen=True)
class CompactionReport:
    tables: tuple[TableCompaction, ...] = field(default_factory=tuple)
    dropped_generations: tuple[str, ...] = field(default_factory=tuple)


def _parquet_rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


def _select_for_merge(files: list[Path], target_rows: int, full: bool) -> tuple[list[Path], list[Path]]:
    """(files to keep as they are, files to merge). Large compacted files are kept unless ``full``."""
    keep, merge = [], []
    for f in files:
        large = not full and f.name.startswith(COMPACTED_PREFIX) and _parquet_rows(f) >= target_rows // 2
        if f.name == "schema.parquet" or large:
            keep.append(f)
        else:
            merge.append(f)
    return keep, merge


def _sorted_batches(table: str, files: list[Path], batch_rows: int, temp_dir: Path,
                    memory_limit: str) -> Iterator[pa.RecordBatch]:
    """The rows of ``files`` in sort-key order, streamed (DuckDB sorts, spilling to ``temp_dir``)."""
    import duckdb

    schema = TABLES[table]
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(temp_dir),
                                 "preserve_insertion_order": False})
    try:
        paths = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
        src = f"read_parquet({paths}, union_by_name = true)"
        present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        cols = ", ".join(f'"{n}"' if n in present else f'NULL AS "{n}"' for n in schema.names)
        order = ", ".join(f'"{c}"' for c in layout_for(table).sort_by)
        reader = con.sql(f"SELECT {cols} FROM {src} ORDER BY {order}").to_arrow_reader(batch_rows)
        for batch in reader:
            yield pa.Table.from_batches([batch]).cast(schema).to_batches()[0] if batch.num_rows else batch
    finally:
        con.close()


def write_sorted_files(table: str, batches: Iterator[pa.RecordBatch], out_dir: Path, prefix: str,
                       target_rows: int, provenance: dict[str, Any] | None = None) -> list[tuple[Path, int]]:
    """Write already-sorted batches into files of ``target_rows`` rows: ``<prefix><n:05d>.parquet``.

    Every file is one contiguous key range; row groups of the table's ``row_group_rows``.
    """
    lay = layout_for(table)
    schema = with_provenance(TABLES[table].empty_table(), provenance).schema
    opts = parquet_options(table)
    written: list[tuple[Path, int]] = []
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = file_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if writer is not None and pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=lay.row_group_rows)
        pending, pending_rows = [], 0

    def close() -> None:
        nonlocal writer
        flush()
        if writer is not None:
            writer.close()
            written.append((path, file_rows))
            writer = None

    path = out_dir / f"{prefix}{0:05d}.parquet"
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            if writer is None:
                path = out_dir / f"{prefix}{len(written):05d}.parquet"
                writer = pq.ParquetWriter(path, schema, **opts)
                file_rows = 0
            take = min(batch.num_rows - start, target_rows - file_rows, lay.row_group_rows - pending_rows)
            pending.append(batch.slice(start, take))
            pending_rows += take
            file_rows += take
            start += take
            if pending_rows >= lay.row_group_rows:
                flush()
            if file_rows >= target_rows:
                close()
    close()
    return written


def compact_table(root: Path, table: str, *, target_rows: int = 1_000_000, full: bool = False,
                  memory_limit: str = "2GB") -> TableCompaction | None:
    """Merge the table's small files into sorted ``target_rows`` files in a new generation.

    Call with the atlas writer lock held (:func:`compact` does). Returns None when there is
    nothing to merge (fewer than two files to merge).
    """
    t0 = time.perf_counter()
    current = table_dir(root, table)
    files = sorted(current.glob("*.parquet"))
    keep, merge = _select_for_merge(files, target_rows, full)
    if len(merge) < 2:
        return None
    gens = _generations(root, table)
    for no, gen in gens:  # built by a compaction that died before its switch: no reader ever saw it
        if gen != current and not (gen / RETIRED_MARKER).exists() and no > _generation_no(root, table, current):
            shutil.rmtree(gen)
    gens = _generations(root, table)
    gen_no = (gens[-1][0] if gens else 0) + 1
    base = root / GENERATIONS_DIR / table
    base.mkdir(parents=True, exist_ok=True)
    gen_name = f"g{gen_no:06d}"
    building = base / f".{gen_name}.building"
    if building.exists():
        shutil.rmtree(building)  # leftover of a compaction that died before its switch
    building.mkdir()
    for f in keep:
        os.link(f, building / f.name)
    rows_in = sum(_parquet_rows(f) for f in merge)
    spill = building / ".spill"
    spill.mkdir()
    try:
        written = write_sorted_files(
            table, _sorted_batches(table, merge, layout_for(table).row_group_rows, spill, memory_limit),
            building, f"{COMPACTED_PREFIX}{gen_no:06d}-", target_rows,
            {"compacted_from_files": len(merge), "generation": gen_no})
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    rows_out = sum(n for _, n in written)
    if rows_out != rows_in:
        shutil.rmtree(building)
        raise AtlasError(f"compaction of {table} wrote {rows_out} rows from {rows_in}; nothing was switched",
                         hint="The table's files may have changed during compaction; run it again.")
    for p, _ in written:
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(building)
    final = base / gen_name
    os.rename(building, final)
    switch_generation(root, table, final)
    log.info("compacted %s: %d files (%d rows) -> %d files, generation %s", table, len(merge), rows_in,
             len(written), gen_name)
    return TableCompaction(table, len(files), len(keep) + len(written), rows_in, len(merge), gen_name,
                           time.perf_counter() - t0)


def compact(atlas_root: str | Path, *, tables: tuple[str, ...] | None = None, target_rows: int = 1_000_000,
            full: bool = False, grace_s: float = 3600.0, memory_limit: str = "2GB") -> CompactionReport:
    """Compact an atlas's tables (holding the writer lock, so no run publishes meanwhile).

    Retired generations older than ``grace_s`` are deleted afterwards; a reader that resolved a
    generation (:func:`table_glob`) keeps a consistent snapshot for at least that long.
    """
    from storage.atlas import Atlas

    atlas = Atlas(atlas_root)
    atlas.require()
    done: list[TableCompaction] = []
    dropped: list[str] = []
    with atlas.locked():
        for table in tables or tuple(TABLES):
            if not (atlas.root / table).exists():
                continue
            res = compact_table(atlas.root, table, target_rows=target_rows, full=full, memory_limit=memory_limit)
            if res is not None:
                done.append(res)
            dropped += [str(p.relative_to(atlas.root)) for p in drop_retired(atlas.root, table, grace_s)]
    return CompactionReport(tuple(done), tuple(dropped))
