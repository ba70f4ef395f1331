"""Ingest to Parquet: the streamed ingest of a run, records in bounded Arrow batches, never in lists.

:func:`ingest_to_parquet` scans the inputs with :func:`pipeline.scan.scan` and writes every record
into Parquet files under a scratch directory, ``batch_rows`` records per row group:

``accepted/*.parquet``  :data:`ACCEPTED_SCHEMA`: the fields a record's other fields follow from
    (``pipeline.ingest.LITE_FIELDS``: header, accession, sequence, SHA-256 ...; fragments F1..Fn of
    a long sequence are rows of their own) plus ``file_no`` (position of the file in the input
    list), ``whole_sha256`` (a fragment's whole sequence), ``oom_split`` (a fragment made because
    the whole sequence ran out of memory in an earlier run, :func:`pipeline.oom_route.resume_fragmented`)
    and where the record's chunk lies in the file (for :func:`pipeline.scan.reread`).
``rejected/*.parquet``  :data:`REJECTED_SCHEMA`: RejectedRecord's fields plus ``file_no`` and the
    atlas ``reject_key``.
``replaced.parquet``, ``accepted/oom-resumed.parquet``  records an earlier run split into fragments
    after they ran out of memory whole, and those fragments (:func:`pipeline.oom_route.resume_fragmented`):
    :meth:`IngestSpill.accepted_sql` leaves the records out, the fragments are accepted rows.
``dups.parquet``  the duplicate accessions: every accepted record after the first with its
    accession (first valid occurrence wins, across all files in input order), with the note that a
    kept duplicate carries. Under ``duplicate_accessions = "reject"`` they are turned into
    ``duplicate_accession`` rows of ``rejected/`` (their raw lines read back from the input) and
    :meth:`IngestSpill.accepted_sql` leaves them out; under ``"keep"`` it appends the note.

The duplicate check is DuckDB SQL over ``accepted/`` (a ``GROUP BY accession`` that spills to disk,
instead of a dict of every accession). Plain files of at least ``split_bytes`` are cut into byte
ranges at record starts and scanned by ``workers`` processes; a first pass counts the line ends
and records before each range (``bytes.count``, a few GB/s), so record indices, line numbers and the
line numbers in reject details are those of a sequential read. gzip files are one range.

Counts: ``read == accepted + rejected`` (records; a fragmented record counts once) is checked.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.ingest import (
    FRAGMENT_FIELDS,
    LITE_FIELDS,
    AcceptedRecord,
    IngestPolicy,
    RejectedRecord,
    duplicate_detail,
    duplicate_note,
    fragment_record,
    lite_from_record,
    record_from_lite,
)
from pipeline.scan import BLOCK, CleanRecords, fast_path_ok, line_ends, record_starts, reread, scan_blocks

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
SPLIT_BYTES = 64 << 20  # plain files at least this big are scanned in byte ranges
RANGE_BYTES = 256 << 20  # target size of one range

_S, _I = pa.string(), pa.int64()
#: ``pipeline.ingest.LITE_FIELDS`` in order, then the spill's own columns.
ACCEPTED_SCHEMA = pa.schema([
    pa.field("source", pa.dictionary(pa.int32(), _S)), pa.field("record_index", _I), pa.field("line", _I),
    pa.field("header", _S), pa.field("accession", _S), pa.field("sequence", _S), pa.field("length", _I),
    pa.field("sha256", _S), pa.field("notes", pa.list_(_S)), pa.field("fragment", _I), pa.field("start", _I),
    pa.field("file_no", pa.int32()), pa.field("whole_sha256", _S), pa.field("oom_split", pa.bool_()),
    pa.field("chunk_offset", _I), pa.field("chunk_length", _I), pa.field("chunk_sub", pa.int32())])
#: The columns an AcceptedRecord is rebuilt from (``pipeline.ingest.record_from_lite``).
RECORD_COLUMNS = [*LITE_FIELDS, *FRAGMENT_FIELDS]
#: RejectedRecord's fields in order, then the spill's own columns.
REJECTED_SCHEMA = pa.schema([
    pa.field("source", _S), pa.field("record_index", _I), pa.field("line", _I), pa.field("code", _S),
    pa.field("detail", _S), pa.field("header", _S), pa.field("raw_sequence", pa.large_string()),
    pa.field("accession", _S), pa.field("file_no", pa.int32()), pa.field("reject_key", _S),
])
REJECT_COLUMNS = REJECTED_SCHEMA.names[:8]
#: ``replaced.parquet``: accepted rows replaced by their fragments (pipeline.oom_route.resume_fragmented).
#: Accepted columns worth a Parquet dictionary (not the mostly unique strings: trying one costs time).
_DICTIONARY_COLUMNS = [n for n in ACCEPTED_SCHEMA.names if n not in ("header", "accession", "sequence", "sha256")]
REPLACED_SCHEMA = pa.schema([pa.field("file_no", pa.int32()), pa.field("record_index", _I), pa.field("sha256", _S)])
_DUPS_SCHEMA = pa.schema([pa.field("file_no", pa.int32()), pa.field("record_index", _I), pa.field("note", _S)])


def records_from_table(table: pa.Table | pa.RecordBatch) -> list[AcceptedRecord]:
    """AcceptedRecords from rows with (at least) :data:`RECORD_COLUMNS` (header fields parsed and
    CRC64/MD5 computed here, for these records only)."""
    cols = [table.column(c).to_pylist() for c in RECORD_COLUMNS]
    return [record_from_lite(values) for values in zip(*cols, strict=True)]


def rejects_from_table(table: pa.Table | pa.RecordBatch) -> list[RejectedRecord]:
    cols = [table.column(c).to_pylist() for c in REJECT_COLUMNS]
    return [RejectedRecord(*values) for values in zip(*cols, strict=True)]


def accepted_batch(rows: list[tuple[Any, ...]], source: str) -> pa.RecordBatch:
    """A batch of :data:`ACCEPTED_SCHEMA` from tuples in its column order, all from ``source``."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(ACCEPTED_SCHEMA)
    arrays = [pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(rows), np.int32)), pa.array([source]))]
    arrays += [pa.array(c, type=f.type) for c, f in zip(cols[1:], list(ACCEPTED_SCHEMA)[1:], strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=ACCEPTED_SCHEMA)


def rejected_batch(recs: list[RejectedRecord], file_no: int) -> pa.RecordBatch:
    from pipeline.plan import reject_key

    rows = [(r.source, r.record_index, r.line, r.code, r.detail, r.header, r.raw_sequence, r.accession, file_no,
             reject_key(r)) for r in recs]
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(REJECTED_SCHEMA)
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, REJECTED_SCHEMA, strict=True)],
                                      schema=REJECTED_SCHEMA)


# --------------------------------------------------------------------------------------------
# Byte ranges


@dataclass(frozen=True)
class _Part:
    source: str
    file_no: int
    part_no: int
    start: int = 0
    end: int | None = None  # None: to the end of the file
    index: int = 0  # record index of the first record
    line: int = 1  # line number of the first record's header


def _cut_points(path: str, size: int, n: int) -> list[int]:
    """Up to ``n - 1`` offsets of record starts ('>' after '\\n') near equal fractions of the file."""
    points: list[int] = []
    with open(path, "rb") as fh:
        for k in range(1, n):
            base = max(size * k // n, points[-1] if points else 1) - 1  # offset of buf[0]
            fh.seek(base)
            buf = fh.read(BLOCK)
            while (hit := buf.find(b"\n>")) < 0:
                data = fh.read(BLOCK)
                if not data:
                    return points
                base += len(buf) - 1
                buf = buf[-1:] + data
            cut = base + hit + 1
            if cut < size and (not points or cut > points[-1]):
                points.append(cut)
    return points


def _count(path: str, start: int, end: int) -> tuple[int, int]:
    """(line ends, record starts after a line end) in ``[start, end)`` of a plain file."""
    lines = records = 0
    tail = b""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            data = fh.read(min(BLOCK * 16, left))
            if not data:
                break
            left -= len(data)
            both = tail + data  # patterns are 2 bytes: count those that straddle, not those inside tail
            lines += line_ends(both) - line_ends(tail)
            records += record_starts(both) - record_starts(tail)
            tail = data[-1:]
    return lines, records


def _parts(paths: Sequence[str], workers: int, split_bytes: int, range_bytes: int) -> list[_Part]:
    """One part per file, or byte ranges of a big plain file whose first block reads fast."""
    parts: list[_Part] = []
    for file_no, path in enumerate(paths):
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                head = fh.read(BLOCK)
        except OSError:
            size, head = 0, b""  # the scan raises the proper InputError
        if workers < 2 or size < split_bytes or head[:2] == b"\x1f\x8b" or not fast_path_ok(head):
            parts.append(_Part(path, file_no, 0))
            continue
        cuts = _cut_points(path, size, max(workers, -(-size // range_bytes)))
        bounds = [0, *cuts, size]
        parts += [_Part(path, file_no, k, bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
    return parts


# --------------------------------------------------------------------------------------------
# Scanning one part (in a worker process)


@dataclass
class _PartResult:
    file_no: int
    part_no: int
    read: int = 0
    accepted: int = 0  # records
    fragment_rows: int = 0  # fragment rows of records cut into two or more
    rejected: Counter[str] = field(default_factory=Counter)


def _scan_part(part: _Part, policy_json: str, out_dir: str, batch_rows: int) -> _PartResult:
    policy = IngestPolicy.model_validate_json(policy_json)
    out = Path(out_dir)
    name = f"f{part.file_no:05d}-p{part.part_no:05d}.parquet"
    res = _PartResult(part.file_no, part.part_no)
    acc_writer = pq.ParquetWriter(out / "accepted" / name, ACCEPTED_SCHEMA, compression="zstd", compression_level=1,
                                  use_dictionary=_DICTIONARY_COLUMNS)
    rej_writer = pq.ParquetWriter(out / "rejected" / name, REJECTED_SCHEMA, compression="zstd", compression_level=1)
    pending: list[pa.RecordBatch] = []  # accepted rows, in record order once sorted
    n_pending = 0
    rejects: list[RejectedRecord] = []
    above = policy.fragment_above

    def flush(final: bool) -> None:
        nonlocal pending, n_pending
        table = pa.Table.from_batches(pending, ACCEPTED_SCHEMA)
        order = table.column("record_index").to_numpy()
        if np.any(order[1:] < order[:-1]):  # rows read one by one came after a block's clean rows
            table = table.sort_by([("record_index", "ascending"), ("fragment", "ascending")])
        while table.num_rows >= batch_rows or (final and table.num_rows):
            acc_writer.write_table(table.slice(0, batch_rows), row_group_size=batch_rows)
            table = table.slice(batch_rows)
        pending, n_pending = table.to_batches(), table.num_rows

    try:
        for blk in scan_blocks(part.source, policy, start=part.start, end=part.end, index=part.index, line=part.line):
            if blk.clean is not None:
                res.read += len(blk.clean)
                res.accepted += len(blk.clean)
                pending.append(clean_batch(blk.clean, part.source, part.file_no))
                n_pending += len(blk.clean)
            rows: list[tuple[Any, ...]] = []
            for item, offset, length, sub in blk.others:
                res.read += 1
                if type(item) is tuple or isinstance(item, AcceptedRecord):
                    res.accepted += 1
                    values = item if isinstance(item, tuple) else lite_from_record(item)
                    if above is not None and values[6] > above:
                        whole = values[7]
                        frags = fragment_record(record_from_lite(values), policy)
                        res.fragment_rows += len(frags) if len(frags) > 1 else 0
                        rows += [(*lite_from_record(f), part.file_no, whole, False, offset, length, sub) for f in frags]
                    else:
                        rows.append((*values, part.file_no, None, False, offset, length, sub))
                else:
                    res.rejected[item.code] += 1
                    rejects.append(item)
                    if len(rejects) >= batch_rows:
                        rej_writer.write_batch(rejected_batch(rejects, part.file_no))
                        rejects = []
            if rows:
                pending.append(accepted_batch(rows, part.source))
                n_pending += len(rows)
            if n_pending >= batch_rows:
                flush(False)
        if n_pending:
            flush(True)
        if rejects:
            rej_writer.write_batch(rejected_batch(rejects, part.file_no))
    finally:
        acc_writer.close()
        rej_writer.close()
    return res


def clean_batch(clean: CleanRecords, source: str, file_no: int) -> pa.RecordBatch:
    """A batch of :data:`ACCEPTED_SCHEMA` of a block's clean records (:class:`pipeline.scan.CleanRecords`)."""
    n = len(clean)
    ones = np.ones(n, np.int64)
    return pa.RecordBatch.from_arrays([
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([source])),
        pa.array(clean.record_index), pa.array(clean.line), clean.header, clean.accession, clean.sequence,
        pa.array(clean.length), clean.sha256,
        pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], _S)),
        pa.array(ones), pa.array(ones), pa.array(np.full(n, file_no, np.int32)), pa.nulls(n, _S),
        pa.array(np.zeros(n, np.bool_)), pa.array(clean.chunk_offset), pa.array(clean.chunk_length),
        pa.array(np.zeros(n, np.int32))], schema=ACCEPTED_SCHEMA)


# --------------------------------------------------------------------------------------------
# The whole ingest


@dataclass
class IngestSpill:
    """What :func:`ingest_to_parquet` wrote, and its counts."""

    root: Path
    policy: IngestPolicy
    n_read: int = 0
    accepted: int = 0  # records (a fragmented record counts once)
    fragments: int = 0  # fragment rows of records cut into two or more (summary.fragments)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # records after the first with their accession
    replaced: int = 0  # records replaced by their fragments (replaced.parquet, pipeline.oom_route)
    files: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def accepted_glob(self) -> str:
        return str(self.root / "accepted" / "*.parquet")

    @property
    def rejected_glob(self) -> str:
        return str(self.root / "rejected" / "*.parquet")

    def accepted_sql(self) -> str:
        """A DuckDB relation of the final accepted rows (:data:`ACCEPTED_SCHEMA`)."""
        acc = f"read_parquet('{_sql_path(self.accepted_glob)}')"
        if self.replaced:
            acc = (f"(SELECT a.* FROM {acc} a ANTI JOIN read_parquet('{_sql_path(self.root / 'replaced.parquet')}') r "
                   "USING (file_no, record_index, sha256))")
        if not self.duplicates:
            return acc
        dups = f"read_parquet('{_sql_path(self.root / 'dups.parquet')}')"
        if self.policy.duplicate_accessions == "reject":
            return f"(SELECT a.* FROM {acc} a ANTI JOIN {dups} d USING (file_no, record_index))"
        return (f"(SELECT a.* REPLACE (CASE WHEN d.note IS NULL THEN a.notes ELSE list_append(a.notes, d.note) END "
                f"AS notes) FROM {acc} a LEFT JOIN {dups} d USING (file_no, record_index))")

    def rejected_sql(self) -> str:
        return f"read_parquet('{_sql_path(self.rejected_glob)}')"


def _sql_path(p: str | Path) -> str:
    return str(p).replace("'", "''")


def duckdb_connect(scratch: Path, memory_limit: str, threads: int | None = None, con: Any = None) -> Any:
    """A DuckDB connection (``con`` or a new one) that spills to ``scratch/duckdb-tmp``."""
    import duckdb

    if con is None:
        con = duckdb.connect()
    tmp = scratch / "duckdb-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{_sql_path(tmp)}'")
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def ingest_to_parquet(paths: Sequence[str | os.PathLike[str]], policy: IngestPolicy, out_dir: str | Path, *,
                      workers: int | None = None, batch_rows: int = BATCH_ROWS, memory_limit: str = "1GB",
                      split_bytes: int = SPLIT_BYTES, range_bytes: int = RANGE_BYTES) -> IngestSpill:
    """Scan ``paths`` into Parquet under ``out_dir`` (created, emptied first); returns the counts."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    for sub in ("accepted", "rejected"):
        (out / sub).mkdir(parents=True)
    sources = [os.fspath(p) for p in paths]
    workers = workers or min(2, os.cpu_count() or 1)
    parts = _parts(sources, workers, split_bytes, range_bytes)
    spill = IngestSpill(out, policy, files=sources)
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 and len(parts) > 1 else None
    try:
        parts = _with_bases(parts, pool)
        policy_json = policy.model_dump_json()
        if pool is None:
            results = [_scan_part(p, policy_json, str(out), batch_rows) for p in parts]
        else:
            futures = [pool.submit(_scan_part, p, policy_json, str(out), batch_rows) for p in parts]
            results = [f.result() for f in futures]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    rejected: Counter[str] = Counter()
    per_file: Counter[int] = Counter()
    for r in results:
        spill.n_read += r.read
        spill.accepted += r.accepted
        spill.fragments += r.fragment_rows
        rejected.update(r.rejected)
        per_file[r.file_no] += r.read
    for file_no, source in enumerate(sources):
        log.info("%s: read %d records", source, per_file[file_no])
    spill.rejected_by_reason = dict(rejected)
    _duplicates(spill, batch_rows, memory_limit)
    if spill.accepted + spill.rejected != spill.n_read:
        raise AssertionError(f"ingest lost records: accepted {spill.accepted} + rejected {spill.rejected} "
                             f"!= read {spill.n_read}")
    log.info("ingest: read %d records, accepted %d, rejected %d %s", spill.n_read, spill.accepted, spill.rejected,
             spill.rejected_by_reason)
    return spill


def _with_bases(parts: list[_Part], pool: ProcessPoolExecutor | None) -> list[_Part]:
    """Parts with the record index and line number of their first record: the line ends and record
    starts of every range followed by another range of the same file are counted first."""
    todo = [p for p, q in itertools.pairwise(parts) if q.file_no == p.file_no]
    if not todo:
        return parts
    args = ([p.source for p in todo], [p.start for p in todo], [p.end or 0 for p in todo])  # ranges have an end
    counts = list(pool.map(_count, *args)) if pool is not None else list(map(_count, *args))
    by_key = {(p.file_no, p.part_no): c for p, c in zip(todo, counts, strict=True)}
    out: list[_Part] = []
    index = line = 0
    for p in parts:
        if p.part_no == 0:
            index, line = 0, 1
        out.append(_Part(p.source, p.file_no, p.part_no, p.start, p.end, index, line))
        if (p.file_no, p.part_no) in by_key:
            n_lines, n_starts = by_key[(p.file_no, p.part_no)]
            index += n_starts + 1  # the range's first record, then one per record start after a line end
            line += n_lines
    return out


def _duplicates(spill: IngestSpill, batch_rows: int, memory_limit: str) -> None:
    """Find duplicate accessions with SQL; under "reject" turn them into reject rows."""
    con = duckdb_connect(spill.root, memory_limit)
    try:
        acc = f"read_parquet('{_sql_path(spill.accepted_glob)}')"
        con.execute(f"CREATE TEMP TABLE dup_acc AS SELECT accession FROM {acc} WHERE fragment = 1 "
                    "GROUP BY accession HAVING count(*) > 1")
        if not con.execute("SELECT count(*) FROM dup_acc").fetchall()[0][0]:
            return
        reader = con.sql(f"""
            SELECT * FROM (
                SELECT a.file_no, a.source, a.record_index, a.line, a.accession, a.chunk_offset, a.chunk_length,
                       a.chunk_sub, coalesce(a.whole_sha256, a.sha256) AS sha,
                       row_number() OVER w AS rn, first_value(a.source) OVER w AS first_source,
                       first_value(a.record_index) OVER w AS first_index, first_value(a.line) OVER w AS first_line,
                       first_value(coalesce(a.whole_sha256, a.sha256)) OVER w AS first_sha
                FROM {acc} a WHERE a.fragment = 1 AND a.accession IN (SELECT accession FROM dup_acc)
                WINDOW w AS (PARTITION BY a.accession ORDER BY a.file_no, a.record_index))
            WHERE rn > 1 ORDER BY file_no, record_index""").to_arrow_reader(batch_rows)
        writer = pq.ParquetWriter(spill.root / "dups.parquet", _DUPS_SCHEMA)
        rej_writer = None
        try:
            for batch in reader:
                rows = batch.to_pylist()
                notes = []
                for r in rows:
                    where = f"record {r['first_index']} (line {r['first_line']}) of {r['first_source']}"
                    same = "identical" if r["first_sha"] == r["sha"] else "different"
                    r["where"], r["same"] = where, same
                    notes.append(duplicate_note(where, same))
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [pa.array([r["file_no"] for r in rows], pa.int32()), pa.array([r["record_index"] for r in rows], _I),
                     pa.array(notes, _S)], schema=_DUPS_SCHEMA))
                spill.duplicates += len(rows)
                if spill.policy.duplicate_accessions != "reject":
                    continue
                if rej_writer is None:
                    rej_writer = pq.ParquetWriter(spill.root / "rejected" / "duplicates.parquet", REJECTED_SCHEMA)
                for file_no, recs in _by_file(rows):
                    raws = reread(recs[0]["source"], [(r["record_index"], r["chunk_offset"], r["chunk_length"],
                                                       r["chunk_sub"]) for r in recs])
                    rejects = [RejectedRecord(r["source"], r["record_index"], r["line"], "duplicate_accession",
                                              duplicate_detail(r["accession"], r["where"], r["same"]),
                                              raws[r["record_index"]].header, raws[r["record_index"]].raw_sequence(),
                                              r["accession"]) for r in recs]
                    rej_writer.write_batch(rejected_batch(rejects, file_no))
        finally:
            writer.close()
            if rej_writer is not None:
                rej_writer.close()
    except OSError as e:
        raise InputError(f"cannot read back an input file for its duplicate accessions: {e}",
                         hint="the inputs must not change while a run reads them") from e
    finally:
        con.close()
    if spill.policy.duplicate_accessions == "reject":
        spill.accepted -= spill.duplicates
        spill.rejected_by_reason["duplicate_accession"] = (
            spill.rejected_by_reason.get("duplicate_accession", 0) + spill.duplicates)
        # fragments of rejected duplicates are not fragments of the run
        con = duckdb_connect(spill.root, memory_limit)
        try:
            (lost,) = con.execute(
                f"SELECT count(*) FROM read_parquet('{_sql_path(spill.accepted_glob)}') a SEMI JOIN "
                f"read_parquet('{_sql_path(spill.root / 'dups.parquet')}') d USING (file_no, record_index) "
                "WHERE a.whole_sha256 IS NOT NULL").fetchall()[0]
        finally:
            con.close()
        spill.fragments -= int(lost)


def _by_file(rows: list[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["file_no"], []).append(r)
    yield from sorted(groups.items())
