"""Lossless coordinate coding for compact records: local bond frames with integer residuals.

Each atom ``X`` (int64 thousandths of an Angstrom) has a bonded reference atom ``P`` (see
:func:`storage.compact._references`), P's reference ``G`` and G's reference ``GG``. When all three
exist and X is not a CA, the bond vector ``d = X - P`` is expressed in the orthonormal frame
built from them (``e1`` along G->P, ``e2`` the part of GG->G orthogonal to e1, ``e3 = e1 x e2``)
and rounded to integers ``q``; the decoder turns ``q`` back with the same floating-point
operations on the same (already decoded, exact) integer coordinates, so ``corr = d -
rint(q0 e1 + q1 e2 + q2 e3)`` is reproduced exactly and the coding is lossless for any input.
Only IEEE-exact operations (+, -, *, /, sqrt, rint, in a fixed order) are used, so encoder and
decoder agree bit for bit on every platform.

Why it is small: ``q0`` is about ``-b cos(angle)``, nearly constant per (residue type, atom):
a per-class offset (the median, stored in the record) is subtracted. ``(q1, q2)`` lie near a
circle of radius ``b sin(angle)`` (per-class median radius, stored): the smaller-magnitude
component is stored, with the larger one's sign and its difference to
``sqrt(radius^2 - small^2)``. ``corr`` is almost always 0 or +-1.

CA atoms (chained to the previous CA) and atoms without a full reference chain (the first
residues, unusual masks) are stored as plain differences to their reference atom.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_coordinates", "encode_coordinates"]


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _frames(x: np.ndarray, p: np.ndarray, g: np.ndarray, gg: np.ndarray) -> tuple[np.ndarray, ...]:
    """Orthonormal frames (e1, e2, e3), each (k, 3) float64, from float64 coordinates ``x``."""
    k = p.size
    a = x[p] - x[g]
    na = _norm(a)
    e1 = np.where((na > 0)[:, None], a / np.where(na > 0, na, 1.0)[:, None], np.array([1.0, 0.0, 0.0]))
    v = x[g] - x[gg]
    v = v - _dot(v, e1)[:, None] * e1
    nv = _norm(v)
    degenerate = nv <= 1e-6
    if degenerate.any():  # colinear or coincident references: any axis orthogonal to e1 will do
        axis = np.argmin(np.abs(e1), axis=1)
        u = np.zeros((k, 3))
        u[np.arange(k), axis] = 1.0
        u = u - _dot(u, e1)[:, None] * e1
        v = np.where(degenerate[:, None], u, v)
        nv = _norm(v)
    e2 = v / nv[:, None]
    e3 = np.stack([e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1],
                   e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                   e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]], axis=1)
    return e1, e2, e3


def _unrotate(q: np.ndarray, e1: np.ndarray, e2: np.ndarray, e3: np.ndarray) -> np.ndarray:
    qf = q.astype(np.float64)
    out = qf[:, 0:1] * e1 + qf[:, 1:2] * e2
    out = out + qf[:, 2:3] * e3
    return np.rint(out).astype(np.int64)


def chain_frames(ref: np.ndarray, is_ca: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Format 1 frames: (g, gg) = the reference's reference and its reference (-1 = none)."""
    g = np.where(ref >= 0, ref[np.maximum(ref, 0)], -1)
    gg = np.where(g >= 0, ref[np.maximum(g, 0)], -1)
    return g, gg


def _framed(ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray) -> np.ndarray:
    return (~is_ca) & (ref >= 0) & (g >= 0) & (gg >= 0)


def _circle_prediction(radius: np.ndarray, small: np.ndarray) -> np.ndarray:
    r, s = radius.astype(np.float64), small.astype(np.float64)
    return np.rint(np.sqrt(np.maximum(r * r - s * s, 0.0))).astype(np.int64)


def _depths(ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray, framed: np.ndarray) -> np.ndarray:
    """Decoding level of each atom: CA and absolute atoms 0, others one more than every atom they use."""
    depth = np.where(is_ca | (ref < 0), 0, -1)
    uses = [ref, np.where(framed, g, ref), np.where(framed, gg, ref)]
    for _ in range(64):
        todo = np.nonzero(depth < 0)[0]
        if not todo.size:
            return depth
        parents = np.stack([depth[u[todo]] for u in uses])
        depth[todo] = np.where((parents >= 0).all(axis=0), parents.max(axis=0) + 1, -1)
    raise ValueError("compact record: atom references form a cycle")


def encode_coordinates(coords: np.ndarray, ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray,
                       classes: np.ndarray, columns: int = 2) -> list[np.ndarray]:
    """Integer streams: plain deltas, class table, q0 - offset, small, code, big residual, corr.

    ``columns`` 2 (format 1): the class table holds (q0 offset, radius); 3 (format 2): also the
    median of ``small``, subtracted from it (atoms whose torsion is fixed by the frame, such as a
    CB in the N-CA-C frame, then store only the noise).
    """
    coords = np.asarray(coords, dtype=np.int64)
    framed = _framed(ref, g, gg, is_ca)
    deltas = coords - np.where(ref[:, None] >= 0, coords[np.maximum(ref, 0)], 0)
    rows = np.nonzero(framed)[0]
    e1, e2, e3 = _frames(coords.astype(np.float64), ref[rows], g[rows], gg[rows])
    d = deltas[rows]
    df = d.astype(np.float64)
    q = np.rint(np.stack([_dot(df, e1), _dot(df, e2), _dot(df, e3)], axis=1)).astype(np.int64)
    corr = d - _unrotate(q, e1, e2, e3)
    present, index = np.unique(classes[rows], return_inverse=True)
    table = np.zeros((present.size, columns), dtype=np.int64)
    hyp = np.sqrt(q[:, 1].astype(np.float64) ** 2 + q[:, 2].astype(np.float64) ** 2)
    big_is_1 = np.abs(q[:, 1]) > np.abs(q[:, 2])
    small = np.where(big_is_1, q[:, 2], q[:, 1])
    big = np.where(big_is_1, q[:, 1], q[:, 2])
    for i in range(present.size):
        sel = index == i
        table[i, 0] = int(np.rint(np.median(q[sel, 0])))
        table[i, 1] = int(np.rint(np.median(hyp[sel])))
        if columns > 2:
            table[i, 2] = int(np.rint(np.median(small[sel])))
    code = big_is_1.astype(np.int64) * 2 + (big < 0)
    big_residual = np.abs(big) - _circle_prediction(table[index, 1], small)
    small_stored = small - table[index, 2] if columns > 2 else small
    return [deltas[~framed], table, q[:, 0] - table[index, 0], small_stored, code, big_residual, corr]


def stream_sizes(ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray, classes: np.ndarray,
                 columns: int = 2) -> list[int]:
    """How many integers each stream of :func:`encode_coordinates` holds (the decoder's expectations)."""
    framed = _framed(ref, g, gg, is_ca)
    k = int(framed.sum())
    n_classes = np.unique(classes[framed]).size
    return [int((~framed).sum()) * 3, n_classes * columns, k, k, k, k, k * 3]


def decode_coordinates(streams: list[np.ndarray], ref: np.ndarray, g: np.ndarray, gg: np.ndarray,
                       is_ca: np.ndarray, classes: np.ndarray, columns: int = 2) -> np.ndarray:
    """Inverse of :func:`encode_coordinates`: int64 (n_atoms, 3) coordinates."""
    plain, table, q0r, small, code, big_residual, corr = streams
    n = ref.size
    framed = _framed(ref, g, gg, is_ca)
    rows = np.nonzero(framed)[0]
    _, index = np.unique(classes[rows], return_inverse=True)
    table = table.reshape(-1, columns)
    if code.size and (code.min() < 0 or code.max() > 3):
        raise ValueError("compact record: bad coordinate codes")
    if columns > 2:
        small = small + table[index, 2]
    mag = _circle_prediction(table[index, 1], small) + big_residual
    big = np.where(code % 2 == 1, -mag, mag)
    big_is_1 = code >= 2
    q = np.stack([q0r + table[index, 0], np.where(big_is_1, big, small), np.where(big_is_1, small, big)], axis=1)
    corr = corr.reshape(-1, 3)
    deltas = np.zeros((n, 3), dtype=np.int64)
    deltas[~framed] = plain.reshape(-1, 3)
    coords = np.zeros((n, 3), dtype=np.int64)
    absolute = (ref < 0) & ~is_ca
    coords[absolute] = deltas[absolute]
    ca_rows = np.nonzero(is_ca)[0]
    coords[ca_rows] = np.cumsum(deltas[ca_rows], axis=0)  # CA chain: first absolute, then differences
    position = np.full(n, -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    depth = _depths(ref, g, gg, is_ca, framed)
    for level in range(1, int(depth.max(initial=0)) + 1):
        at = depth == level
        plain_rows = np.nonzero(at & ~framed)[0]
        coords[plain_rows] = coords[ref[plain_rows]] + deltas[plain_rows]
        frame_rows = np.nonzero(at & framed)[0]
        if frame_rows.size:
            e1, e2, e3 = _frames(coords.astype(np.float64), ref[frame_rows], g[frame_rows], gg[frame_rows])
            k = position[frame_rows]
            coords[frame_rows] = coords[ref[frame_rows]] + _unrotate(q[k], e1, e2, e3) + corr[k]
    return coords
