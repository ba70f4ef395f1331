"""Point lookups by key in a warm process: read one row group, not the table.

``foldatlas get`` and :func:`storage.entry.fetch_entry` find rows by an equality on one column
(``entries.accession``, ``structures.sequence_sha256`` ...). DuckDB answers such a query by
reading the footer of every file the glob matches, then pruning row groups by statistics and bloom
filters, then decompressing the surviving row group; it does that again on every query. This module
keeps what a lookup needs between calls instead (:class:`TableIndex`, one per table and snapshot):

* every file's Parquet footer (``pyarrow.parquet.FileMetaData``), read once per file: cached by the
  file's inode, size and mtime, so the hard links a compaction keeps in the next generation are not
  read again;
* per looked-up column, every row group's min/max statistics; the tables are sorted by their key
  (:mod:`storage.layout`), so for the sort key one row group (of one file) can hold the value;
* the positions of the row groups' Parquet bloom filters (split-block, xxHash64, as pyarrow writes
  them): a lookup reads the one 32-byte block of each filter the value hashes to (``os.pread``).

A lookup takes the row groups whose statistics *and* bloom filter admit the value (for a present
key: one, plus bloom false positives in under 1 % of the row groups), decodes each with
``ParquetFile.read_row_group`` (the selected columns, default all) and keeps the matching rows;
with several candidates it decodes the key column first and the rest only where the key is. Rows come back conformed to the table's schema (``storage.schema.TABLES``: columns a
file lacks are nulls, as with ``read_parquet(..., union_by_name = true)``).

Consistency: a snapshot is the table's directory with the generation symlink resolved
(:func:`storage.layout.table_dir`) plus its mtime; a compaction switches the symlink and a run
publishing a shard renames a file into the directory, so either invalidates the snapshot and the
next lookup lists the directory again. Files are immutable once published (a retried unit replaces
a file by rename: a new inode). When pruning cannot narrow a lookup to a few row groups (files
written without statistics or bloom filters, e.g. per-unit shards of older versions, or a table of
thousands of uncompacted shards), the lookup runs in DuckDB on one process-wide connection with
``parquet_metadata_cache`` on, over the same snapshot's files: slower, same rows.

S3 atlases are not indexed here (:func:`lookup` runs the DuckDB query with the store's
filesystem registered).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from storage.schema import TABLES

#: More candidate row groups than this after pruning: DuckDB reads them instead (its scan is parallel).
MAX_ROW_GROUPS = 16
#: Tables of more files than this are not indexed (uncompacted atlases): DuckDB with its metadata cache.
MAX_FILES = 4096

# ---- xxHash64 and Parquet split-block bloom filters ------------------------------------------------

_SALT = (0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D, 0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31)


def xxh64(data: bytes, seed: int = 0) -> int:
    """xxHash64 of ``data`` (the hash of Parquet bloom filters), from the ``xxhash`` library."""
    return int(xxhash.xxh64_intdigest(data, seed))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7


def _skip_struct(buf: bytes, i: int) -> int:
    """Skip a thrift compact struct whose fields are structs or integers (BloomFilterHeader's unions)."""
    while True:
        head = buf[i]
        i += 1
        if head == 0:
            return i
        kind = head & 0x0F
        if head >> 4 == 0:  # long-form field id
            _, i = _varint(buf, i)
        if kind == 12:
            i = _skip_struct(buf, i)
        elif kind in (3, 4, 5, 6):
            _, i = _varint(buf, i)
        elif kind not in (1, 2):
            raise ValueError(f"unexpected thrift type {kind} in a bloom filter header")


def bloom_header(buf: bytes) -> tuple[int, int]:
    """(bitset bytes, header length) of a serialized Parquet ``BloomFilterHeader``."""
    i, field_id, num_bytes = 0, 0, -1
    while True:
        head = buf[i]
        i += 1
        if head == 0:
            break
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field_id += delta
        else:
            raw, i = _varint(buf, i)
            field_id = (raw >> 1) ^ -(raw & 1)
        if kind == 12:
            i = _skip_struct(buf, i)
        elif kind in (3, 4, 5, 6):
            raw, i = _varint(buf, i)
            if field_id == 1:
                num_bytes = (raw >> 1) ^ -(raw & 1)
        else:
            raise ValueError(f"unexpected thrift type {kind} in a bloom filter header")
    if num_bytes <= 0 or num_bytes % 32:
        raise ValueError(f"bloom filter of {num_bytes} bytes")
    return num_bytes, i


def bloom_block(h: int, num_bytes: int) -> int:
    """Byte offset, inside the bitset, of the 32-byte block a hash ``h`` falls into."""
    return (((h >> 32) * (num_bytes // 32)) >> 32) * 32


def bloom_masks(h: int) -> np.ndarray:
    """The 8 bit masks (one per 32-bit word of a block) a hash ``h`` must find set."""
    key = h & 0xFFFFFFFF
    return np.array([1 << (((key * salt) & 0xFFFFFFFF) >> 27) for salt in _SALT], dtype=np.uint32)


def bloom_block_has(block: bytes, h: int) -> bool:
    """Whether a split-block bloom filter block admits the hash ``h`` (may be a false positive)."""
    return bool((np.frombuffer(block, dtype="<u4") & bloom_masks(h)).all())


@dataclass(frozen=True)
class BloomFilters:
    """The bloom filters of one column in one file, one per row group (size 0: none)."""

    offsets: np.ndarray  # int64: bitset offset in the file
    sizes: np.ndarray  # int64: bitset bytes; 0 where the row group has no (usable) filter
    data: np.ndarray | None  # uint8: all bitsets back to back (cached), or None: read per lookup
    starts: np.ndarray  # int64: each bitset's start in ``data``

    def admits(self, path: str, groups: np.ndarray, h: int) -> np.ndarray:
        """Per row group in ``groups``: False where its filter excludes the hash ``h``."""
        sizes = self.sizes[groups]
        has = sizes > 0
        out = np.ones(len(groups), dtype=bool)
        if not has.any():
            return out
        g, sizes = groups[has], sizes[has].astype(np.uint64)
        block = (((np.uint64(h >> 32) * (sizes // np.uint64(32))) >> np.uint64(32)) * np.uint64(32)).astype(np.int64)
        words: np.ndarray
        if self.data is not None:  # bitsets are whole 32-byte blocks, back to back: gather block rows
            words = self.data.view("<u4").reshape(-1, 8)[(self.starts[g] + block) // 32]
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                raw = b"".join(os.pread(fd, 32, int(o)) for o in self.offsets[g] + block)
            finally:
                os.close(fd)
            words = np.frombuffer(raw, dtype="<u4").reshape(-1, 8)
        out[has] = ((words & bloom_masks(h)) != 0).all(axis=1)
        return out


#: Bloom-filter bitsets kept in memory, all files together (~2.5 bytes per row and filtered column).
BLOOM_CACHE_BYTES = 512 << 20
_bloom_cached = 0


# ---- per-file and per-table metadata ---------------------------------------------------------------

@dataclass
class FileMeta:
    """One Parquet file's footer and, per looked-up column, its row groups' statistics and bloom filters."""

    path: str
    metadata: pq.FileMetaData
    _ranges: dict[str, list[tuple[Any, Any] | None]] = field(default_factory=dict)
    _blooms: dict[str, BloomFilters] = field(default_factory=dict)
    _bounds: dict[str, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """Top-level column names."""
        return frozenset(self.metadata.schema.to_arrow_schema().names)

    @functools.cached_property
    def _leaf_index(self) -> dict[str, int]:
        return {self.metadata.schema.column(i).path: i for i in range(self.metadata.num_columns)}

    def _column_index(self, column: str) -> int | None:
        return self._leaf_index.get(column)

    def ranges(self, column: str) -> list[tuple[Any, Any] | None]:
        """Per row group (min, max) of ``column``; None where there are no statistics; [] if no such column."""
        if column not in self._ranges:
            j = self._column_index(column)
            out: list[tuple[Any, Any] | None] = []
            if j is not None:
                for g in range(self.metadata.num_row_groups):
                    st = self.metadata.row_group(g).column(j).statistics
                    out.append((st.min, st.max) if st is not None and st.has_min_max else None)
            self._ranges[column] = out
        return self._ranges[column]

    def bounds(self, column: str) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`ranges` as two object arrays (min, max), for vectorized comparison; None if a row
        group has no statistics."""
        if column not in self._bounds:
            ranges = self.ranges(column)
            if any(r is None for r in ranges):
                self._bounds[column] = None
            else:
                lo, hi = np.empty(len(ranges), dtype=object), np.empty(len(ranges), dtype=object)
                lo[:] = [r[0] for r in ranges if r is not None]
                hi[:] = [r[1] for r in ranges if r is not None]
                self._bounds[column] = (lo, hi)
        return self._bounds[column]

    def blooms(self, column: str) -> BloomFilters:
        """The column's bloom filters: headers read once; bitsets cached while under BLOOM_CACHE_BYTES."""
        global _bloom_cached
        if column not in self._blooms:
            j = self._column_index(column)
            n = self.metadata.num_row_groups
            offsets, sizes = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
            chunks: list[bytes] = []
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for g in range(n):
                    cc = self.metadata.row_group(g).column(j) if j is not None else None
                    offset = cc.bloom_filter_offset if cc is not None and cc.physical_type == "BYTE_ARRAY" else None
                    if not offset or offset < 0:
                        continue
                    length = cc.bloom_filter_length  # type: ignore[union-attr]
                    raw = os.pread(fd, length if length and length > 0 else 64, offset)
                    try:
                        num_bytes, header = bloom_header(raw)
                    except (ValueError, IndexError):
                        continue  # unreadable filter: no pruning by it
                    offsets[g], sizes[g] = offset + header, num_bytes
                    if len(raw) == header + num_bytes:
                        chunks.append(raw[header:])
            finally:
                os.close(fd)
            total = int(sizes.sum())
            data = None
            with _BLOOMS_LOCK:
                if len(chunks) == int((sizes > 0).sum()) and _bloom_cached + total <= BLOOM_CACHE_BYTES:
                    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
                    _bloom_cached += total
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            self._blooms[column] = BloomFilters(offsets, sizes, data, starts)
        return self._blooms[column]

    def forget(self) -> None:
        """Release the cached bitsets (the file left every snapshot)."""
        global _bloom_cached
        with _BLOOMS_LOCK:
            for b in self._blooms.values():
                if b.data is not None:
                    _bloom_cached -= int(b.sizes.sum())
        self._blooms.clear()


_BLOOMS_LOCK = threading.Lock()
_FILES: dict[tuple[int, int, int, int], FileMeta] = {}  # (dev, inode, size, mtime_ns) -> FileMeta
_FILES_LOCK = threading.Lock()


def _file_meta(path: str, st: os.stat_result) -> FileMeta:
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _FILES_LOCK:
        found = _FILES.get(key)
    if found is None or found.path != path:
        # a hard link to a known file (a compaction kept it in the next generation): its caches carry over
        found = (FileMeta(path, found.metadata, found._ranges, found._blooms, found._bounds) if found is not None
                 else FileMeta(path, pq.read_metadata(path)))
        with _FILES_LOCK:
            _FILES[key] = found
    return found


def _key_bytes(value: Any) -> bytes | None:
    """The bytes a BYTE_ARRAY column's bloom filter hashed for ``value`` (strings: UTF-8); None otherwise."""
    if isinstance(value, str):
        return value.encode()
    return value if isinstance(value, bytes) else None  # other types: no bloom filter pruning


@dataclass(frozen=True)
class TableIndex:
    """The files of one table's snapshot (a generation directory at one mtime) with their metadata."""

    table: str
    directory: str
    stamp: tuple[int, int]  # (inode, mtime_ns) of the directory
    files: tuple[FileMeta, ...]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def candidates(self, column: str, value: Any) -> list[tuple[FileMeta, int]] | None:
        """Row groups that may hold ``column = value``; None when a file lacks usable statistics."""
        hashed = _key_bytes(value)
        h = xxh64(hashed) if hashed is not None else None
        out: list[tuple[FileMeta, int]] = []
        for f in self.files:
            if f.metadata.num_rows == 0:
                continue
            ranges = f.ranges(column)
            if not ranges:
                continue  # the file has no such column: all nulls, no match
            bounds = f.bounds(column)
            if bounds is None:
                return None
            lo, hi = bounds
            try:
                groups = np.flatnonzero((lo <= value) & (hi >= value))
            except TypeError:
                return None
            if groups.size and h is not None:
                groups = groups[f.blooms(column).admits(f.path, groups, h)]
            out += [(f, int(g)) for g in groups]
        return out


_INDEXES: dict[tuple[str, str], TableIndex] = {}
_INDEXES_LOCK = threading.Lock()


def table_index(atlas_root: str | Path, table: str) -> TableIndex | None:
    """The current snapshot of a local table (cached until its generation or directory changes).

    None when the table has more than :data:`MAX_FILES` files.
    """
    from storage.layout import table_dir

    root = str(Path(atlas_root).absolute())
    directory = str(table_dir(Path(root), table))
    st = os.stat(directory)
    stamp = (st.st_ino, st.st_mtime_ns)
    with _INDEXES_LOCK:
        idx = _INDEXES.get((root, table))
    if idx is not None and idx.directory == directory and idx.stamp == stamp:
        return idx
    with os.scandir(directory) as it:
        entries = sorted((e for e in it if e.name.endswith(".parquet") and e.is_file()), key=lambda e: e.name)
    if len(entries) > MAX_FILES:
        return None
    files = []
    for e in entries:
        try:
            files.append(_file_meta(e.path, e.stat()))
        except FileNotFoundError:  # replaced while listing: the next lookup sees the new directory
            continue
    idx = TableIndex(table, directory, stamp, tuple(files))
    if os.stat(directory).st_mtime_ns == stamp[1]:  # not changed while we read it
        with _INDEXES_LOCK:
            old = _INDEXES.get((root, table))
            _INDEXES[(root, table)] = idx
        if old is not None:
            kept = {id(f._blooms) for f in idx.files}  # hard links share their caches (_file_meta)
            _forget([f for f in old.files if id(f._blooms) not in kept])
    return idx


def _forget(gone: list[FileMeta]) -> None:
    """Drop files that left the table (merged away, replaced) from the footer cache."""
    with _FILES_LOCK:
        for key in [k for k, f in _FILES.items() if any(f is g for g in gone)]:
            del _FILES[key]
    for f in gone:
        f.forget()


def clear_caches() -> None:
    """Forget every cached footer, snapshot and the DuckDB connection (tests; memory)."""
    global _CON
    with _INDEXES_LOCK:
        _INDEXES.clear()
    with _FILES_LOCK:
        for f in _FILES.values():
            f.forget()
        _FILES.clear()
    with _CON_LOCK:
        if _CON is not None:
            _CON.close()
        _CON = None


# ---- reading rows --------------------------------------------------------------------------------

def conform(table: str, data: pa.Table) -> pa.Table:
    """``data`` with the table's schema: missing columns as nulls, known ones cast; extra ones kept at the end."""
    schema = TABLES[table]
    if data.schema.names == schema.names and data.schema.types == schema.types:
        return data
    names = set(data.schema.names)
    cols, fields = [], []
    for f in schema:
        if f.name in names:
            col = data[f.name]
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(data.num_rows, f.type))
        fields.append(f)
    for name in data.schema.names:
        if name not in schema.names:
            cols.append(data[name])
            fields.append(data.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def _matching(rows: pa.Table, filters: dict[str, Any]) -> pa.Array:
    mask = None
    for c, v in filters.items():
        m = pc.equal(rows[c], pa.scalar(v, rows.schema.field(c).type))
        mask = m if mask is None else pc.and_(mask, m)
    assert mask is not None
    return pc.indices_nonzero(pc.fill_null(mask, False))


def _read_matches(f: FileMeta, group: int, filters: dict[str, Any], columns: Sequence[str] | None,
                  probe: bool) -> pa.Table | None:
    """The matching rows of one row group. ``probe``: decode the filter columns first and the
    others only if a row matches (a bloom filter's false positive then costs little)."""
    pf = pq.ParquetFile(f.path, metadata=f.metadata)
    try:
        present = f.names
        if any(c not in present for c in filters):
            return None  # a filter column the file lacks is null: no row matches
        if probe and not len(_matching(pf.read_row_group(group, columns=list(filters), use_threads=False), filters)):
            return None
        want = None if columns is None else [c for c in dict.fromkeys([*columns, *filters]) if c in present]
        rows = pf.read_row_group(group, columns=want, use_threads=False)  # one small row group: no pool
        hit = _matching(rows, filters)
        return rows.take(hit) if len(hit) else None
    finally:
        pf.close()


_CON: Any = None
_CON_LOCK = threading.Lock()


def duckdb_connection() -> Any:
    """A cursor on the process-wide DuckDB connection (``parquet_metadata_cache`` on)."""
    global _CON
    with _CON_LOCK:
        if _CON is None:
            import duckdb

            _CON = duckdb.connect()
            _CON.execute("SET parquet_metadata_cache = true")
        return _CON.cursor()


def _duckdb_lookup(table: str, source: str, filters: dict[str, Any], columns: Sequence[str] | None,
                   con: Any) -> pa.Table:
    where = " AND ".join(f'"{c}" = ${c}' for c in filters)
    sql = f"SELECT * FROM {source} WHERE {where}"
    out = con.sql(sql, params=filters).to_arrow_table()
    out = conform(table, out) if out.num_rows or columns is None else out
    return out.select([c for c in columns if c in out.column_names]) if columns is not None else out


def _sql_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def lookup(atlas_root: str | Path, table: str, column: str, value: Any, *, model: str | None = None,
           columns: Sequence[str] | None = None) -> pa.Table:
    """Rows of ``table`` where ``column = value`` (and ``model = model``), schema conformed.

    Any column works; fast (one row group read) for a table's sort key and bloom-filtered columns
    (``storage.layout.LAYOUTS``). ``columns`` selects columns (default all). Local atlases use the
    cached :class:`TableIndex`; S3 atlases a DuckDB query with the store's filesystem registered.
    """
    from storage.atlas import Atlas

    filters: dict[str, Any] = {column: value, **({"model": model} if model is not None else {})}
    atlas = Atlas(atlas_root)
    if not atlas.is_local:
        con = atlas.duckdb()
        try:
            return _duckdb_lookup(table, f"read_parquet('{atlas.glob(table)}', union_by_name = true)", filters,
                                  columns, con)
        finally:
            con.close()
    try:
        idx = table_index(atlas.root, table)
    except FileNotFoundError:  # an atlas of a version without this table
        return _empty(table, columns)
    if idx is None:  # too many files to index: the glob, with DuckDB's own metadata cache
        return _duckdb_lookup(table, f"read_parquet('{atlas.glob(table)}', union_by_name = true)", filters,
                              columns, duckdb_connection())
    found = idx.candidates(column, value)
    if found is None or len(found) > MAX_ROW_GROUPS:
        paths = sorted({f.path for f, _ in found}) if found is not None else idx.paths
        if not paths:
            return _empty(table, columns)
        return _duckdb_lookup(table, f"read_parquet({_sql_list(paths)}, union_by_name = true)", filters, columns,
                              duckdb_connection())
    probe = len(found) > 1  # several candidates: bloom false positives or a key spanning row groups
    parts = [t for f, g in found if (t := _read_matches(f, g, filters, columns, probe)) is not None]
    if not parts:
        return _empty(table, columns)
    out = pa.concat_tables([conform(table, t) for t in parts], promote_options="permissive")
    return out.select([c for c in columns if c in out.column_names]) if columns is not None else out


def _empty(table: str, columns: Sequence[str] | None) -> pa.Table:
    empty = TABLES[table].empty_table()
    return empty.select([c for c in columns if c in empty.column_names]) if columns is not None else empty
