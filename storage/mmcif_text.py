"""Large mmCIF loops as text, formatted with numpy exactly the way gemmi writes them.

Split from :mod:`storage.mmcif`: building ``_atom_site`` (one row per atom, 21 columns) through a
gemmi ``cif.Document`` costs one Python string per value plus gemmi's copy and write, most of the
time of rendering a ModelCIF file. Here a loop is a byte matrix, one row per line, built from
column matrices: an ``(n, w)`` uint8 array holding the ASCII values left-aligned and padded with
spaces to ``w``, the longest value of the column.

:func:`loop_text` reproduces gemmi's ``write_out_loop`` with ``WriteOptions.align_loops``
(gemmi 0.6-0.7, ``to_cif.hpp``): ``loop_``, one tag a line, then one line per row with the values
separated by one space and every column but the last padded to its width (at most
``align_loops``). Values must be simple tokens (no quoting, no text fields): the callers format
numbers and fixed names only. ``tests/storage/test_mmcif_text.py`` compares the text with gemmi's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

__all__ = ["FIXED3_LIMIT", "fixed3_column", "loop_text", "serial_column", "take_rows", "text_column"]

_SPACE, _NUL, _DOT, _MINUS, _ZERO = 32, 0, 46, 45, 48
FIXED3_LIMIT = 1e15  # fixed3_column's values: thousandths fit in int64


def text_column(values: Sequence[str]) -> np.ndarray:
    """ASCII strings (non-empty, no whitespace) as a column matrix."""
    m = np.array(values, dtype="S").view(np.uint8).reshape(len(values), -1)
    return np.where(m == _NUL, np.uint8(_SPACE), m)


def take_rows(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The column's values at ``rows``, narrowed to the longest of them."""
    m = np.take(column, rows, axis=0)
    used = np.flatnonzero((m != _SPACE).any(axis=0))
    return m[:, : int(used[-1]) + 1 if used.size else 1]


def _left_align(right: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Right-aligned text of ``lengths`` characters per row, moved to the left and space-padded."""
    w = right.shape[1]
    out = np.full_like(right, _SPACE)
    for length in np.flatnonzero(np.bincount(lengths)).tolist():  # a few distinct lengths: one copy each
        rows = np.flatnonzero(lengths == length)
        out[rows, :length] = right[rows, w - length :]
    return out


_TRIPLES = np.array([list(f"{i:03d}".encode()) for i in range(1000)], dtype=np.uint8)  # "000" ... "999"


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) uint8: the last ``width`` decimal digits of non-negative ints, with leading zeros."""
    groups = -(-width // 3)
    out = np.empty((values.shape[0], 3 * groups), dtype=np.uint8)
    rest = values
    for k in range(groups, 0, -1):  # three digits at a time, by table look-up, from the right
        rest, triple = np.divmod(rest, 1000)
        out[:, 3 * k - 3 : 3 * k] = np.take(_TRIPLES, triple, axis=0)
    return out[:, 3 * groups - width :]


def _digit_count(values: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative ints (1 for 0)."""
    count = np.ones(values.shape, dtype=np.int64)
    limit = 10
    while values.size and limit <= int(values.max()):
        count += values >= limit
        limit *= 10
    return count


def _int_column(values: np.ndarray) -> np.ndarray:
    """Non-negative integers as ``str(int)`` writes them."""
    v = np.asarray(values, dtype=np.int64)
    lengths = _digit_count(v)
    return _left_align(_digits(v, int(lengths.max(initial=1))), lengths)


@functools.lru_cache(maxsize=8)
def _serials(limit: int) -> np.ndarray:
    return _int_column(np.arange(1, limit + 1))


def serial_column(n: int) -> np.ndarray:
    """The numbers 1 ... n (atom and residue numbers; computed once per power of two and kept)."""
    return _serials(max(1024, 1 << (n - 1).bit_length()))[:n, : len(str(n))]


def fixed3_column(values: np.ndarray) -> np.ndarray:
    """Finite floats as ``f"{v:.3f}"`` writes them (correctly rounded; ``-0.000`` for small negatives).

    ``rint(|v| * 1000)`` is the rounding Python does unless ``|v| * 1000`` lies within 1e-6 of a
    half (the product's error is below 1e-7 for ``|v| < 1e6``); those values, and larger ones, are
    rounded by Python's own formatting.

    Raises:
        ValueError: a value is not finite or not below ``FIXED3_LIMIT`` in magnitude.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.abs(v) < FIXED3_LIMIT):
        raise ValueError(f"fixed3_column takes finite values below {FIXED3_LIMIT:g} in magnitude")
    negative = np.signbit(v)
    magnitude = np.abs(v)
    scaled = magnitude * 1000.0
    milli = np.rint(scaled).astype(np.int64)
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    for i in np.flatnonzero(near_half | (magnitude >= 1e6)):
        milli[i] = int(f"{magnitude[i]:.3f}".replace(".", ""))
    whole = milli // 1000
    whole_digits = _digit_count(whole)
    lengths = negative + whole_digits + 4
    w = int(lengths.max(initial=5))
    right = np.empty((v.size, w), dtype=np.uint8)
    right[:, w - 3 :] = _digits(milli % 1000, 3)
    right[:, w - 4] = _DOT
    right[:, : w - 4] = _digits(whole, w - 4)
    rows = np.flatnonzero(negative)
    right[rows, w - 5 - whole_digits[rows]] = _MINUS
    return _left_align(right, lengths)


def loop_text(tags: Sequence[str], columns: Sequence[np.ndarray | str], align_loops: int) -> str | None:
    """gemmi's text of a loop with these tags and columns (more than one row).

    A column is a matrix (see the module docstring) or a ``str``: the same value on every row.
    None when a column is wider than ``align_loops`` (gemmi would leave its longer values unpadded).
    """
    if len(tags) != len(columns) or not any(isinstance(c, np.ndarray) for c in columns):
        raise ValueError("one column per tag, at least one of them a matrix")
    widths = [len(c) if isinstance(c, str) else c.shape[1] for c in columns]
    if max(widths[:-1], default=0) > align_loops:
        return None
    n = next(c.shape[0] for c in columns if isinstance(c, np.ndarray))
    template = bytearray(b" ".join(c.encode("ascii") if isinstance(c, str) else b" " * w
                                   for c, w in zip(columns, widths, strict=True)) + b"\n")
    matrix = np.empty((n, len(template)), dtype=np.uint8)
    matrix[:] = np.frombuffer(bytes(template), dtype=np.uint8)
    offset = 0
    for c, w in zip(columns, widths, strict=True):
        if not isinstance(c, str):
            matrix[:, offset : offset + w] = c
        offset += w + 1
    last = columns[-1]
    if isinstance(last, np.ndarray) and (last == _SPACE).any():  # the last column is not padded
        start = len(template) - 1 - widths[-1]
        matrix[:, start : start + widths[-1]][last == _SPACE] = _NUL
        body = matrix.tobytes().replace(b"\0", b"")
    else:
        body = matrix.tobytes()
    return "loop_\n" + "\n".join(tags) + "\n" + body.decode("ascii")
