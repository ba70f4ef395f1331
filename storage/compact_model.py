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
  (per kind of value and atom name), each with a one-byte model (a geometric or flat law of a
  chosen scale) picked by the encoder and stored in front of the coded words.

pLDDT (hundredths): differences along the chain, one geometric model.
"""

from __future__ import annotations

import numpy as np

from storage.compact_entropy import FLAT, GEOMETRIC, Decoder, Encoder, best_model
from storage.compact_geometry import _depths, _dot, _framed, _frames
from storage.compact_table import CLASS_TABLE, INDEX_PROBABILITIES
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

# value kinds (group key = kind * 64 + atom37 index)
_PLAIN, _CA_SMALL, _CA_BIG, _R0, _R1, _R2, _SMALL, _BIG = range(8)
_CA_LENGTH = 3800  # CA-CA distance of a trans peptide, thousandths of an Angstrom
_OFFSETS = np.array([(a, b, c) for a in (0, -1, 1) for b in (0, -1, 1) for c in (0, -1, 1)], dtype=np.float64)
_BALL = 0.76  # squared radius of the candidates around E^T q (>= 3/4: the rounding cube's corners)
_ESCAPE = len(_OFFSETS)
_SENTINEL = 0x5A3C


def sidechain_frames(sequence: str, mask: np.ndarray, ref: np.ndarray, g: np.ndarray, gg: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Format 3 frames: format 2's (``g``, ``gg``) with the side-chain overrides (new arrays)."""
    g, gg = g.copy(), gg.copy()
    stored = np.full(mask.shape, -1, dtype=np.int64)
    stored[mask] = np.arange(int(mask.sum()))
    letters = np.array(list(sequence)) if sequence else np.zeros(0, dtype="<U1")
    rules = [(letter, atom, "CB", "CA", "N") for letter in _RESTYPES for atom in _CB_BONDED]
    rules += [(letter, atom, _parent_of(letter, sibling), _grandparent(letter, sibling), sibling)
              for (letter, atom), sibling in _SIBLING.items()]
    for letter, atom, parent, frame_g, frame_gg in rules:
        rows = np.nonzero(letters == letter)[0]
        if not rows.size:
            continue
        x, p, a, b = (stored[rows, _INDEX[n]] for n in (atom, parent, frame_g, frame_gg))
        ok = (x >= 0) & (p >= 0) & (a >= 0) & (b >= 0)
        ok[ok] &= ref[x[ok]] == p[ok]
        g[x[ok]], gg[x[ok]] = a[ok], b[ok]
    return g, gg


def _parent_of(letter: str, atom: str) -> str:
    if atom in _CB_BONDED:
        return "CB"
    return {"OD1": "CG", "CD1": "CG", "ND1": "CG", "OE1": "CD", "NH1": "CZ"}[atom]


def _grandparent(letter: str, atom: str) -> str:
    parent = _parent_of(letter, atom)
    return {"CB": "CA", "CG": "CB", "CD": "CG", "CZ": "NE"}[parent]


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


def _center(q: np.ndarray, e: tuple[np.ndarray, ...]) -> np.ndarray:
    qf = q.astype(np.float64)
    return qf[:, 0:1] * e[0] + qf[:, 1:2] * e[1] + qf[:, 2:3] * e[2]


def _candidates(q: np.ndarray, e: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base (k, 3) int64, order (k, 27) offset indices, count (k,)): the integer points d near
    E^T q with rint(E d) == q, as base + _OFFSETS[order[:, :count]], nearest first.

    d - E^T q is the rounding error of q turned back (at most sqrt(3)/2 long), so d lies within
    that ball around E^T q, and within one of rint(E^T q) in each coordinate: the 27 offsets.
    """
    center = _center(q, e)
    base = np.rint(center)
    frac = center - base
    diff = _OFFSETS[None, :, :] - frac[:, None, :]
    dist = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    row, off = np.nonzero(dist <= _BALL)
    cand = base[row] + _OFFSETS[off]
    ok = np.ones(row.size, dtype=bool)
    for axis in range(3):
        ea = e[axis][row]
        ok &= np.rint(cand[:, 0] * ea[:, 0] + cand[:, 1] * ea[:, 1] + cand[:, 2] * ea[:, 2]) == q[row, axis]
    valid = np.zeros(dist.shape, dtype=bool)
    valid[row[ok], off[ok]] = True
    order = np.argsort(np.where(valid, dist, np.inf), axis=1, kind="stable")
    return base.astype(np.int64), order, valid.sum(axis=1)


def _index_rows(count: np.ndarray) -> np.ndarray:
    """Probability rows (k, 28) of the candidate index given the candidate count."""
    table = np.zeros((len(INDEX_PROBABILITIES) + 1, _ESCAPE + 1))
    for c, probs in enumerate(INDEX_PROBABILITIES, start=1):
        table[c, : len(probs)] = probs
    table[0, 0] = 1.0  # no candidate: only the escape is possible
    return table[np.minimum(count, len(INDEX_PROBABILITIES))]


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
        self.level = self.depth[self.rows]
        # index symbols are coded level by level (the decoder needs the previous levels' atoms)
        self.by_level = np.argsort(self.level, kind="stable")

    def groups(self) -> list[tuple[int, np.ndarray]]:
        """(group key, positions) of every value group, in coding order; positions index the
        concatenation of the value arrays of :meth:`_values` (see there)."""
        k = self.rows.size
        keys = [np.full(self.plain.size * 3, _PLAIN * 64), np.full(self.chained_ca.size * 2, _CA_SMALL * 64),
                np.full(self.chained_ca.size, _CA_BIG * 64), _R0 * 64 + self.atom,
                np.where(self.fixed, _R1, _SMALL) * 64 + self.atom, np.where(self.fixed, _R2, _BIG) * 64 + self.atom]
        assert sum(len(x) for x in keys) == self.plain.size * 3 + self.chained_ca.size * 3 + 3 * k
        allkeys = np.concatenate(keys).astype(np.int64)
        order = np.argsort(allkeys, kind="stable")
        uniq, starts = np.unique(allkeys[order], return_index=True)
        bounds = [*starts[1:], order.size]
        return [(int(u), order[s:t]) for u, s, t in zip(uniq, starts, bounds, strict=True)]


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
    for (_, pos), byte in zip(groups, models, strict=True):
        enc.ints(values[pos], byte)
    enc.uniform(ca_code, 6)
    enc.uniform(quadrant[~lay.fixed], 4)
    # candidate index of each framed atom's bond vector, level by level
    base, order, count = _candidates(q, e)
    true_offset = deltas[rows] - base
    hit = (_OFFSETS[order] == true_offset[:, None, :]).all(axis=2) & (np.arange(_ESCAPE) < count[:, None])
    index = np.where(hit.any(axis=1), np.argmax(hit, axis=1), _ESCAPE)
    for level in np.unique(lay.level):
        at = lay.by_level[lay.level[lay.by_level] == level]
        enc.symbols(index[at], _index_rows(count[at]))
        escaped = at[index[at] == _ESCAPE]
        enc.ints(true_offset[escaped].ravel(), 0)
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
    for (_, pos), byte in zip(groups, data[: len(groups)], strict=True):
        values[pos] = dec.ints(pos.size, byte)
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
    position = np.full(n, -1, dtype=np.int64)
    position[lay.rows] = np.arange(lay.rows.size)
    for level in range(1, int(lay.depth.max(initial=0)) + 1):
        at = lay.depth == level
        plain_rows = np.nonzero(at & ~lay.framed)[0]
        coords[plain_rows] = coords[ref[plain_rows]] + deltas[plain_rows]
        frame_rows = np.nonzero(at & lay.framed)[0]
        if not frame_rows.size:
            continue
        k = position[frame_rows]
        e = _frames(coords.astype(np.float64), ref[frame_rows], g[frame_rows], gg[frame_rows])
        base, order, count = _candidates(q[k], e)
        index = dec.symbols(_index_rows(count))
        if index.size and (index.max() > _ESCAPE or (index != _ESCAPE).any() and
                           (index[index != _ESCAPE] >= count[index != _ESCAPE]).any()):
            raise ValueError("compact record: bad coordinate candidate index")
        escaped = index == _ESCAPE
        offset = np.zeros((k.size, 3), dtype=np.int64)
        fine = np.nonzero(~escaped)[0]
        offset[fine] = _OFFSETS[order[fine, index[fine]]].astype(np.int64)
        offset[escaped] = dec.ints(int(escaped.sum()) * 3, 0).reshape(-1, 3)
        coords[frame_rows] = coords[ref[frame_rows]] + base + offset
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
