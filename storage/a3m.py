"""A3M multiple sequence alignments: read, write, convert from Stockholm, depth and Neff.

Format (HH-suite A3M, as written by HHblits, ColabFold/MMseqs2 and AlphaFold's data pipeline)
---------------------------------------------------------------------------------------------
FASTA-like records ``>header`` + sequence. The first record is the query: upper-case residues
only. Every other row is aligned to the query: upper-case letters and ``-`` are *match* columns
(one per query residue), lower-case letters are *insertions* relative to the query and take no
column. Removing the lower-case letters therefore leaves every row exactly as long as the query
(:meth:`A3M.aligned`). ``.`` is accepted as an insertion-column gap (A2M style) and is dropped
like a lower-case letter.

ColabFold writes a first line ``#<query lengths>\\t<cardinalities>`` (``#59\\t1``; multimers
``#59,60\\t1,1``); it is kept verbatim (without the ``#``) in :attr:`A3M.header_comment`.

Headers. ``names[i]`` is the header up to the first whitespace; ``descriptions[i]`` the rest after
that one separator character (``""`` when there is none). The writer puts back a tab when the
description contains a tab (ColabFold's ``name\\tscore\\tseqid...`` layout) and a space otherwise
(HHblits/UniProt headers). With this rule the real ColabFold file in ``tests/data/msa`` and
single-line A3M files round-trip byte for byte; a header that is only a name followed by
whitespace loses that trailing whitespace. Sequences wrapped over several lines are joined (the
writer writes one line per sequence); CRLF line ends and blank lines are accepted.

Depth and Neff
--------------
:func:`msa_depth` is the number of rows, the query included, duplicates included (the number of
sequences AlphaFold's ``num_alignments`` feature counts).

:func:`msa_neff` is the number of effective sequences with 80 % identity weighting, in the
definition the AlphaFold papers use for their MSA-depth analyses (Jumper et al. 2021, Nature 596,
Methods "MSA depth analysis"; Abramson et al. 2024, Nature 630, same section): each sequence gets
weight ``1 / n_i`` where ``n_i`` is the number of sequences in the MSA, itself included, whose
identity to it is at least the threshold, "with a threshold of 80% sequence identity measured on
the region that is non-gap in either sequence". So for two aligned rows ``a`` and ``b`` (insertions
removed, query columns only)::

    identity(a, b) = #{columns: a and b both residues and a == b} / #{columns: a or b a residue}

and ``identity = 1`` when both rows are all gaps (they are then equal strings), so a row is always
counted in its own cluster and ``1 <= Neff <= depth``. ``X`` is a residue like any other letter.
Neff is the sum of the weights. It is computed exactly: rows are deduplicated first (identical
rows share a cluster, so each unique row is weighted by its multiplicity), then every pair of
unique rows is compared by a small numba-compiled kernel (``storage/_neff_kernel.py``, byte
compares that LLVM vectorises), one block of rows at a time over the upper triangle, skipping pairs
whose residue counts alone rule out the threshold. Memory stays at a few tens of MB for a
10,000 x 1,000 MSA.

Stockholm
---------
:func:`stockholm_to_a3m` reads a Stockholm alignment (jackhmmer ``-A`` output as in AlphaFold2's
``uniref90_hits.sto``) with Biopython's ``AlignIO`` and converts it the way AlphaFold's
``parsers.convert_stockholm_to_a3m`` does: the first sequence is the query; columns where the
query has a gap become lower-case insertions (gap characters in those columns are dropped);
names keep jackhmmer's ``/start-end`` suffix; descriptions come from ``#=GS <name> DE`` lines.
Biopython rather than ``pyhmmer.easel.MSAFile`` because Easel orders sequences by their first
mention, and ``#=GS`` lines come before the alignment block, so the query (which has no ``#=GS``
line in jackhmmer output) would come last instead of first.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import FoldAtlasError

logger = logging.getLogger(__name__)

__all__ = [
    "A3M",
    "MSAError",
    "msa_depth",
    "msa_neff",
    "neff_of_aligned",
    "parse_a3m",
    "stockholm_to_a3m",
    "warm_neff_kernels",
    "write_a3m",
]


class MSAError(FoldAtlasError):
    """An MSA or MSA database is malformed, missing or does not match its query."""


_ROW_OK = re.compile(r"[A-Za-z.\-]*")
_QUERY_OK = re.compile(r"[A-Z]+")
_NAME_OK = re.compile(r"\S+")
# The same checks over records joined by newlines (A3M._valid), and the header split.
_NAMES_OK = re.compile(r"\S+(?:\n\S+)*")
_ROWS_OK = re.compile(r"[A-Za-z.\-\n]*")
_INSERTION_BYTES = (string.ascii_lowercase + ".").encode("ascii")
_HEADER = re.compile(r"(\S*)\s?(.*)\Z", flags=re.S)


@dataclass(frozen=True)
class A3M:
    """One A3M alignment. The first row is the query.

    Attributes:
        names: one per row; ``names[0]`` is the query's name. No whitespace.
        descriptions: header text after the name (``""`` when none), one per row.
        rows: the raw A3M rows: upper case and ``-`` are query columns, lower case (and ``.``)
            are insertions. ``rows[0]`` is the query sequence.
        header_comment: ColabFold's first line without its ``#`` (``"59\\t1"``), else ``None``.

    Sequences are stored as tuples (the record is immutable); lists passed in are converted.
    Construction validates the alignment and raises :class:`MSAError`.
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    rows: tuple[str, ...]
    header_comment: str | None = None

    def __post_init__(self) -> None:
        for attr in ("names", "descriptions", "rows"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        n = len(self.rows)
        if n == 0:
            raise MSAError("an A3M needs at least one row (the query)")
        if len(self.names) != n or len(self.descriptions) != n:
            raise MSAError(f"A3M has {n} rows but {len(self.names)} names and {len(self.descriptions)} descriptions")
        if self.header_comment is not None and ("\n" in self.header_comment or "\r" in self.header_comment):
            raise MSAError("A3M header comment must be a single line")
        if not self._valid():
            self._raise_first_error()

    def _valid(self) -> bool:
        """All checks at once, on the joined names, descriptions and rows (fast for deep MSAs);
        :meth:`_raise_first_error` then finds the offending record for the message."""
        names = "\n".join(self.names)
        if not _NAMES_OK.fullmatch(names) or names.count("\n") != len(self.names) - 1:
            return False
        descriptions = "".join(self.descriptions)
        if "\n" in descriptions or "\r" in descriptions or not _QUERY_OK.fullmatch(self.rows[0]):
            return False
        rows = "\n".join(self.rows[1:])
        if not _ROWS_OK.fullmatch(rows):
            return False
        aligned = rows.encode("ascii").translate(None, _INSERTION_BYTES).split(b"\n") if rows else []
        return len(aligned) == len(self.rows) - 1 and all(len(a) == len(self.rows[0]) for a in aligned)

    def _raise_first_error(self) -> None:
        for i, (name, desc) in enumerate(zip(self.names, self.descriptions, strict=True)):
            if not _NAME_OK.fullmatch(name):
                raise MSAError(f"A3M row {i + 1}: name {name!r} must be non-empty and contain no whitespace")
            if "\n" in desc or "\r" in desc:
                raise MSAError(f"A3M row {i + 1} ({name}): description contains a line break")
        query = self.rows[0]
        if not _QUERY_OK.fullmatch(query):
            bad = sorted({c for c in query if not ("A" <= c <= "Z")})
            raise MSAError(
                f"A3M query row ({self.names[0]}) must be upper-case residues only, found {bad}"
                if query else f"A3M query row ({self.names[0]}) is empty",
                hint="the first record of an A3M must be the query sequence itself",
            )
        width = len(query)
        for i, row in enumerate(self.rows[1:], start=2):
            if not _ROW_OK.fullmatch(row):
                bad = sorted({c for c in row if not (c.isascii() and (c.isalpha() or c in "-."))})
                raise MSAError(f"A3M row {i} ({self.names[i - 1]}): invalid characters {bad}")
            aligned = len(row.encode("ascii").translate(None, _INSERTION_BYTES))
            if aligned != width:
                raise MSAError(
                    f"A3M row {i} ({self.names[i - 1]}) has {aligned} aligned columns, the query has {width}",
                    hint="upper-case letters and '-' must match the query length; insertions are lower case",
                )
        raise AssertionError("A3M failed validation but no record explains it")  # pragma: no cover

    @property
    def query(self) -> str:
        """The query sequence (the first row)."""
        return self.rows[0]

    def __len__(self) -> int:
        return len(self.rows)

    def aligned(self) -> list[str]:
        """Rows with insertions (lower case, ``.``) removed: each as long as the query, gaps ``-``."""
        joined = "\n".join(self.rows).encode("ascii")  # validated: ASCII letters, '-' and '.'
        return joined.translate(None, _INSERTION_BYTES).decode("ascii").split("\n")


def _split_header(line: str) -> tuple[str, str]:
    """Name and description of a ``>`` header line."""
    m = _HEADER.match(line, 1)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2)


def parse_a3m(text: str) -> A3M:
    """Parse A3M text (see the module docstring for the rules).

    Raises:
        MSAError: empty input, text before the first ``>``, a record without a sequence, NUL bytes
            (an MMseqs2 database holding several entries), or an invalid alignment.
    """
    if "\x00" in text:
        raise MSAError(
            "A3M text contains NUL bytes",
            hint="this looks like an MMseqs2 database file with several entries; split it at NUL first",
        )
    lines = text.splitlines()
    header_comment: str | None = None
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start < len(lines) and lines[start].startswith("#"):
        header_comment = lines[start][1:]
        start += 1
    simple = _parse_one_line_records(lines[start:], header_comment)
    if simple is not None:
        return simple
    names: list[str] = []
    descriptions: list[str] = []
    rows: list[str] = []
    chunks: list[str] = []
    for lineno, raw in enumerate(lines[start:], start=start + 1):
        line = raw.rstrip("\r")
        if line.startswith(">"):
            if names:
                rows.append("".join(chunks))
            name, desc = _split_header(line)
            if not name:
                raise MSAError(f"A3M line {lineno}: header without a name")
            names.append(name)
            descriptions.append(desc)
            chunks = []
        elif not line.strip():
            continue
        elif not names:
            raise MSAError(f"A3M line {lineno}: text before the first '>' header: {line[:40]!r}")
        else:
            chunks.append(line.strip())
    if not names:
        raise MSAError("no sequences in A3M text", hint="an A3M starts with '>query_name' and the query sequence")
    rows.append("".join(chunks))
    for name, row in zip(names, rows, strict=True):
        if not row:
            raise MSAError(f"A3M record {name!r} has no sequence")
    return A3M(names=tuple(names), descriptions=tuple(descriptions), rows=tuple(rows), header_comment=header_comment)


def _parse_one_line_records(lines: list[str], header_comment: str | None) -> A3M | None:
    """The common layout, one header line and one sequence line per record (what MMseqs2's
    ``result2msa`` and :func:`write_a3m` write), read without a per-line loop; ``None`` for any
    other layout or for invalid content, which :func:`parse_a3m`'s general reader then handles
    (and reports)."""
    heads, rows = lines[0::2], lines[1::2]
    if (not lines or len(heads) != len(rows) or not all(h.startswith(">") for h in heads)
            or any(r.startswith(">") for r in rows)):
        return None
    split = [_split_header(h) for h in heads]
    try:
        return A3M(names=tuple(n for n, _ in split), descriptions=tuple(d for _, d in split), rows=tuple(rows),
                   header_comment=header_comment)
    except MSAError:
        return None


def write_a3m(a3m: A3M) -> str:
    """A3M text: optional ``#`` comment line, then ``>name[ sep description]`` and one sequence line
    per record, every line ending in ``\\n``. ``parse_a3m(write_a3m(x)) == x`` for every valid ``x``."""
    out = io.StringIO()
    if a3m.header_comment is not None:
        out.write(f"#{a3m.header_comment}\n")
    for name, desc, row in zip(a3m.names, a3m.descriptions, a3m.rows, strict=True):
        if desc:
            sep = "\t" if "\t" in desc else " "
            out.write(f">{name}{sep}{desc}\n{row}\n")
        else:
            out.write(f">{name}\n{row}\n")
    return out.getvalue()


def stockholm_to_a3m(text: str, max_sequences: int | None = None) -> A3M:
    """Convert a Stockholm alignment to A3M, query-relative (AlphaFold semantics, see module doc).

    Args:
        text: the Stockholm file's text (one alignment; a second one is ignored).
        max_sequences: keep only the first N sequences (query included), like AlphaFold's
            ``max_sequences``.

    Raises:
        MSAError: not Stockholm, no sequences, or a query that is all gaps.
    """
    from Bio import AlignIO

    try:
        alignments = list(AlignIO.parse(io.StringIO(text), "stockholm"))
    except ValueError as e:
        raise MSAError(f"cannot read Stockholm alignment: {e}") from e
    if not alignments or len(alignments[0]) == 0:
        raise MSAError("no Stockholm alignment found", hint="a Stockholm file starts with '# STOCKHOLM 1.0'")
    records = list(alignments[0])
    if max_sequences is not None:
        records = records[: max(1, max_sequences)]
    query_aln = str(records[0].seq).replace(".", "-")
    keep = [c not in "-." for c in query_aln]
    if not any(keep):
        raise MSAError(f"Stockholm query {records[0].id!r} is all gaps")
    names: list[str] = []
    descriptions: list[str] = []
    rows: list[str] = []
    for rec in records:
        seq = str(rec.seq)
        if len(seq) != len(query_aln):
            raise MSAError(f"Stockholm row {rec.id!r} has {len(seq)} columns, the query has {len(query_aln)}")
        out = []
        for is_match, c in zip(keep, seq, strict=True):
            if is_match:
                out.append("-" if c in "-." else c.upper())
            elif c not in "-.":
                out.append(c.lower())
        names.append(rec.id)
        # Biopython fills the description with the id when there is no '#=GS <id> DE' line.
        desc = rec.description if rec.description != rec.id else ""
        descriptions.append(desc)
        rows.append("".join(out))
    return A3M(names=tuple(names), descriptions=tuple(descriptions), rows=tuple(rows))


def msa_depth(a3m: A3M) -> int:
    """Number of rows, the query included and duplicate rows included."""
    return len(a3m.rows)


def msa_neff(a3m: A3M, identity: float = 0.8) -> float:
    """Effective number of sequences at ``identity`` (default 80 %), AlphaFold's definition.

    See the module docstring: weight of each row = 1 / (rows, itself included, with identity >=
    ``identity`` over the columns non-gap in either row); Neff = sum of weights.
    """
    return neff_of_aligned(a3m.aligned(), identity)


@functools.cache
def warm_neff_kernels() -> None:
    """Load the compiled Neff kernels into this process (from numba's on-disk cache, or compile
    them on a first run), so that a later :func:`neff_of_aligned` starts at once. Callers run this
    in a thread while something else (a search) keeps the process waiting; after the first call in
    a process it returns at once."""
    neff_of_aligned(["A-", "AC"])


#: Rows per call of the compiled kernel: the later rows a block meets are bounded by the residue
#: count of its longest row (see :func:`neff_of_aligned`), so smaller blocks skip more pairs.
_NEFF_ROW_BLOCK = 256
#: Columns compared between two early-termination tests of a pair.
_NEFF_CHUNK = 32
#: Pivot rows for the triangle-inequality test of the kernel (0 disables it).
_NEFF_PIVOTS = 16
#: Rows that estimate the column order of :func:`_difference_order` (a heuristic: exactness does not
#: depend on it).
_ORDER_SAMPLE = 1024


def _pivot_distances(codes: np.ndarray, n_pivots: int) -> np.ndarray:
    """(N, K) int32 Hamming distances (gap a symbol) of every row to ``K`` pivot rows picked
    farthest-first (each the row farthest from the pivots before it), so that rows of different
    families sit far apart on at least one pivot. Compiled (one pass over the rows per pivot)."""
    from storage._neff_kernel import farthest_first_distances

    return farthest_first_distances(np.ascontiguousarray(codes), min(n_pivots, codes.shape[0]))


def _difference_order(codes: np.ndarray) -> np.ndarray:
    """Column order, most discriminating first: by the chance that two random rows differ there
    (not both gaps and not the same residue). Identity does not depend on the column order, but the
    kernel's early termination drops unrelated pairs sooner when their differences come first."""
    from storage._neff_kernel import column_code_counts

    # Estimated on at most _ORDER_SAMPLE evenly spaced rows: any order gives the same result.
    sample = np.ascontiguousarray(codes[::max(1, codes.shape[0] // _ORDER_SAMPLE)])
    freq = column_code_counts(sample) / sample.shape[0]  # (L, 32), gap = code 0
    same = np.sum(freq[:, 1:] ** 2, axis=1)
    residue = 1.0 - freq[:, 0]
    differ = 1.0 - (1.0 - residue) ** 2 - same
    return np.argsort(-differ, kind="stable")


def _encode(rows: Sequence[str]) -> np.ndarray:
    """(N, L) uint8 matrix: ASCII code of each residue, 0 for a gap ``-``."""
    width = len(rows[0])
    data = "".join(rows).encode("ascii")
    mat = np.frombuffer(data, dtype=np.uint8).reshape(len(rows), width).copy()
    mat[mat == ord("-")] = 0
    return mat


def neff_of_aligned(rows: Sequence[str], identity: float = 0.8) -> float:
    """Neff of aligned rows (equal length, gaps ``-``, no insertions): see :func:`msa_neff`.

    Exact. Identical rows are merged first (each unique row weighted by its multiplicity). For
    every pair of unique rows the compiled kernel of :func:`storage._neff_kernel.close_pairs_kernel`
    counts equal residues and residues in both rows byte by byte (gaps coded 0 in one copy of the
    rows and 255 in the other, so a gap never equals anything), ``_NEFF_CHUNK`` columns at a time,
    and drops the pair as soon as the columns left cannot bring it to the threshold. Identity and
    threshold are compared as ``matches / union >= identity`` in float64, the definition's own
    arithmetic.

    Rows are sorted by their residue count ``n`` first: ``identity(a, b) <= min(n_a, n_b) /
    max(n_a, n_b)`` (matches are at most the shorter row's residues, the union at least the longer
    row's), so a block of ``_NEFF_ROW_BLOCK`` rows only meets the later rows with ``n <= max n in
    the block / identity``; in MSAs whose hits cover the query to very different extents that skips
    most pairs. The kernel releases the GIL, so several MSAs can be scored in parallel threads.

    Two more exact shortcuts: the columns are compared most discriminating first
    (:func:`_difference_order`), so that an unrelated pair fails the early-termination test
    sooner, and each row's distances to ``_NEFF_PIVOTS`` pivot rows (:func:`_pivot_distances`)
    bound every pair's distance from below (triangle inequality), which rules out most pairs from
    different families before any column is read. On 200 clustered-search MSAs (79,340 rows) the
    two cut the kernel's time from 9-10 s to 3.6-4 s (``docs/benchmarks.md``). The column order is
    estimated on at most ``_ORDER_SAMPLE`` rows, and the column statistics, pivot distances and
    per-chunk residue counts are compiled loops too (``storage/_neff_kernel.py``), so that almost
    all of the work runs without the GIL.
    """
    if not rows:
        return 0.0
    if not 0.0 <= identity <= 1.0:
        raise ValueError(f"identity threshold must be in [0, 1], got {identity}")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise MSAError("aligned rows differ in length")
    if width == 0:
        return 1.0  # all rows are empty, hence equal: one cluster
    from storage._neff_kernel import chunk_residues, close_pairs_kernel  # numba, compiled and cached

    counts = Counter(rows)
    codes = _encode(list(counts))
    n_res = np.count_nonzero(codes, axis=1).astype(np.int64)
    order = np.argsort(n_res, kind="stable")
    codes = codes[np.ix_(order, _difference_order(codes))]  # rows by residue count, columns by order
    n_res = n_res[order]
    mult = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))[order]
    n, width = codes.shape
    chunk = max(1, _NEFF_CHUNK)
    add_close_pairs = close_pairs_kernel(chunk)
    gaps_255, rest = chunk_residues(codes, chunk)  # gaps as 255; residues from chunk k on
    row_block = max(1, _NEFF_ROW_BLOCK)
    pivots = _pivot_distances(codes, _NEFF_PIVOTS) if _NEFF_PIVOTS > 0 else np.zeros((n, 0), dtype=np.int32)
    max_dist = (1.0 - identity) / identity if identity > 0.0 and _NEFF_PIVOTS > 0 else -1.0
    cluster = mult.copy()  # every row is close to itself and to its duplicates
    for start in range(0, n, row_block):
        stop = min(n, start + row_block)
        # Later rows longer than (longest row of the block) / identity cannot be close to any
        # row of the block; the bound is widened by a relative 1e-9 so that float rounding of the
        # division never drops a pair whose identity is exactly the threshold.
        end = n if identity <= 0.0 else max(stop, int(np.searchsorted(
            n_res, n_res[stop - 1] / identity * (1.0 + 1e-9), side="right")))
        add_close_pairs(codes, gaps_255, n_res, rest, mult, float(identity), start, stop, end, cluster, pivots,
                        max_dist)
    return float(np.sum(mult / cluster))
