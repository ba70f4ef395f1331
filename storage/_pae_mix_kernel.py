"""Compiled model of the PAE mixing coder (codec 4 of :mod:`storage.compact_pae`; numba, cached on disk).

Kept apart so that importing :mod:`storage.compact_pae` does not import numba. Everything here is
integer arithmetic (int64), so encoder and decoder compute the same probabilities on every
platform. The first call in a process compiles the kernels or loads them from numba's cache.

The residual r of a value (value minus the prediction's integer origin, sign flipped when the
prediction lies in the upper half of its unit, as in codec 3) is decomposed into binary decisions:
``r == 0``; ``r > 0``; then, on the chosen side, ``|r| == 1``, ``|r| == 2``, ... (a unary chain; the
decisions from the ``TAIL``-th on share one node class). Each decision's probability is a logistic
mix of ``MODELS`` adaptive bit probabilities, one per context of the value (see :func:`model_batch`),
with mixer weights selected by node class x activity x two texture bits, squashed back to a
probability. The leaf masses of all values 0..vmax are the products along the chain (integers);
range coding them is the caller's business (``constriction``).
"""

from __future__ import annotations

import numba
import numpy as np

#: squash(x) = 65536 / (1 + exp(-x / 256)) at x = -2048, -1920, ..., 2048, rounded (linear in between).
_SQUASH = np.array([22, 36, 60, 98, 162, 267, 439, 720, 1179, 1921, 3108, 4971, 7812, 11955, 17625, 24743, 32768,
                    40793, 47911, 53581, 57724, 60565, 62428, 63615, 64357, 64816, 65097, 65269, 65374, 65438,
                    65476, 65500, 65514], dtype=np.int64)
MODELS = 7  # context models mixed per decision
TAIL = 2  # unary decisions per side with their own node class (the later ones share the last)
NODES = 2 + 2 * TAIL  # node classes: zero, sign, TAIL per side
MIX_SETS = 64  # mixer weight sets per node class (11 activity classes x 4 texture patterns, padded)
_COUNT_LIMIT = 255  # adaptive bit probabilities: rate 2 / (2 n + 3), n capped here
_MIX_SHIFT = 16  # mixer learning rate 2**-16
_MASS = 1 << 40  # total leaf mass before the +1 floor
_ACTIVITY_EDGES = (0, 1, 2, 3, 4, 6, 8, 11, 15, 20)
_ACTIVITY_CLASS = np.searchsorted(np.array(_ACTIVITY_EDGES), np.arange(200), side="right").astype(np.int64)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _squash(x: int) -> int:  # pragma: no cover - compiled
    if x > 2047:
        x = 2047
    if x < -2047:
        x = -2047
    x += 2048
    j, fraction = x >> 7, x & 127
    return (_SQUASH[j] * (128 - fraction) + _SQUASH[j + 1] * fraction) >> 7


def _stretch_table() -> np.ndarray:
    """stretch(p >> 4) for 16-bit probabilities: the smallest x in -2047..2047 with squash(x) >> 4 >= p."""
    table = np.full(4096, 2047, dtype=np.int64)
    filled = 0
    for x in range(-2047, 2048):
        p = _squash(x) >> 4
        table[filled : p + 1] = x
        filled = max(filled, p + 1)
    return table


_STRETCH = _stretch_table()
_RATE = np.array([131072 // (2 * k + 3) for k in range(_COUNT_LIMIT + 1)], dtype=np.int64)
_SIZES = (16 * 11, 64, 32, 256, 16, 49, 625)  # contexts per model, before the fraction class


def new_state(n: int, fractions: int) -> tuple[np.ndarray, ...]:
    """(probabilities, counts, offsets, mixer weights, errors, row sums, row counts, column sums,
    column counts) of a fresh model of an n x n matrix with ``fractions`` prediction-fraction classes."""
    offsets = np.zeros(MODELS + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.array(_SIZES, dtype=np.int64) * fractions * NODES)
    weights = np.zeros((NODES * MIX_SETS, MODELS + 1), dtype=np.int64)
    weights[:, :MODELS] = (1 << 16) // MODELS
    return (np.full(offsets[-1], 32768, dtype=np.int64), np.zeros(offsets[-1], dtype=np.int64), offsets, weights,
            np.zeros(n * n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _mixed(probs: np.ndarray, weights: np.ndarray, contexts: np.ndarray, i: int, node: int, mix: int) -> int:  # pragma: no cover
    """The mixer's dot product (stretch units << 16) for decision ``node`` of value ``i``."""
    row = node * MIX_SETS + mix
    dot = weights[row, MODELS] * 256
    for k in range(MODELS):
        dot += weights[row, k] * _STRETCH[probs[contexts[i, k] + node] >> 4]
    return dot


@numba.njit(cache=True, nogil=True, boundscheck=False)
def model_batch(grid: np.ndarray, t: int, low: int, stride: int, pad: int, relative: np.ndarray, taps: np.ndarray,
                n: int, vmax: int, fractions: int, shift: int, probs: np.ndarray, offsets: np.ndarray, weights: np.ndarray,
                errors: np.ndarray, row_sum: np.ndarray, row_count: np.ndarray, col_sum: np.ndarray,
                col_count: np.ndarray, features: np.ndarray, contexts: np.ndarray, geometry: np.ndarray,
                leaves: np.ndarray) -> None:  # pragma: no cover - compiled
    """Leaf masses (``leaves[i, 0..vmax]``, integers >= 1) of a batch of values.

    The batch is wavefront ``t`` of a one-strip layout, rows ``low`` on; ``grid``: the padded
    matrix (``pad`` border cells, rows of ``stride`` cells, exact small integers as float64) with
    every earlier wavefront filled in. ``relative`` and ``taps``: the predictor's neighbours (flat
    offsets in ``grid``) and their weights (units of 2**-shift), then the offsets of N, W, NE, NW,
    NN, WW and of the five pairs whose absolute differences sum to the activity (see
    :class:`storage.compact_pae._Support`). Value i is at row low + i, column t - 2 (low + i). Writes
    each value's features (prediction, activity, N, W, NE, NW, NN, WW), context offsets and
    (origin, sign, mixer set) for :func:`update_batch`.
    """
    used, m = len(taps), features.shape[0]
    first, along = (low + pad) * stride + pad + t - 2 * low, stride - 2  # value i's cell: first + i * along
    # the predictions, tap by tap over the batch: float64 products and sums of integers far below
    # 2**53 are exact in any order (or fused), so this is integer arithmetic, vectorised
    quads = used - used % 4
    for i in range(m):
        centre = first + i * along
        s0 = s1 = s2 = s3 = 0.0
        for k in range(0, quads, 4):
            s0 += taps[k] * grid[centre + relative[k]]
            s1 += taps[k + 1] * grid[centre + relative[k + 1]]
            s2 += taps[k + 2] * grid[centre + relative[k + 2]]
            s3 += taps[k + 3] * grid[centre + relative[k + 3]]
        for k in range(quads, used):
            s0 += taps[k] * grid[centre + relative[k]]
        prediction = int((s0 + s1) + (s2 + s3))
        features[i, 0] = prediction
        for k in range(6):
            features[i, 2 + k] = np.int64(grid[centre + relative[used + k]])
        differences = 0
        for k in range(5):
            a, b = centre + relative[used + 6 + 2 * k], centre + relative[used + 7 + 2 * k]
            differences += abs(int(grid[a]) - int(grid[b]))
        features[i, 1] = differences
        activity = _ACTIVITY_CLASS[min(differences, 199)]
        if fractions == 4:  # eighths: origin = rounded prediction, f = distance to it in eighths
            q = prediction >> (shift - 3)
            up = (q & 7) >> 2
            origin, f = (q >> 3) + up, (q & 7) if up == 0 else 7 - (q & 7)
        else:  # quarters
            q = prediction >> (shift - 2)
            up = (q & 3) >> 1
            origin, f = (q >> 2) + up, (q & 3) ^ (3 * up)
        origin = min(max(origin, 0), vmax)
        sign = 1 - 2 * up
        texture = 0
        for k in range(2):  # N, W above the prediction (in the residual's orientation)
            if (features[i, 2 + k] << shift) * sign > prediction * sign:
                texture |= 1 << k
        r = low + i
        c = t - 2 * r
        at = r * n + c
        row_mean = row_sum[r] * 4 // row_count[r] if row_count[r] > 0 else 0
        col_mean = col_sum[c] * 4 // col_count[c] if col_count[c] > 0 else 0
        e_n = errors[at - n] if r > 0 else 0
        e_w = errors[at - 1] if c > 0 else 0
        e_ne = errors[at - n + 1] if r > 0 and c < n - 1 else 0
        e_nw = errors[at - n - 1] if r > 0 and c > 0 else 0
        bias = (e_n + e_w) * sign
        qb = 0 if bias < -8 else (1 if bias < -3 else (2 if bias <= 3 else (3 if bias <= 8 else 4)))
        spread = abs(e_n) + abs(e_w) + abs(e_ne) + abs(e_nw)
        qs = 0 if spread < 2 else (1 if spread < 5 else (2 if spread < 10 else 3))
        near = 0
        for k in range(4):
            near = near * 5 + min(max((features[i, 2 + k] - origin) * sign, -2), 2) + 2
        chosen = (min(origin >> 1, 15) * 11 + activity, origin, min(row_mean >> 4, 7) * 4 + min(col_mean >> 5, 3),
                  min(row_mean >> 3, 15) * 16 + min(col_mean >> 3, 15), qb * 4 + qs,
                  min(origin, 6) * 7 + min(vmax - origin, 6), near)
        for k in range(MODELS):
            contexts[i, k] = offsets[k] + (chosen[k] * fractions + f) * NODES
        mix = activity * 4 + (texture & 3)
        geometry[i, 0], geometry[i, 1], geometry[i, 2] = origin, sign, mix
        up_max = vmax - origin if sign == 1 else origin  # largest residual on each side
        down_max = origin if sign == 1 else vmax - origin
        for v in range(vmax + 1):
            leaves[i, v] = 1
        p_zero = _squash(_mixed(probs, weights, contexts, i, 0, mix) >> 16)
        zero = (_MASS * p_zero) >> 16
        leaves[i, origin] += zero
        rest = _MASS - zero
        if up_max == 0:
            positive = 0
        elif down_max == 0:
            positive = rest
        else:
            positive = (rest * _squash(_mixed(probs, weights, contexts, i, 1, mix) >> 16)) >> 16
        for side in range(2):
            mass = positive if side == 0 else rest - positive
            limit = up_max if side == 0 else down_max
            step = sign if side == 0 else -sign
            p_stop = 0
            for k in range(limit):
                if k == limit - 1:
                    take = mass
                else:
                    if k < TAIL:  # from TAIL - 1 on, one node class: its probability is reused
                        p_stop = _squash(_mixed(probs, weights, contexts, i, 2 + side * TAIL + k, mix) >> 16)
                    take = (mass * p_stop) >> 16
                leaves[i, origin + step * (k + 1)] += take
                mass -= take


@numba.njit(cache=True, nogil=True, boundscheck=False)
def update_batch(values: np.ndarray, features: np.ndarray, t: int, low: int, n: int, vmax: int, shift: int,
                 probs: np.ndarray, counts: np.ndarray, weights: np.ndarray, errors: np.ndarray,
                 row_sum: np.ndarray, row_count: np.ndarray, col_sum: np.ndarray, col_count: np.ndarray,
                 contexts: np.ndarray, geometry: np.ndarray) -> None:  # pragma: no cover - compiled
    """Learn a coded batch, value by value in order: the decisions on each value's path update
    their context probabilities and mixer weights; then its error and row/column sums."""
    stretched = np.zeros(MODELS + 1, dtype=np.int64)
    stretched[MODELS] = 256
    for i in range(values.shape[0]):
        origin, sign, mix = geometry[i, 0], geometry[i, 1], geometry[i, 2]
        r = sign * (values[i] - origin)
        up_max = vmax - origin if sign == 1 else origin
        down_max = origin if sign == 1 else vmax - origin
        side = 0 if r > 0 else 1
        limit = up_max if side == 0 else down_max
        steps = 1 if r == 0 else 1 + (1 if up_max > 0 and down_max > 0 else 0) + min(abs(r), limit - 1)
        for j in range(steps):
            if j == 0:
                node, bit = 0, 1 if r == 0 else 0
            elif j == 1 and up_max > 0 and down_max > 0:
                node, bit = 1, 1 if r > 0 else 0
            else:
                k = j - 1 - (1 if up_max > 0 and down_max > 0 else 0)
                node, bit = 2 + side * TAIL + min(k, TAIL - 1), 1 if k == abs(r) - 1 else 0
            row = node * MIX_SETS + mix
            dot = weights[row, MODELS] * 256
            for k in range(MODELS):
                stretched[k] = _STRETCH[probs[contexts[i, k] + node] >> 4]
                dot += weights[row, k] * stretched[k]
            error = (bit << 16) - _squash(dot >> 16)
            for k in range(MODELS + 1):
                weights[row, k] += (stretched[k] * error) >> _MIX_SHIFT
            for k in range(MODELS):
                at = contexts[i, k] + node
                p = probs[at] + ((((bit << 16) - probs[at]) * _RATE[counts[at]]) >> 16)
                probs[at] = min(max(p, 64), 65472)
                if counts[at] < _COUNT_LIMIT:
                    counts[at] += 1
        r = low + i
        c = t - 2 * r
        errors[r * n + c] = values[i] * 4 - (features[i, 0] >> (shift - 2))
        row_sum[r] += values[i]
        row_count[r] += 1
        col_sum[c] += values[i]
        col_count[c] += 1


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=True)
def accumulate_normal(grid: np.ndarray, t: int, low: int, stride: int, pad: int, relative: np.ndarray, used: int,
                      damp: float, values: np.ndarray, columns: np.ndarray, gram: np.ndarray,
                      moment: np.ndarray) -> None:  # pragma: no cover - compiled
    """gram += X^T S X and moment += X^T S values for the batch's values (the encoder's least
    squares: floating point in any order, fastmath; the decoder only sees the rounded weights).

    X's rows are the predictor's neighbours of each value (as in :func:`model_batch`), S weighs
    each value by 1 / (damp + its activity); ``columns`` is scratch of at least (used, batch size).
    """
    first, along, m = (low + pad) * stride + pad + t - 2 * low, stride - 2, values.shape[0]
    scale = np.empty(m)
    for i in range(m):
        centre = first + i * along
        for a in range(used):
            columns[a, i] = grid[centre + relative[a]]
        differences = 0.0
        for k in range(5):
            differences += abs(grid[centre + relative[used + 6 + 2 * k]] - grid[centre + relative[used + 7 + 2 * k]])
        scale[i] = 1.0 / (damp + differences)
    for a in range(used):
        weighted = columns[a, :m] * scale
        total = 0.0
        for i in range(m):
            total += weighted[i] * values[i]
        moment[a] += total
        for b in range(a, used):
            total = 0.0
            for i in range(m):
                total += weighted[i] * columns[b, i]
            gram[a, b] += total
