"""Compiled inner loop of :func:`storage.a3m.neff_of_aligned` (numba, cached on disk).

Kept apart so that importing :mod:`storage.a3m` does not import numba; the first call in a process
compiles the kernel (a few seconds) or loads it from numba's cache (``__pycache__`` next to this
file, or ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def add_close_pairs(codes: np.ndarray, gaps_255: np.ndarray, n_res: np.ndarray, both: np.ndarray,
                    mult: np.ndarray, identity: float, start: int, stop: int, end: int,
                    cluster: np.ndarray) -> None:  # pragma: no cover - compiled
    """For rows ``i`` in ``[start, stop)`` and ``j`` in ``(i, end)``: if identity(i, j) >= ``identity``,
    add ``mult[j]`` to ``cluster[i]`` and ``mult[i]`` to ``cluster[j]``.

    ``codes`` (n, L) uint8 has gaps 0, ``gaps_255`` the same rows with gaps 255, so ``codes[i, c]
    == gaps_255[j, c]`` holds exactly where both rows have the same residue. ``both[i - start, j -
    start]`` is the number of columns that are residues in both rows, ``n_res`` each row's residue
    count, so the union is ``n_res[i] + n_res[j] - both``; an empty union (two all-gap rows) counts
    as identity 1.
    """
    width = codes.shape[1]
    for i in range(start, stop):
        a = codes[i]
        for j in range(i + 1, end):
            b = gaps_255[j]
            matches = np.int32(0)
            for c in range(width):
                matches += np.int32(a[c] == b[c])
            union = n_res[i] + n_res[j] - np.int64(both[i - start, j - start])
            if union == 0 or matches / union >= identity:
                cluster[i] += mult[j]
                cluster[j] += mult[i]
