"""Format 3 coordinate and pLDDT coding: local frames, built-in geometry, entropy coding.

Same local frames as format 2 (:mod:`storage.compact_geometry`: each atom X with reference P and
frame atoms G, GG is stored as the integer frame components ``q = rint(E (X - P))``), with these
changes:

* **side-chain frames** (:func:`sidechain_frames`): an atom bonded to CB is placed in the
  (CB, CA, N) frame (its torsion is chi1) and an atom with a *sibling* (Val CG2 and CG1, Leu CD2
  and CD1, Asp OD2 and OD1, ring atoms CD2 and CD1, ...) in a frame through that sibling, where
  its position is fixed by the residue's geometry instead of depending on a torsion again;
* **built-in geometry** (:data:`storage.compact_table.CLASS_TABLE`, per residue type and atom,
  frozen with the format): an atom of a *fixed* class stores ``q`` minus the class's reference
  ``q``; a *free* class (a torsion) stores q0 minus its reference, the smaller of q1/q2 (the
  position on the circle), a quadrant code and the larger one's difference to the circle of the
  class's radius. CA atoms store their difference to the previous CA as the two smaller
  components, an axis/sign code and the larger one's difference to the 3.8 A sphere. No table
  is stored in the record;
* **no correction stream**: format 2 stored ``corr = (X - P) - rint(E^T q)`` (mostly 0, +-1).
  Format 3 stores the index of ``X - P`` among the integer points ``d`` near ``E^T q`` with
  ``rint(E d) == q`` (computed with the same operations in encoder and decoder); almost always
  there is one, so the index costs nearly nothing;
* **entropy coding** (:mod:`storage.compact_entropy`): the integers are range coded in groups
  (per kind of value, and per backbone atom N, C, O, CB or all side-chain atoms: 23 groups for a
  protein), each with a one-byte model (a geometric or flat law of a chosen scale) picked by the
  encoder and stored in front of the coded words; the candidate indices and codes with fixed
  uniform models; a 16-bit end marker checks the section.

pLDDT (hundredths): differences along the chain, one geometric model.

Measured on the five AFDB v4 entries of ``tests/data/afdb`` (``benchmarks/storage_size.py``):
coordinates + pLDDT 25.3-26.9 B per residue (format 2: 31.6-38.8); the built-in table fitted
without the entry measured costs it 0.03-0.09 B per residue more (``benchmarks/compact_table.py
--without``). Decoding is vectorised like format 2 (level by level), with a candidate search and
a few range-decoder calls per level on top.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np

from storage.compact_entropy import FLAT, GEOMETRIC, Decoder, Encoder, best_model
from storage.compact_geometry import _depths, _dot, _framed, _frames
from storage.compact_table import CLASS_TABLE
from storage.mmcif import ATOM_TYPES

__all__ = ["decode_coordinates", "decode_plddt", "encode_coordinates", "encode_plddt", "frame_components",
           "sidechain_frames"]

_INDEX = {name: i for i, name in enumerate(ATOM_TYPES)}
_RESTYPES = "ARNDCQEGHILKMFPSTWYVX"
_NA = len(ATOM_TYPES)

# (residue, atom) -> (parent, frame atom g, frame atom gg): overrides of the format 2 frames
_SIBLING = {("V", "CG2"): "CG1", ("I", "CG2"): "CG1", ("T", "CG2"): "OG1", ("L", "CD2"): "CD1",
            ("N", "ND2"): "OD1", ("D", "OD2"): "OD1", ("F", "CD2"): "CD1", ("Y", "CD2"): "CD1",
            ("W", "CD2"): "CD1", ("H", "CD2"): "ND1", ("Q", "NE2"): "OE1", ("E", "OE2"): "OE1",
            ("R", "NH2"): "NH1"}
_CB_BONDED = ("CG", "CG1", "CG2", "OG", "OG1", "SG")

# value kinds; group key = kind * 64 + context: the atom37 index of a backbone atom (and CB, OXT),
# 63 for every side-chain atom
_CONTEXT = np.full(_NA, 63, dtype=np.int64)
_CONTEXT[[_INDEX[n] for n in ("N", "C", "O", "CB", "OXT")]] = [_INDEX[n] for n in ("N", "C", "O", "CB", "OXT")]
_PLAIN, _CA_SMALL, _CA_BIG, _R0, _R1, _R2, _SMALL, _BIG = range(8)
_CA_LENGTH = 3800  # CA-CA distance of a trans peptide, thousandths of an Angstrom
_CORNERS = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
_CORNER_BITS = _CORNERS.T.astype(bool)
_BALL = 0.76  # squared radius of the candidates around E^T q (>= 3/4: the rounding cube's corners)
_ESCAPE = len(_CORNERS)
_SENTINEL = 0x5A3C


def _rule_table() -> np.ndarray:
    """(21 * 37, 3) atom37 indices (parent, g, gg) of each class's format 3 frame; -1 = format 2's."""
    table = np.full((len(_RESTYPES), _NA, 3), -1, dtype=np.int64)
    table[:, [_INDEX[a] for a in _CB_BONDED]] = (_INDEX["CB"], _INDEX["CA"], _INDEX["N"])
    parent_of = {"OD1": "CG", "CD1": "CG", "ND1": "CG", "OE1": "CD", "NH1": "CZ", "CG1": "CB", "OG1": "CB"}
    grandparent = {"CB": "CA", "CG": "CB", "CD": "CG", "CZ": "NE"}
    for (letter, atom), sibling in _SIBLING.items():
        parent = parent_of[sibling]
        table[_RESTYPES.index(letter), _INDEX[atom]] = (_INDEX[parent], _INDEX[grandparent[parent]], _INDEX[sibling])
    return table.reshape(-1, 3)


_RULES = _rule_table()


def sidechain_frames(mask: np.ndarray, classes: np.ndarray, ref: np.ndarray, g: np.ndarray, gg: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Format 3 frames: format 2's (``g``, ``gg``) with the side-chain overrides (new arrays).

    An override applies when its three atoms exist and the atom's reference is the usual parent.
    ``classes``: restype * 37 + atom37 of each stored atom.
    """
    g, gg = g.copy(), gg.copy()
    stored = np.full(mask.shape, -1, dtype=np.int64)
    stored[mask] = np.arange(int(mask.sum()))
    residue = np.nonzero(mask)[0]
    rule = _RULES[classes]
    x = np.nonzero(rule[:, 0] >= 0)[0]
    p, a, b = (stored[residue[x], rule[x, i]] for i in range(3))
    ok = (p >= 0) & (a >= 0) & (b >= 0) & (ref[x] == p)
    g[x[ok]], gg[x[ok]] = a[ok], b[ok]
    return g, gg


def frame_components(coords: np.ndarray, ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(framed rows, q (k, 3) int64, frames) of the framed atoms."""
    framed = _framed(ref, g, gg, is_ca)
    rows = np.nonzero(framed)[0]
    xf = coords.astype(np.float64)
    e = _frames(xf, ref[rows], g[rows], gg[rows])
    df = xf[rows] - xf[ref[rows]]
    q = np.rint(np.stack([_dot(df, e[0]), _dot(df, e[1]), _dot(df, e[2])], axis=1)).astype(np.int64)
    return rows, q, e


def _candidates(q: np.ndarray, e: tuple[np.ndarray, ...]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The integer points d near E^T q that round to q, as encoder and decoder both compute them.

    d - E^T q is q's rounding error turned back (at most sqrt(3)/2 long), so each coordinate of d
    is rint(E^T q) = base or its neighbour on the side of E^T q: 8 corners; kept are those within
    that ball with rint(E d) == q (the encoder's own operations, so the true d is always kept).
    Returns (base (k, 3), offsets (m, 3), count (k,), start (k,)), int64: row i's candidates are
    base[i] + offsets[start[i] : start[i] + count[i]], in corner order.
    """
    qf = np.ascontiguousarray(q.T, dtype=np.float64)
    et = np.ascontiguousarray(np.stack(e).transpose(0, 2, 1))  # (axis, component, k)
    center = qf[0] * et[0] + qf[1] * et[1] + qf[2] * et[2]
    base = np.rint(center)
    frac = center - base
    far = 1.0 - np.abs(frac)
    near2, far2 = frac * frac, far * far
    dist = np.where(_CORNER_BITS[0][:, None], far2[0], near2[0]) + np.where(_CORNER_BITS[1][:, None], far2[1], near2[1])
    dist += np.where(_CORNER_BITS[2][:, None], far2[2], near2[2])
    row, corner = np.nonzero((dist <= _BALL).T)
    side = np.where(frac < 0, -1.0, 1.0)
    offsets = _CORNERS[corner].T * side[:, row]  # (3, m)
    cand = base[:, row] + offsets
    ok = np.ones(row.size, dtype=bool)
    for axis in range(3):  # the expression of frame_components: rint(d . e_axis)
        ea = et[axis][:, row]
        ok &= np.rint(cand[0] * ea[0] + cand[1] * ea[1] + cand[2] * ea[2]) == qf[axis, row]
    count = np.bincount(row[ok], minlength=q.shape[0])
    return base.T.astype(np.int64), offsets[:, ok].T.astype(np.int64), count, np.cumsum(count) - count


@cache
def _index_model(count: int) -> tuple[float, ...]:
    """Probabilities of the candidate index (0..7, 8 = escape) given the number of candidates:
    equally likely (measured: 50/50 for two, 37/34/29 % for three); no candidate: the escape."""
    return tuple(1.0 if i < count or (count == 0 and i == _ESCAPE) else 0.0 for i in range(_ESCAPE + 1))


_CLASS_ARRAY = np.array([CLASS_TABLE.get(c, (0, 0, 0, 0, 0)) for c in range(len(_RESTYPES) * _NA)],
                        dtype=np.int64)


def _classes_info(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fixed bool, q reference (k, 3), radius, atom37) per framed atom class."""
    info = _CLASS_ARRAY[classes]
    return info[:, 4] == 1, info[:, :3], info[:, 3], classes % _NA


def _circle(radius: np.ndarray, small: np.ndarray) -> np.ndarray:
    r, s = radius.astype(np.float64), small.astype(np.float64)
    return np.rint(np.sqrt(np.maximum(r * r - s * s, 0.0))).astype(np.int64)


def _sphere(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    return np.rint(np.sqrt(np.maximum(float(_CA_LENGTH) ** 2 - fa * fa - fb * fb, 0.0))).astype(np.int64)


class _Layout:
    """Which atoms are coded how (derived identically by encoder and decoder)."""

    def __init__(self, ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray, classes: np.ndarray):
        self.framed = _framed(ref, g, gg, is_ca)
        self.rows = np.nonzero(self.framed)[0]
        self.chained_ca = np.nonzero(is_ca & (ref >= 0))[0]
        self.plain = np.nonzero(~self.framed & ~(is_ca & (ref >= 0)))[0]
        self.fixed, self.qref, self.radius, self.atom = _classes_info(classes[self.rows])
        self.depth = _depths(ref, g, gg, is_ca, self.framed)
        # the framed atoms level by level: the decoder needs the previous levels' atoms first
        position = np.full(ref.size, -1, dtype=np.int64)
        position[self.rows] = np.arange(self.rows.size)
        order = np.argsort(self.depth, kind="stable")
        starts = np.searchsorted(self.depth[order], np.arange(1, int(self.depth.max(initial=0)) + 2))
        self.levels = []  # (plain rows, framed rows, their positions in rows)
        for lo, hi in itertools.pairwise(starts):
            at = order[lo:hi]
            framed = self.framed[at]
            self.levels.append((at[~framed], at[framed], position[at[framed]]))

    def groups(self) -> list[tuple[int, np.ndarray]]:
        """(group key, positions) of every value group, in key order; positions index the values
        concatenated as :func:`encode_coordinates` lays them out (plain, CA, q0, q1/small, q2/big)."""
        context = _CONTEXT[self.atom]
        keys = [np.full(self.plain.size * 3, _PLAIN * 64), np.full(self.chained_ca.size * 2, _CA_SMALL * 64),
                np.full(self.chained_ca.size, _CA_BIG * 64), _R0 * 64 + context,
                np.where(self.fixed, _R1, _SMALL) * 64 + context, np.where(self.fixed, _R2, _BIG) * 64 + context]
        allkeys = np.concatenate(keys).astype(np.int16)
        order = np.argsort(allkeys, kind="stable")  # radix sort
        sizes = np.bincount(allkeys, minlength=8 * 64)
        present = np.nonzero(sizes)[0]
        bounds = np.cumsum(sizes[present])
        return [(int(u), order[t - n : t]) for u, n, t in zip(present, sizes[present], bounds, strict=True)]


def _families(key: int) -> tuple[int, ...]:
    return (FLAT, GEOMETRIC) if key // 64 in (_SMALL, _CA_SMALL, _PLAIN) else (GEOMETRIC,)


def encode_coordinates(coords: np.ndarray, ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray,
                       classes: np.ndarray) -> bytes:
    """The format 3 coordinate section's bytes (model bytes, then range-coded words)."""
    coords = np.asarray(coords, dtype=np.int64)
    lay = _Layout(ref, g, gg, is_ca, classes)
    rows, q, e = frame_components(coords, ref, g, gg, is_ca)
    deltas = coords - np.where(ref[:, None] >= 0, coords[np.maximum(ref, 0)], 0)
    # CA: two smaller components, axis/sign code, larger component against the sphere
    ca = deltas[lay.chained_ca]
    axis = np.argmax(np.abs(ca), axis=1) if ca.size else np.zeros(0, dtype=np.int64)
    big = ca[np.arange(ca.shape[0]), axis]
    others = np.stack([ca[np.arange(ca.shape[0]), (axis + 1) % 3], ca[np.arange(ca.shape[0]), (axis + 2) % 3]],
                      axis=1)
    ca_code = axis * 2 + (big < 0)
    ca_big = np.abs(big) - _sphere(others[:, 0], others[:, 1])
    # framed atoms
    r = q - lay.qref
    big_is_1 = np.abs(q[:, 1]) > np.abs(q[:, 2])
    small = np.where(big_is_1, q[:, 2], q[:, 1])
    qbig = np.where(big_is_1, q[:, 1], q[:, 2])
    quadrant = big_is_1.astype(np.int64) * 2 + (qbig < 0)
    big_residual = np.abs(qbig) - _circle(lay.radius, small)
    values = np.concatenate([deltas[lay.plain].ravel(), others.ravel(), ca_big, r[:, 0],
                             np.where(lay.fixed, r[:, 1], small), np.where(lay.fixed, r[:, 2], big_residual)])
    groups = lay.groups()
    models = [best_model(values[pos], _families(key)) for key, pos in groups]
    enc = Encoder()
    enc.groups([(values[pos], byte) for (_, pos), byte in zip(groups, models, strict=True)])
    enc.uniform(ca_code, 6)
    enc.uniform(quadrant[~lay.fixed], 4)
    # candidate index of each framed atom's bond vector, level by level
    base, offsets, count, start = _candidates(q, e)
    true_offset = deltas[rows] - base
    owner = np.repeat(np.arange(rows.size), count)
    hit = (offsets == true_offset[owner]).all(axis=1)
    index = np.full(rows.size, _ESCAPE, dtype=np.int64)
    index[owner[hit]] = (np.arange(owner.size) - start[owner])[hit]
    for _, _, k in lay.levels:
        for c in np.unique(count[k]):
            enc.categorical(index[k[count[k] == c]], _index_model(int(c)))
        enc.ints(true_offset[k[index[k] == _ESCAPE]].ravel(), 0)
    enc.uniform(np.array([_SENTINEL >> 8, _SENTINEL & 255]), 256)
    return bytes(models) + enc.finish()


def decode_coordinates(data: bytes, ref: np.ndarray, g: np.ndarray, gg: np.ndarray, is_ca: np.ndarray,
                       classes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_coordinates`: int64 (n_atoms, 3)."""
    n = ref.size
    lay = _Layout(ref, g, gg, is_ca, classes)
    groups = lay.groups()
    if len(data) < len(groups):
        raise ValueError("compact record: coordinate section is too short")
    dec = Decoder(data[len(groups):])
    total = lay.plain.size * 3 + lay.chained_ca.size * 3 + 3 * lay.rows.size
    values = np.zeros(total, dtype=np.int64)
    if groups:
        values[np.concatenate([pos for _, pos in groups])] = dec.groups(
            [(pos.size, byte) for (_, pos), byte in zip(groups, data[: len(groups)], strict=True)])
    ca_code = dec.uniform(lay.chained_ca.size, 6)
    quadrant = np.zeros(lay.rows.size, dtype=np.int64)
    quadrant[~lay.fixed] = dec.uniform(int((~lay.fixed).sum()), 4)
    cuts = np.cumsum([lay.plain.size * 3, lay.chained_ca.size * 2, lay.chained_ca.size, lay.rows.size,
                      lay.rows.size])
    plain, others, ca_big, r0, v1, v2 = np.split(values, cuts)
    deltas = np.zeros((n, 3), dtype=np.int64)
    deltas[lay.plain] = plain.reshape(-1, 3)
    others = others.reshape(-1, 2)
    axis, negative = ca_code // 2, ca_code % 2 == 1
    mag = _sphere(others[:, 0], others[:, 1]) + ca_big
    m = np.arange(axis.size)
    ca = np.zeros((axis.size, 3), dtype=np.int64)
    ca[m, axis] = np.where(negative, -mag, mag)
    ca[m, (axis + 1) % 3] = others[:, 0]
    ca[m, (axis + 2) % 3] = others[:, 1]
    deltas[lay.chained_ca] = ca
    big_is_1 = quadrant >= 2
    qmag = _circle(lay.radius, v1) + v2
    qbig = np.where(quadrant % 2 == 1, -qmag, qmag)
    q_free = np.stack([r0 + lay.qref[:, 0], np.where(big_is_1, qbig, v1), np.where(big_is_1, v1, qbig)], axis=1)
    q = np.where(lay.fixed[:, None], np.stack([r0, v1, v2], axis=1) + lay.qref, q_free)
    coords = np.zeros((n, 3), dtype=np.int64)
    absolute = (ref < 0) & ~is_ca
    coords[absolute] = deltas[absolute]
    ca_rows = np.nonzero(is_ca)[0]
    coords[ca_rows] = np.cumsum(deltas[ca_rows], axis=0)
    xf = coords.astype(np.float64)
    for plain_rows, frame_rows, k in lay.levels:
        coords[plain_rows] = coords[ref[plain_rows]] + deltas[plain_rows]
        xf[plain_rows] = coords[plain_rows]
        if not frame_rows.size:
            continue
        e = _frames(xf, ref[frame_rows], g[frame_rows], gg[frame_rows])
        base, offsets, count, start = _candidates(q[k], e)
        index = np.zeros(k.size, dtype=np.int64)
        for c in np.unique(count):
            index[count == c] = dec.categorical(int((count == c).sum()), _index_model(int(c)))
        escaped = index == _ESCAPE
        if (index[~escaped] >= count[~escaped]).any():
            raise ValueError("compact record: bad coordinate candidate index")
        offset = np.zeros((k.size, 3), dtype=np.int64)
        fine = np.nonzero(~escaped)[0]
        offset[fine] = offsets[start[fine] + index[fine]]
        offset[escaped] = dec.ints(int(escaped.sum()) * 3, 0).reshape(-1, 3)
        coords[frame_rows] = coords[ref[frame_rows]] + base + offset
        xf[frame_rows] = coords[frame_rows]
    if dec.uniform(2, 256).tolist() != [_SENTINEL >> 8, _SENTINEL & 255]:
        raise ValueError("compact record: coordinate section is corrupt (end marker)")
    return coords


def encode_plddt(plddt: np.ndarray) -> bytes:
    diffs = np.diff(np.asarray(plddt, dtype=np.int64), prepend=0)
    byte = best_model(diffs)
    enc = Encoder()
    enc.ints(diffs, byte)
    return bytes([byte]) + enc.finish()


def decode_plddt(data: bytes, n: int) -> np.ndarray:
    if not n:
        return np.zeros(0, dtype=np.int64)
    if not data:
        raise ValueError("compact record: pLDDT section is empty")
    return np.cumsum(Decoder(data[1:]).ints(n, data[0]))
