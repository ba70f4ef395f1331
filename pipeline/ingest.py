"""Ingest: read FASTA, parse headers, validate and hash every record.

Each input record ends in exactly one state: an :class:`AcceptedRecord` (normalised sequence,
AlphaFold DB metadata fields parsed from the header, content hashes) or a
:class:`RejectedRecord` (a stable reason code from :data:`REJECT_REASONS`, a human detail and the
record exactly as read). Nothing is dropped silently: text before the first ``>`` is a
``malformed_record`` row, and ``accepted + rejected == read`` always holds (:func:`ingest`
checks it).

Reading. FASTA, plain or gzip (BGZF too), detected by the magic bytes, never by the extension
alone; other compressions (bzip2, xz, zstd, zip) and Parquet are refused with a hint. Wrapped or
single-line sequences, LF / CRLF / CR line endings, blank lines, whitespace inside and around
sequence lines (removed), lower-case residues (upper-cased, with a note). Text is decoded as
UTF-8 with undecodable bytes replaced by U+FFFD (which then fails ``invalid_character`` in a
sequence). Reading streams, in 1 MiB blocks (:mod:`pipeline.scan`): clean records (the common
case) take a fast path of a few byte operations and the hashes; every other record is read line by
line as described here, with identical results. Runs do not keep records in lists:
:func:`pipeline.spill.ingest_to_parquet` writes them to Parquet and finds duplicate accessions in
SQL; :func:`ingest_many` below (lists) is for tests and small tools. The UniProt CRC64 comes from
anycrc's C implementation (Biopython's is pure Python, about 1 MB/s).

Why a small record reader and not Biopython's ``SimpleFastaParser``: the parser does not report
line numbers, ignores (or, depending on the version, warns about and drops) text before the first
``>``, and cannot hand back the raw lines of a bad record. The rejects table needs all three, so
:func:`_raw_records` groups lines itself (about 60 lines).

Checks, in this order (the first failure is the reason): header without an accession
(``malformed_header``), text before the first header (``malformed_record``), empty sequence,
characters other than letters and ``*`` (``invalid_character``), ``*`` before the end
(``internal_stop``), a final ``*`` when the policy rejects it (``terminal_stop``), non-standard
letters X/B/Z/U/O/J per letter policy (``nonstandard_residue``), length bounds, and last the
duplicate accession: the first occurrence that passes every other check claims an accession;
later records with it are rejected (or kept with a note under ``duplicate_accessions="keep"``).
Positions in details and notes are 1-based positions in the sequence with whitespace removed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import operator
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from anycrc import CRC
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

REJECT_REASONS: dict[str, str] = {
    "empty_sequence": "The record has a header but no residues (or only a terminal '*').",
    "malformed_record": "Text that belongs to no record: lines before the first '>' header.",
    "malformed_header": "A header line with no accession token ('>' followed by nothing).",
    "invalid_character": "A character that is not a letter or '*': digits, punctuation, gaps '-' or '.'.",
    "internal_stop": "A stop '*' before the end of the sequence.",
    "terminal_stop": "A final stop '*' and the policy says terminal_stop = 'reject'.",
    "nonstandard_residue": "A letter X, B, Z, U, O or J whose policy is 'reject' (or X under 'map').",
    "too_short": "Fewer residues than the policy's min_length.",
    "too_long": "More residues than the policy's max_length.",
    "duplicate_accession": "An accession already accepted earlier in this input (first occurrence wins).",
}

STANDARD_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY")
NONSTANDARD_RESIDUES = ("X", "B", "Z", "U", "O", "J")
#: Replacements under the "map" policy (AlphaFold/ESM conventions). X has none.
NONSTANDARD_MAP: dict[str, str] = {"U": "C", "O": "K", "B": "D", "Z": "E", "J": "L"}

ResiduePolicy = Literal["reject", "map", "allow"]

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"PAR1", "Parquet"),
)
_PREAMBLE_KEEP_CHARS = 1 << 20  # keep at most 1 MiB of stray text before the first '>'
_NOTE_POSITIONS = 5  # list at most this many positions in one note
_INVALID_RE = re.compile(r"[^A-Za-z*]")
_NONSTANDARD_RE = re.compile(r"[XBZUOJ]")
_HEADER_KEY_RE = re.compile(r"(?:^|\s)(OS|OX|GN|PE|SV)=")  # what _tail_keys finds (tests compare)
_HEADER_KEYS = frozenset(("OS", "OX", "GN", "PE", "SV"))
# UniProt's layout from OS on: "OS=org OX=taxid[ GN=gene][ PE=n][ SV=n]" (any '=' in org: the slow way)
_CANONICAL_TAIL = re.compile(r"OS=([^=]+) OX=([0-9]+)(?: GN=([^\s=]+))?(?: PE=([0-9]+))?(?: SV=([0-9]+))?")


# --------------------------------------------------------------------------------------------
# Policy


class NonstandardPolicy(BaseModel):
    """What to do with each non-standard letter: ``reject``, ``map`` (U->C, O->K, B->D, Z->E,
    J->L; X cannot be mapped and is rejected) or ``allow`` (kept as-is; models read it as
    unknown). AlphaFold DB predicted no sequence with these letters, hence ``reject`` everywhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    X: ResiduePolicy = "reject"
    B: ResiduePolicy = "reject"
    Z: ResiduePolicy = "reject"
    U: ResiduePolicy = "reject"
    O: ResiduePolicy = "reject"  # noqa: E741 - the residue letter is the config key
    J: ResiduePolicy = "reject"

    def for_letter(self, letter: str) -> ResiduePolicy:
        value: ResiduePolicy = getattr(self, letter)
        return value


class IngestPolicy(BaseModel):
    """The validation gate, with AlphaFold DB's defaults.

    ``nonstandard`` also accepts one string for all six letters, e.g. ``nonstandard = "allow"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_length: int = Field(default=16, ge=1, description="Shortest accepted sequence (residues)")
    max_length: int = Field(default=2700, ge=1, description="Longest accepted sequence (residues)")
    nonstandard: NonstandardPolicy = Field(default_factory=NonstandardPolicy)
    terminal_stop: Literal["strip", "reject"] = "strip"
    duplicate_accessions: Literal["reject", "keep"] = "reject"
    fragment_above: int | None = Field(
        default=None, ge=1, description="Sequences longer than this are modelled as overlapping fragments "
                                        "F1..Fn, as AlphaFold DB does for proteins over 2,700 residues (None: off)")
    fragment_window: int = Field(default=1400, ge=16, description="Fragment length (AFDB: 1,400)")
    fragment_step: int = Field(default=200, ge=1, description="Offset between fragment starts (AFDB: 200)")

    @field_validator("nonstandard", mode="before")
    @classmethod
    def _expand_single_policy(cls, value: Any) -> Any:
        if isinstance(value, str):
            return dict.fromkeys(NONSTANDARD_RESIDUES, value)
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> IngestPolicy:
        if self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} > max_length {self.max_length}")
        if self.fragment_above is not None:
            if self.fragment_window > self.fragment_above:
                raise ValueError(f"fragment_window {self.fragment_window} > fragment_above {self.fragment_above}")
            if self.fragment_step > self.fragment_window:
                raise ValueError(f"fragment_step {self.fragment_step} > fragment_window {self.fragment_window}: "
                                 "fragments would leave gaps")
        return self


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class HeaderFields:
    """What a header says. UniProt-only fields are ``None`` for other headers."""

    accession: str | None
    uniprot_id: str | None = None
    description: str = ""
    organism: str | None = None
    tax_id: int | None = None
    gene: str | None = None
    is_reviewed: bool | None = None
    protein_existence: int | None = None
    sequence_version: int | None = None


@dataclass(frozen=True, slots=True)
class AcceptedRecord:
    """A record that passed the gate. ``sequence`` is normalised (upper case, no whitespace, no
    terminal ``*``, mapped letters replaced); the hashes are over its ASCII bytes."""

    source: str  # the path as given to the reader
    record_index: int  # 0-based position among the file's records (stray leading text counts)
    line: int  # 1-based line number of the header
    header: str  # header line without '>' and without trailing whitespace
    accession: str
    uniprot_id: str | None
    description: str
    organism: str | None
    tax_id: int | None
    gene: str | None
    is_reviewed: bool | None
    protein_existence: int | None
    sequence_version: int | None
    sequence: str
    length: int
    sha256: str
    crc64: str
    md5: str
    notes: tuple[str, ...] = ()
    fragment: int = 1  # 1 for a whole sequence; k for fragment Fk of a long one
    start: int = 1  # first residue of ``sequence`` in the input sequence (1-based)
    whole_sha256: str | None = None  # for a fragment: SHA-256 of the whole input sequence
    oom_split: bool = False  # a fragment made because the whole sequence ran out of memory (oom_route)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the generic pickling of a slots dataclass calls dataclasses.fields() per object: 5x slower
        return AcceptedRecord, _ACCEPTED_VALUES(self)

    def afdb_metadata(self) -> dict[str, Any]:
        """The AlphaFold DB ``metadata`` columns that the input alone determines."""
        return {
            "uniprotAccession": self.accession if self.is_reviewed is not None else None,
            "uniprotId": self.uniprot_id,
            "uniprotDescription": self.description or None,
            "organismScientificName": self.organism,
            "taxId": self.tax_id,
            "gene": self.gene,
            "isReviewed": self.is_reviewed,
            "sequenceChecksum": self.crc64,
            "uniprotSequence": self.sequence,
            "uniprotStart": self.start,
            "uniprotEnd": self.start + self.length - 1,
        }


_ACCEPTED_VALUES = operator.attrgetter(*AcceptedRecord.__dataclass_fields__)

#: The fields a scan keeps of an accepted record (``LiteRecord``); the rest follows from them.
LITE_FIELDS = ("source", "record_index", "line", "header", "accession", "sequence", "length", "sha256", "notes",
               "fragment", "start")
LiteRecord = tuple[str, int, int, str, str, str, int, str, tuple[str, ...], int, int]


#: The fragment fields a record carries beyond ``LITE_FIELDS`` when it is spilled to Parquet
#: (``pipeline.spill.RECORD_COLUMNS``): a ``LiteRecord`` may be followed by these two values.
FRAGMENT_FIELDS = ("whole_sha256", "oom_split")


def record_from_lite(lite: LiteRecord | tuple[Any, ...]) -> AcceptedRecord:
    """The AcceptedRecord of a ``LiteRecord`` (optionally followed by the :data:`FRAGMENT_FIELDS`):
    header fields parsed, CRC64 and MD5 computed (what the scanner's fast path and the Parquet spill
    leave out, for the records that need them)."""
    source, index, line, header, accession, seq, length, sha256, notes, fragment, start = lite[:11]
    extra: tuple[Any, ...] = tuple(lite[11:])
    whole, oom_split = (extra[0], bool(extra[1])) if extra else (None, False)
    f = header_fields(header)
    data = seq.encode("ascii")
    return AcceptedRecord(source, index, line, header, accession, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8],
                          seq, length, sha256, crc64_hex(data), hashlib.md5(data).hexdigest(), tuple(notes or ()),
                          fragment, start, whole, oom_split)


class LiteRef(tuple):
    """A LiteRecord that stands in for its AcceptedRecord where only the sequence and its hash are
    read (cutting units), and pickles as the AcceptedRecord :func:`record_from_lite` makes of it."""

    __slots__ = ()

    @property
    def sequence(self) -> str:
        return str(self[5])

    @property
    def sha256(self) -> str:
        return str(self[7])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return record_from_lite, (tuple(self),)


def lite_from_record(rec: AcceptedRecord) -> LiteRecord:
    return (rec.source, rec.record_index, rec.line, rec.header, rec.accession, rec.sequence, rec.length, rec.sha256,
            rec.notes, rec.fragment, rec.start)


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record that failed the gate, kept whole so that nothing is lost."""

    source: str
    record_index: int
    line: int  # header line; for stray text before the first '>', its first non-blank line
    code: str  # a key of REJECT_REASONS
    detail: str
    header: str | None  # None for stray text before the first '>'
    raw_sequence: str  # the sequence lines as read, line ends removed, joined with '\n'
    accession: str | None


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: list[AcceptedRecord]
    rejected: list[RejectedRecord]
    n_read: int

    def reject_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejected:
            counts[r.code] = counts.get(r.code, 0) + 1
        return counts


#: UniProt's CRC64 (SWISS-PROT CRC-64: polynomial x^64 + x^4 + x^3 + x + 1, reflected, no initial or
#: final XOR), the AFDB ``sequenceChecksum``; the same value as Biopython's ``crc64`` (tests compare),
#: computed by anycrc's C code (Biopython's is pure Python: about 1 MB/s).
_CRC64 = CRC(width=64, poly=0x1B, init=0, refin=True, refout=True, xorout=0)


def crc64_hex(data: bytes) -> str:
    """UniProt CRC64 of ``data`` as 16 upper-case hex digits."""
    return f"{_CRC64.calc(data):016X}"


def sequence_hashes(seq: str) -> tuple[str, str, str]:
    """``(sha256 hex, UniProt CRC64 as 16 upper-case hex digits, md5 hex)`` of ``seq`` (ASCII)."""
    data = seq.encode("ascii")
    return hashlib.sha256(data).hexdigest(), crc64_hex(data), hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Headers


def parse_header(header: str) -> HeaderFields:
    """Parse a header line (with or without the leading ``>``).

    UniProt ``sp|ACC|NAME desc OS=.. OX=.. GN=.. PE=.. SV=..``: the key=value pairs are read from
    the right, so OS values with spaces and parentheses work in any key order; a pair whose value
    does not fit its key (OX/PE/SV not an integer, GN with spaces) or a repeated key ends the
    tail, and what is left of it belongs to the description. Other headers: the first whitespace
    token is the accession, the rest the description.
    """
    return HeaderFields(*header_fields(header))


HeaderTuple = tuple[str | None, str | None, str, str | None, int | None, str | None, bool | None, int | None,
                    int | None]


def header_accession(header: str) -> str | None:
    """The accession alone, as :func:`header_fields` reads it (the scanner's fast path)."""
    title = header[1:] if header.startswith(">") else header
    parts = title.split(None, 1)
    if not parts:
        return None
    ids = parts[0].split("|")
    return ids[1] if len(ids) == 3 and ids[0] in ("sp", "tr") and ids[1] else parts[0]


def header_fields(header: str) -> HeaderTuple:
    """:func:`parse_header`'s fields as a tuple, in :class:`HeaderFields` order."""
    title = header[1:] if header.startswith(">") else header
    parts = title.split(None, 1)
    if not parts:
        return (None, None, "", None, None, None, None, None, None)
    token, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    ids = token.split("|")
    if len(ids) != 3 or ids[0] not in ("sp", "tr") or not ids[1]:
        return (token, None, rest.strip(), None, None, None, None, None, None)
    i = rest.rfind("OS=")
    m = _CANONICAL_TAIL.fullmatch(rest, i) if i == 0 or (i > 0 and rest[i - 1] == " ") else None
    if m is not None:
        # UniProt's own layout, single spaces, no '=' left of OS: what the right-to-left reading
        # below gives, without its loop (a fifth of ingest time)
        desc, organism = rest[: max(i - 1, 0)], m.group(1).strip()
        if organism and "=" not in desc:
            pe, sv = m.group(4), m.group(5)
            return (ids[1], ids[2] or None, desc.strip(), organism, int(m.group(2)), m.group(3), ids[0] == "sp",
                    int(pe) if pe is not None else None, int(sv) if sv is not None else None)
    values: dict[str, str] = {}
    end = len(rest)
    for key, start, value_start in _tail_keys(rest):
        value = rest[value_start:end].strip()
        if key in values or not _header_value_ok(key, value):
            break
        values[key] = value
        end = start
    return (
        ids[1],
        ids[2] or None,
        rest[:end].strip(),
        values.get("OS"),
        int(values["OX"]) if "OX" in values else None,
        values.get("GN"),
        ids[0] == "sp",
        int(values["PE"]) if "PE" in values else None,
        int(values["SV"]) if "SV" in values else None,
    )


def _tail_keys(rest: str) -> Iterator[tuple[str, int, int]]:
    """``(key, match start, value start)`` of each ``(?:^|\\s)(OS|OX|GN|PE|SV)=`` in ``rest``, rightmost
    first. Such matches cannot overlap, so this finds what ``_HEADER_KEY_RE.finditer`` finds, by
    ``str.rfind`` on the few '=' signs (a regex scan of every header was a fifth of ingest time)."""
    i = len(rest)
    while (i := rest.rfind("=", 0, i)) >= 2:
        if rest[i - 2 : i] in _HEADER_KEYS:
            if i == 2:
                yield rest[:2], 0, 3
            elif rest[i - 3].isspace():
                yield rest[i - 2 : i], i - 3, i + 1


def _header_value_ok(key: str, value: str) -> bool:
    if key in ("OX", "PE", "SV"):
        return value.isdecimal()  # = fullmatch of \d+ (Unicode category Nd), which int() reads
    if key == "GN":
        return bool(value) and len(value.split()) == 1
    return bool(value)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(slots=True)
class _RawRecord:
    index: int
    line: int
    header: str | None  # None: stray text before the first '>'
    seq_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, text)

    def raw_sequence(self) -> str:
        return "\n".join(text for _, text in self.seq_lines)


def _open_binary(path: str, stack: contextlib.ExitStack) -> io.BufferedReader | gzip.GzipFile:
    """Open ``path`` for reading bytes, decompressing gzip; registers what it opens on ``stack``."""
    hint = "check the path (and that the run can see the file), then run again"
    try:
        fh = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
    except FileNotFoundError as e:
        raise InputError(f"input file {path!r} does not exist", hint=hint) from e
    except IsADirectoryError as e:
        raise InputError(
            f"input {path!r} is a directory, not a FASTA file", hint="pass the FASTA files themselves"
        ) from e
    except OSError as e:
        raise InputError(f"cannot open input file {path!r}: {e}", hint=hint) from e
    magic = fh.peek(8)[:8]
    if magic.startswith(_GZIP_MAGIC):
        return stack.enter_context(gzip.GzipFile(fileobj=fh, mode="rb"))
    for prefix, kind in _OTHER_MAGIC:
        if magic.startswith(prefix):
            raise InputError(
                f"input file {path!r} is {kind} data, not FASTA",
                hint="FASTA must be plain text or gzip; decompress it or recompress it with gzip",
            )
    if path.endswith((".gz", ".gzip")):
        logger.warning("%s has a gzip extension but is not gzip-compressed; reading it as plain text", path)
    return fh


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line without its line end)``; any read failure becomes InputError."""
    lineno = 0
    with contextlib.ExitStack() as stack:
        binary = _open_binary(path, stack)
        try:
            if b"\x00" in binary.peek(4096)[:4096]:
                raise InputError(
                    f"input file {path!r} is binary data, not FASTA",
                    hint="pass a FASTA file (plain text or gzip)",
                )
            text = stack.enter_context(
                io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline=None)
            )
            for lineno, line in enumerate(text, 1):
                yield lineno, line.rstrip("\n")
        except (OSError, EOFError, zlib.error) as e:
            if isinstance(binary, gzip.GzipFile):
                where = "gzip header" if lineno == 0 else f"gzip stream after line {lineno}"
                raise InputError(
                    f"cannot read {path!r}: {where} is corrupt or truncated ({e})",
                    hint="re-download the file or recompress it with gzip, then run again",
                ) from e
            raise InputError(
                f"cannot read {path!r} after line {lineno}: {e}",
                hint="check that the file is readable and complete, then run again",
            ) from e


def _raw_records(path: str) -> Iterator[_RawRecord]:
    """Group lines into records. Raises InputError if the file holds no header at all."""
    index = 0
    current: _RawRecord | None = None
    preamble: list[tuple[int, str]] = []
    preamble_chars = 0
    preamble_dropped = 0
    for lineno, line in _lines(path):
        if line.startswith(">"):
            if current is None and any(t.strip() for _, t in preamble):
                while not preamble[-1][1].strip():
                    preamble.pop()
                first = next(i for i, (_, t) in enumerate(preamble) if t.strip())
                stray = _RawRecord(index, preamble[first][0], None, preamble[first:])
                if preamble_dropped:
                    stray.seq_lines.append((lineno, f"[... {preamble_dropped} more characters not kept]"))
                yield stray
                index += 1
            elif current is not None:
                yield current
                index += 1
            preamble = []
            current = _RawRecord(index, lineno, line[1:].rstrip())
        elif current is not None:
            current.seq_lines.append((lineno, line))
        elif preamble_chars < _PREAMBLE_KEEP_CHARS:
            preamble.append((lineno, line))
            preamble_chars += len(line) + 1
        else:
            preamble_dropped += len(line) + 1
    if current is None:
        raise InputError(
            f"input file {path!r} contains no FASTA record (no line starts with '>')",
            hint="pass a FASTA file: each record is a '>' header line followed by sequence lines",
        )
    yield current


# --------------------------------------------------------------------------------------------
# Validation


def _line_of(raw: _RawRecord, position: int) -> int:
    """Line number of the 1-based ``position`` in the whitespace-free sequence."""
    seen = 0
    for lineno, text in raw.seq_lines:
        seen += len("".join(text.split()))
        if seen >= position:
            return lineno
    return raw.line


def _positions(positions: list[int]) -> str:
    shown = ", ".join(str(p) for p in positions[:_NOTE_POSITIONS])
    if len(positions) > _NOTE_POSITIONS:
        shown += f", ... ({len(positions)} in all)"
    return shown


def _check(raw: _RawRecord, source: str, policy: IngestPolicy) -> AcceptedRecord | RejectedRecord:
    """Every check except the duplicate accession, which needs state across records."""
    fields = parse_header(raw.header) if raw.header is not None else HeaderFields(accession=None)

    def reject(code: str, detail: str) -> RejectedRecord:
        return RejectedRecord(
            source, raw.index, raw.line, code, detail, raw.header, raw.raw_sequence(), fields.accession
        )

    if raw.header is None:
        n = len(raw.seq_lines)
        return reject("malformed_record", f"{n} line(s) of text before the first '>' header")
    if fields.accession is None:
        return reject("malformed_header", "header line has no accession after '>'")
    compact = "".join("".join(text.split()) for _, text in raw.seq_lines)
    if not compact:
        return reject("empty_sequence", "no sequence lines after the header")
    bad = _INVALID_RE.search(compact)
    if bad is not None:
        pos = bad.start() + 1
        return reject(
            "invalid_character", f"character {bad.group()!r} at position {pos} (line {_line_of(raw, pos)})"
        )
    notes: list[str] = []
    seq = compact.upper()
    if seq != compact:
        notes.append(f"upper-cased {sum(c.islower() for c in compact)} lower-case residues")
    stop = seq.find("*")
    if stop != -1 and stop < len(seq) - 1:
        return reject(
            "internal_stop", f"'*' at position {stop + 1} of {len(seq)} (line {_line_of(raw, stop + 1)})"
        )
    if stop != -1:
        if policy.terminal_stop == "reject":
            return reject("terminal_stop", f"terminal '*' at position {len(seq)} (terminal_stop = 'reject')")
        seq = seq[:-1]
        notes.append("stripped terminal *")
        if not seq:
            return reject("empty_sequence", "sequence is only '*'")

    changed: dict[str, list[int]] = {}
    for m in _NONSTANDARD_RE.finditer(seq):
        letter, pos = m.group(), m.start() + 1
        how = policy.nonstandard.for_letter(letter)
        if how == "reject" or (how == "map" and letter not in NONSTANDARD_MAP):
            why = "X cannot be mapped" if how == "map" else f"policy for {letter} is 'reject'"
            return reject(
                "nonstandard_residue",
                f"letter {letter!r} at position {pos} (line {_line_of(raw, pos)}; {why})",
            )
        changed.setdefault(letter, []).append(pos)
    for letter, positions in changed.items():
        if policy.nonstandard.for_letter(letter) == "map":
            notes.append(f"mapped {letter}->{NONSTANDARD_MAP[letter]} at {_positions(positions)}")
        else:
            notes.append(f"kept {letter} at {_positions(positions)}")
    if any(policy.nonstandard.for_letter(letter) == "map" for letter in changed):
        table = str.maketrans(
            {k: v for k, v in NONSTANDARD_MAP.items() if policy.nonstandard.for_letter(k) == "map"}
        )
        seq = seq.translate(table)

    if len(seq) < policy.min_length:
        return reject("too_short", f"length {len(seq)} < min_length {policy.min_length}")
    if len(seq) > policy.max_length:
        return reject("too_long", f"length {len(seq)} > max_length {policy.max_length}")

    sha256, crc, md5 = sequence_hashes(seq)
    return AcceptedRecord(
        source=source,
        record_index=raw.index,
        line=raw.line,
        header=raw.header,
        accession=fields.accession,
        uniprot_id=fields.uniprot_id,
        description=fields.description,
        organism=fields.organism,
        tax_id=fields.tax_id,
        gene=fields.gene,
        is_reviewed=fields.is_reviewed,
        protein_existence=fields.protein_existence,
        sequence_version=fields.sequence_version,
        sequence=seq,
        length=len(seq),
        sha256=sha256,
        crc64=crc,
        md5=md5,
        notes=tuple(notes),
    )


@dataclass(slots=True)
class _Tally:
    """State shared across the files of one call: first accepted occurrence of each accession."""

    seen: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)  # source, index, line, sha256
    n_read: int = 0


def _iter_file(
    path: str | os.PathLike[str], policy: IngestPolicy, tally: _Tally
) -> Iterator[AcceptedRecord | RejectedRecord]:
    from pipeline.scan import reread, scan

    source = os.fspath(path)
    n_read = n_accepted = 0
    for item, offset, length, sub in scan(source, policy):
        n_read += 1
        tally.n_read += 1
        result = record_from_lite(item) if type(item) is tuple else item
        if isinstance(result, AcceptedRecord):
            first = tally.seen.get(result.accession)
            if first is None:
                tally.seen[result.accession] = (source, result.record_index, result.line, result.sha256)
            else:
                where = f"record {first[1]} (line {first[2]}) of {first[0]}"
                same = "identical" if first[3] == result.sha256 else "different"
                if policy.duplicate_accessions == "reject":
                    raw = reread(source, [(result.record_index, offset, length, sub)])[result.record_index]
                    result = RejectedRecord(
                        source,
                        result.record_index,
                        result.line,
                        "duplicate_accession",
                        duplicate_detail(result.accession, where, same),
                        raw.header,
                        raw.raw_sequence(),
                        result.accession,
                    )
                else:
                    result = replace(result, notes=(*result.notes, duplicate_note(where, same)))
        if isinstance(result, AcceptedRecord):
            n_accepted += 1
        else:
            logger.debug("%s:%d rejected %s: %s", source, result.line, result.code, result.detail)
        yield result
    logger.info(
        "%s: read %d records, accepted %d, rejected %d", source, n_read, n_accepted, n_read - n_accepted
    )


def duplicate_detail(accession: str, where: str, same: str) -> str:
    """The ``duplicate_accession`` reject detail (``where``: "record I (line L) of SOURCE")."""
    return f"accession {accession} already accepted from {where}; {same} sequence"


def duplicate_note(where: str, same: str) -> str:
    """The note on a kept duplicate under ``duplicate_accessions = "keep"``."""
    return f"duplicate accession: also {where}, {same} sequence"


# --------------------------------------------------------------------------------------------
# Public entry points


def iter_records(
    path: str | os.PathLike[str], policy: IngestPolicy | None = None
) -> Iterator[AcceptedRecord | RejectedRecord]:
    """Stream one file's records in file order, each accepted or rejected."""
    yield from _iter_file(path, policy or IngestPolicy(), _Tally())


def iter_records_many(
    paths: Iterable[str | os.PathLike[str]], policy: IngestPolicy | None = None
) -> Iterator[AcceptedRecord | RejectedRecord]:
    """Stream several files in order; the duplicate-accession check spans all of them."""
    tally, pol = _Tally(), policy or IngestPolicy()
    for path in paths:
        yield from _iter_file(path, pol, tally)


def ingest_many(paths: Iterable[str | os.PathLike[str]], policy: IngestPolicy | None = None) -> IngestResult:
    """Read every file into lists; the duplicate-accession check spans all files."""
    tally, pol = _Tally(), policy or IngestPolicy()
    accepted: list[AcceptedRecord] = []
    rejected: list[RejectedRecord] = []
    for path in paths:
        for rec in _iter_file(path, pol, tally):
            (accepted if isinstance(rec, AcceptedRecord) else rejected).append(rec)  # type: ignore[arg-type]
    if len(accepted) + len(rejected) != tally.n_read:
        raise AssertionError(
            f"ingest lost records: accepted {len(accepted)} + rejected {len(rejected)} != read {tally.n_read}"
        )
    if pol.fragment_above is not None:
        accepted = [f for rec in accepted for f in fragment_record(rec, pol)]
    return IngestResult(accepted, rejected, tally.n_read)


def fragment_windows(length: int, window: int, step: int) -> list[tuple[int, int]]:
    """0-based ``(start, stop)`` windows covering ``length``: starts every ``step``; the last window
    ends at the sequence end (as AlphaFold DB's fragments of its longest proteins do)."""
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window, step))
    starts.append(length - window)
    return [(s, s + window) for s in starts]


def fragment_record(rec: AcceptedRecord, policy: IngestPolicy) -> list[AcceptedRecord]:
    """``rec`` itself, or its fragments F1..Fn when it is longer than ``policy.fragment_above``."""
    if policy.fragment_above is None or rec.length <= policy.fragment_above:
        return [rec]
    out = []
    windows = fragment_windows(rec.length, policy.fragment_window, policy.fragment_step)
    for k, (s, e) in enumerate(windows, start=1):
        seq = rec.sequence[s:e]
        sha256, crc, md5 = sequence_hashes(seq)
        out.append(replace(rec, sequence=seq, length=len(seq), sha256=sha256, crc64=crc, md5=md5, fragment=k,
                           start=s + 1, whole_sha256=rec.sha256, notes=(*rec.notes, f"fragment F{k} of {len(windows)}: residues {s + 1}-{e} "
                                                             f"of {rec.length}")))
    return out


def ingest(path: str | os.PathLike[str], policy: IngestPolicy | None = None) -> IngestResult:
    """Read one file into lists of accepted and rejected records."""
    return ingest_many([path], policy)
