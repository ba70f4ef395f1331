"""Fast FASTA scanning: big byte blocks, a fast path for clean records, the careful reader for the rest.

:func:`scan` yields every record of a file (or of a byte range of a plain file) checked by the
same gate as :mod:`pipeline.ingest`, with the same results, at about 10x the speed of the line
reader: the file is read in 1 MiB blocks and cut into records with ``bytes.split(b"\\n>")``. A
*clean* record (ASCII header with an accession, sequence lines of the 20 standard upper-case
letters and whitespace only, length within the policy's bounds, no lone CR) is accepted on the fast
path: whitespace removed with ``bytes.translate``, the accession and SHA-256, a tuple instead of an
object; the other header fields, CRC64 and MD5 are computed later for the records that need them
(to be predicted or linked; half of a rerun's records need nothing). Every other record (a
reject, lower case, a terminal ``*``, a non-standard letter, a lone CR) goes through
:func:`pipeline.ingest._check` on the record's own lines, exactly as the line reader would read
them, so details, notes and line numbers are identical.

Files that do not start with ``>`` (text before the first header, a byte-order mark, blank lines)
or whose first block uses lone CR line ends (classic Mac) are read whole by the line reader.

Each record comes with where its *chunk* lies in the (decompressed) stream: the bytes from after
its ``>`` to before the line end preceding the next record. :func:`reread` reads chunks back (the
duplicate-accession step needs a record's raw lines, which the fast path does not keep).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from pipeline.errors import InputError
from pipeline.ingest import (
    IngestPolicy,
    _check,
    _open_binary,
    _raw_records,
    _RawRecord,
    header_accession,
)

BLOCK = 1 << 20  # bytes per read; gzip reads return what one decompression step yields
_SEP = b"\n>"
_WHITESPACE = b" \t\n\r\x0b\x0c"  # bytes.split() whitespace; str.split() also has \x1c-\x1f (slow path)
_STANDARD = b"ACDEFGHIKLMNPQRSTVWY"
_LINE_END = re.compile(r"\r\n|\r|\n")  # universal newlines, as io.TextIOWrapper(newline=None) reads

#: What :func:`scan` yields: ``(record, chunk offset, chunk length, position in chunk)``. ``record``
#: is a :data:`pipeline.ingest.LiteRecord` tuple (fast path: accession, sequence and SHA-256 only;
#: :func:`pipeline.ingest.record_from_lite` adds the rest), an AcceptedRecord or a RejectedRecord.
#: Offset and length are -1 for files read by the line reader.
Scanned = tuple[Any, int, int, int]


def fast_path_ok(head: bytes) -> bool:
    """Whether a file whose first bytes are ``head`` can be scanned in blocks (else: line reader)."""
    return head.startswith(b">") and head.count(b"\r") == head.count(b"\r\n") and b"\x00" not in head[:4096]


def line_ends(data: bytes) -> int:
    """Line ends in ``data`` as universal newlines count them (CRLF is one)."""
    n = data.count(b"\n")
    if b"\r" in data:
        n += data.count(b"\r") - data.count(b"\r\n")
    return n


def record_starts(data: bytes) -> int:
    """Record headers in ``data`` that follow a line end inside it."""
    n = data.count(_SEP)
    if b"\r" in data:
        n += data.count(b"\r>")
    return n


def _slow_records(chunk: bytes, index: int, line: int) -> list[_RawRecord]:
    """The records of one chunk as the line reader groups them (a lone CR can start a second one)."""
    out: list[_RawRecord] = []
    for k, text in enumerate(_LINE_END.split(">" + chunk.decode("utf-8", "replace"))):
        if text.startswith(">"):
            out.append(_RawRecord(index + len(out), line + k, text[1:].rstrip()))
        else:
            out[-1].seq_lines.append((line + k, text))
    return out


def _read_error(source: str, gz: bool, line: int, e: Exception) -> InputError:
    if gz:
        where = "gzip header" if line <= 1 else f"gzip stream after line {line - 1}"
        return InputError(f"cannot read {source!r}: {where} is corrupt or truncated ({e})",
                          hint="re-download the file or recompress it with gzip, then run again")
    return InputError(f"cannot read {source!r} after line {line - 1}: {e}",
                      hint="check that the file is readable and complete, then run again")


def scan(source: str, policy: IngestPolicy, *, start: int = 0, end: int | None = None, index: int = 0,
         line: int = 1) -> Iterator[Scanned]:
    """Yield the records of ``source`` in file order, each checked (no duplicate-accession check).

    ``start``/``end``: a byte range of a plain file that starts at a record's ``>`` (after a line end)
    and ends after a line end (or at the end of the file); ``index`` and ``line`` are the record
    index and line number of its first record (:func:`pipeline.spill` counts them).
    """
    with contextlib.ExitStack() as stack:
        fh = _open_binary(source, stack)
        gz = isinstance(fh, gzip.GzipFile)
        if start:
            fh.seek(start)
        remaining = [end - start if end is not None else -1]
        pos = start  # stream offset of the next chunk
        line_now = [line]

        def read() -> bytes:
            try:
                if remaining[0] == -1:
                    return fh.read1(BLOCK) if gz else fh.read(BLOCK)
                data = fh.read(min(BLOCK, remaining[0]))
                remaining[0] -= len(data)
                return data
            except (OSError, EOFError, zlib.error) as e:
                raise _read_error(source, gz, line_now[0], e) from e

        first = read()
        if start == 0 and not fast_path_ok(first):
            if b"\x00" in first[:4096]:
                raise InputError(f"input file {source!r} is binary data, not FASTA",
                                 hint="pass a FASTA file (plain text or gzip)")
            stack.close()
            for raw in _raw_records(source):
                yield _check(raw, source, policy), -1, -1, 0
            return
        carry: bytes | None = first[1:]  # without the first record's '>'
        pos += 1
        lo, hi = policy.min_length, policy.max_length
        while carry is not None:
            block = read()
            if block and _SEP not in block and not (block[:1] == b">" and carry.endswith(b"\n")):
                parts = [carry, block]  # a record longer than a block: collect without re-splitting
                while (block := read()) and _SEP not in block and not (block[:1] == b">" and parts[-1].endswith(b"\n")):
                    parts.append(block)
                carry = b"".join(parts)
            if block:
                pieces = (carry + block).split(_SEP)
                carry = pieces.pop()
            else:
                pieces, carry = [carry], None
            last = len(pieces) - 1
            for k, piece in enumerate(pieces):
                chunk = piece
                if carry is None and k == last:  # the end of the file or range: one line end off
                    if chunk.endswith(b"\n"):
                        chunk = chunk[:-1]
                    if chunk.endswith(b"\r"):
                        chunk = chunk[:-1]
                elif chunk.endswith(b"\r"):  # CRLF before the next '>': the CR belongs to the line end
                    chunk = chunk[:-1]
                n_ends = chunk.count(b"\n")
                lone_cr = False
                if b"\r" in chunk:
                    cr, crlf = chunk.count(b"\r"), chunk.count(b"\r\n")
                    n_ends += cr - crlf
                    lone_cr = cr != crlf
                rec: Any = None
                if not lone_cr:
                    nl = chunk.find(b"\n")
                    if nl > 0:
                        seq = chunk[nl + 1 :].translate(None, _WHITESPACE)
                        n = len(seq)
                        if lo <= n <= hi and not seq.translate(None, _STANDARD):
                            header = chunk[:nl].decode("utf-8", "replace").rstrip()
                            accession = header_accession(header)
                            if accession is not None:
                                rec = (source, index, line_now[0], header, accession, seq.decode("ascii"), n,
                                       hashlib.sha256(seq).hexdigest(), (), 1, 1)
                if rec is not None:
                    yield rec, pos, len(chunk), 0
                    index += 1
                else:
                    for sub, raw in enumerate(_slow_records(chunk, index, line_now[0])):
                        yield _check(raw, source, policy), pos, len(chunk), sub
                        index += 1
                line_now[0] += n_ends + 1
                pos += len(piece) + 2


def reread(source: str, wanted: Iterable[tuple[int, int, int, int]]) -> dict[int, _RawRecord]:
    """Raw records by record index; ``wanted``: ``(record index, chunk offset, length, position in
    chunk)`` as :func:`scan` yielded them. Offsets of -1 (line-read files) re-read the whole file."""
    want = sorted(wanted, key=lambda w: (w[1], w[0]))
    out: dict[int, _RawRecord] = {}
    if not want:
        return out
    if any(w[1] < 0 for w in want):
        indices = {w[0] for w in want}
        for raw in _raw_records(source):
            if raw.index in indices:
                out[raw.index] = raw
        return out
    with contextlib.ExitStack() as stack:
        fh: BinaryIO = _open_binary(source, stack)  # type: ignore[assignment]
        for index, offset, length, sub in want:
            fh.seek(offset)
            raw = _slow_records(fh.read(length), 0, 0)[sub]
            out[index] = raw
    return out
