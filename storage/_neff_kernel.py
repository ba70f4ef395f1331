"""Compiled inner loop of :func:`storage.a3m.neff_of_aligned` (numba, cached on disk).

Kept apart so that importing :mod:`storage.a3m` does not import numba; the first call in a process
compiles the kernel (a few seconds) or loads it from numba's cache (``__pycache__`` next to this
file, or ``NUMBA_CACHE_DIR``). The chunk width is a compile-time constant (a closure variable,
part of numba's cache key): with it the column loop has a constant trip count that LLVM unrolls
and vectorises, about 2.5x faster than the same loop with the width passed at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np


@functools.cache
def close_pairs_kernel(chunk: int) -> Callable[..., None]:
    """The pair kernel compiled for ``chunk`` columns between two early-termination tests."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def add_close_pairs(codes: np.ndarray, gaps_255: np.ndarray, n_res: np.ndarray, rest: np.ndarray,
                        mult: np.ndarray, identity: float, start: int, stop: int, end: int,
                        cluster: np.ndarray, pivot_dist: np.ndarray,
                        max_dist_per_residue: float) -> None:  # pragma: no cover - compiled
        """For rows ``i`` in ``[start, stop)`` and ``j`` in ``(i, end)``: if identity(i, j) >=
        ``identity``, add ``mult[j]`` to ``cluster[i]`` and ``mult[i]`` to ``cluster[j]``.

        ``codes`` (n, L) uint8 has gaps 0, ``gaps_255`` the same rows with gaps 255, so ``codes[i,
        c] == gaps_255[j, c]`` holds exactly where both rows have the same residue, and ``codes[i, c]
        != 0 and gaps_255[j, c] != 255`` where both have a residue. ``n_res`` is each row's residue
        count, so the union of residue columns is ``n_res[i] + n_res[j] - both``; an empty union
        (two all-gap rows) counts as identity 1.

        Columns are compared ``chunk`` at a time; ``rest[i, k]`` is the number of residues of row
        ``i`` in the columns from ``k * chunk`` on. After each chunk at most ``r = min(rest[i, k +
        1], rest[j, k + 1])`` more columns can be residues in both rows (and so matches), so the pair
        can still reach the threshold only if ``matches + r >= identity * (n_i + n_j - both - r)``;
        when it cannot, the pair is dropped without reading its other columns. That test is widened
        by a relative 1e-9 so that rounding never drops a pair sitting exactly on the threshold; the
        final decision is the definition's own ``matches / union >= identity``.

        Before any column is read, a pair is dropped by the triangle inequality: ``pivot_dist[i, k]``
        is the Hamming distance (gap a symbol like the residues) of row ``i`` to pivot row ``k``, so
        ``max_k |pivot_dist[i, k] - pivot_dist[j, k]|`` is a lower bound of the pair's own distance,
        which equals ``union - matches``. A close pair has ``union - matches <= (1 - identity) /
        identity * matches <= max_dist_per_residue * min(n_i, n_j)``; a bound above that (widened by
        the same 1e-9) rules the pair out. Negative ``max_dist_per_residue`` disables the test.
        """
        width = codes.shape[1]
        n_chunks = (width + chunk - 1) // chunk
        slack = 1.0 - 1e-9
        n_pivots = pivot_dist.shape[1]
        for i in range(start, stop):
            a = codes[i]
            n_i = n_res[i]
            d_i = pivot_dist[i]
            for j in range(i + 1, end):
                n_j = n_res[j]
                if max_dist_per_residue >= 0.0:
                    d_j = pivot_dist[j]
                    lower = np.int32(0)
                    for k in range(n_pivots):
                        lower = max(lower, abs(d_i[k] - d_j[k]))
                    if lower * slack > max_dist_per_residue * min(n_i, n_j):
                        continue
                if n_i + n_j == 0:
                    cluster[i] += mult[j]
                    cluster[j] += mult[i]
                    continue
                b = gaps_255[j]
                matches = np.int64(0)
                both = np.int64(0)
                close = True
                for k in range(n_chunks):
                    lo = k * chunk
                    hi = min(width, lo + chunk)
                    m = np.int32(0)
                    r = np.int32(0)
                    for c in range(lo, hi):
                        m += np.int32(a[c] == b[c])
                        r += np.int32((a[c] != 0) & (b[c] != 255))
                    matches += m
                    both += r
                    left = min(rest[i, k + 1], rest[j, k + 1])
                    if matches + left < identity * (n_i + n_j - both - left) * slack:
                        close = False
                        break
                if close and matches / (n_i + n_j - both) >= identity:
                    cluster[i] += mult[j]
                    cluster[j] += mult[i]

    return add_close_pairs


@numba.njit(cache=True, nogil=True, boundscheck=False)
def column_code_counts(codes: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """(L, 32) int32: how many rows hold each code in each column of ``codes`` (n, L) uint8, codes
    taken modulo 32 (a gap 0 and the upper-case letters, 65-90, map to distinct bins 0 and 1-26)."""
    n, width = codes.shape
    counts = np.zeros((width, 32), dtype=np.int32)
    for i in range(n):
        row = codes[i]
        for c in range(width):
            counts[c, row[c] & 31] += 1
    return counts


@numba.njit(cache=True, nogil=True, boundscheck=False)
def farthest_first_distances(codes: np.ndarray, k: int) -> np.ndarray:  # pragma: no cover - compiled
    """(n, k) int32 Hamming distances of every row of ``codes`` to ``k`` pivot rows: row 0 first,
    then each time the row farthest from the pivots chosen so far (the first such row on ties)."""
    n, width = codes.shape
    dist = np.empty((n, k), dtype=np.int32)
    nearest = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
    pivot = 0
    for p in range(k):
        ref = codes[pivot]
        best, best_row = np.int32(-1), 0
        for i in range(n):
            row = codes[i]
            d = np.int32(0)
            for c in range(width):
                d += np.int32(row[c] != ref[c])
            dist[i, p] = d
            if d < nearest[i]:
                nearest[i] = d
            if nearest[i] > best:
                best, best_row = nearest[i], i
        pivot = best_row
    return dist


@numba.njit(cache=True, nogil=True, boundscheck=False)
def chunk_residues(codes: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """For ``codes`` (n, L) uint8 with gaps 0: the same rows with gaps 255, and ``rest`` (n,
    n_chunks + 1) int64, the residues of each row in the columns from ``k * chunk`` on."""
    n, width = codes.shape
    n_chunks = (width + chunk - 1) // chunk
    gaps_255 = np.empty_like(codes)
    rest = np.zeros((n, n_chunks + 1), dtype=np.int64)
    for i in range(n):
        row = codes[i]
        for c in range(width):
            gaps_255[i, c] = 255 if row[c] == 0 else row[c]
        total = np.int64(0)
        for k in range(n_chunks - 1, -1, -1):
            for c in range(k * chunk, min(width, (k + 1) * chunk)):
                total += np.int64(row[c] != 0)
            rest[i, k] = total
    return gaps_255, rest
