"""PAE coding for compact records: a lossless JPEG XL greyscale image (format 2), 2-D deltas (format 1).

A PAE matrix is an L x L image of small integers (AFDB v4: integer Angstrom, 0-31) that is smooth
in blocks (domains) and along the diagonal band, with +-1 noise. Format 2 stores it as a lossless
JPEG XL image (ISO/IEC 18181, libjxl through ``imagecodecs``): one 8-bit grey channel (16-bit
when a value exceeds 255; the record format allows 0-65535). JPEG XL's modular mode predicts each
pixel from its causal neighbours (including its self-correcting weighted predictor) and
entropy-codes the residuals with contexts chosen by a learned decision tree (the "MA tree"); on
the five real AFDB entries this is 13-23 % smaller than the format 1 coding and 3-6 % smaller
on the four larger ones than the best context-modelled residual coders we costed by hand (MED or
weighted-mix prediction with adaptive per-context histograms, ideal code lengths; 2 % larger on
the 118-residue one; see docs/benchmarks.md). Lossless JPEG XL
decodes to the exact input samples by definition, so the rendered PAE JSON is byte-identical.

Effort (encoder speed vs size; it does not change the decoder): 9 up to 256 residues (tens of
milliseconds), 7 above (about 1.4 s for 957 residues on one core; effort 9 would take 4 s for a
further 2 %). Decoding takes 2-3 ms at 118 residues and about 0.1 s at 957.

Format 1 (still read): the 2-D difference image (each value minus its upper and left neighbours
plus the upper-left one), zigzag coded and compressed with zstd by :mod:`storage.compact`.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["decode_pae_image", "encode_pae_image", "pae_deltas", "undo_pae_deltas"]

_SMALL_EFFORT, _LARGE_EFFORT, _SMALL_SIZE = 9, 7, 256


def encode_pae_image(pae: np.ndarray) -> tuple[int, bytes]:
    """(bytes per sample, JPEG XL bytes) of an (L, L) integer matrix with values 0-65535; L >= 1."""
    import imagecodecs  # heavy; only the write and PAE paths need it

    values = np.asarray(pae, dtype=np.int64)
    width = 1 if int(values.max(initial=0)) <= 255 else 2
    image = np.ascontiguousarray(values.astype(np.uint8 if width == 1 else np.uint16))
    effort = _SMALL_EFFORT if values.shape[0] <= _SMALL_SIZE else _LARGE_EFFORT
    return width, bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=effort, numthreads=1))


def decode_pae_image(data: bytes, width: int, n: int) -> np.ndarray:
    """Inverse of :func:`encode_pae_image`: int64 (n, n).

    Raises:
        ValueError: the bytes are not a JPEG XL image of that size and sample width.
    """
    import imagecodecs

    try:
        image = np.asarray(imagecodecs.jpegxl_decode(data, numthreads=1))
    except (RuntimeError, ValueError) as e:  # imagecodecs.JpegxlError is a RuntimeError
        raise ValueError(f"compact record: the PAE image does not decode: {e}") from e
    expected = np.dtype(np.uint8 if width == 1 else np.uint16)
    if image.shape != (n, n) or image.dtype != expected:
        raise ValueError(f"compact record: PAE image is {image.shape} {image.dtype}, expected ({n}, {n}) {expected}")
    return image.astype(np.int64)


def pae_deltas(pae: np.ndarray) -> np.ndarray:
    """Format 1: each value minus its upper and left neighbours plus the upper-left one."""
    return np.diff(np.diff(pae, axis=0, prepend=0), axis=1, prepend=0)


def undo_pae_deltas(deltas: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pae_deltas`."""
    return np.cumsum(np.cumsum(deltas, axis=0), axis=1)


# ----------------------------------------------------------------------------------------------
# Format 3: least-squares prediction + adaptive context model + range coding (constriction)
# ----------------------------------------------------------------------------------------------

#: Causal neighbours (row, column offsets) of the linear predictor: N, W, NW, NE, NN, WW, NNE, NNW,
#: NWW, NNEE, NNN, WWW, NNWW, NNNW, NWWW, NNNE. Every offset has 2*row + column < 0, so it lies on
#: an earlier wavefront of the coding order (see :func:`_wavefronts`).
_OFFSETS = ((-1, 0), (0, -1), (-1, -1), (-1, 1), (-2, 0), (0, -2), (-2, 1), (-2, -1), (-1, -2), (-2, 2),
            (-3, 0), (0, -3), (-2, -2), (-3, -1), (-1, -3), (-3, 1))
#: Local activity: |N - NW| + |W - NW| + |NE - N| + |N - NN| + |W - WW| (indices into _OFFSETS),
#: bucketed at these edges (11 classes).
_ACTIVITY_PAIRS = ((0, 2), (1, 2), (3, 0), (0, 4), (1, 5))
_ACTIVITY_EDGES = (0, 1, 2, 3, 4, 6, 8, 11, 15, 20)
_ACTIVITY_CLASS = np.searchsorted(np.array(_ACTIVITY_EDGES), np.arange(65), side="right")
_SHIFT = 12  # predictor weights and predictions in units of 2**-12
_PAD = 3  # border cells around the matrix (the farthest offset)
_PRIOR, _STEP = 256, 64  # adaptive counts: initial 1 + PRIOR >> |residual|, STEP per coded value
CONTEXT_MAX_VALUE = 63  # the context coder's alphabet limit (AFDB PAE: 0-31)
_CONTEXT_HEADER = struct.Struct("<BI")  # max value, CRC-32 of the matrix (uint8, row-major)


def _wavefronts(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(padded flat index of each value in coding order, wavefront bounds): wavefront t = 2i + j.

    All values of a wavefront depend only on earlier ones, so each is modelled and coded as one
    vectorised batch (3n - 2 batches instead of n^2 single values).
    """
    t = np.arange(3 * n - 2)
    lo, hi = np.maximum(0, (t - n + 2) // 2), np.minimum(n - 1, t // 2)
    counts = hi - lo + 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    i = np.repeat(lo, counts) + np.arange(n * n) - np.repeat(bounds[:-1], counts)
    j = np.repeat(t, counts) - 2 * i
    return (i + _PAD) * (n + 2 * _PAD) + j + _PAD, bounds


def _fill_borders(values: np.ndarray, t: int, n: int) -> None:
    """After wavefront t: copy just-coded values into the border cells later wavefronts read.

    Left border of row i: the value above its first column until that is coded, then (i, 0);
    right border of row i: (i, n - 1); the top border at column c: (0, c - 3), so the first row
    predicts from its own left values. Encoder and decoder run the same rules.
    """
    stride = n + 2 * _PAD
    if t < n and t + 3 < n + _PAD:
        values[t + 3 + _PAD : _PAD * stride : stride] = values[_PAD * stride + t + _PAD]
    if t % 2 == 0 and t // 2 < n:
        row = (t // 2 + _PAD) * stride
        values[row : row + _PAD] = values[row + _PAD]
        if t // 2 + 1 < n:
            values[row + stride : row + stride + _PAD] = values[row + _PAD]
    if t >= n - 1 and (t - n + 1) % 2 == 0:
        last = ((t - n + 1) // 2 + _PAD) * stride + _PAD + n - 1
        values[last + 1 : last + 1 + _PAD] = values[last]


def _linear_maps(weights: np.ndarray) -> np.ndarray:
    """(K, 6) integer matrix: neighbours -> (prediction * 2**12, the five activity differences)."""
    maps = np.zeros((len(_OFFSETS), 1 + len(_ACTIVITY_PAIRS)), dtype=np.int64)
    maps[:, 0] = weights
    for column, (a, b) in enumerate(_ACTIVITY_PAIRS, start=1):
        maps[a, column] += 1
        maps[b, column] -= 1
    return maps


class _Model:
    """The context model of one matrix: maps a value's linear features to its count window.

    The prediction (units of 2**-12) in quarters q gives an origin (its integer part) and a phase
    (the quarter); phases 2 and 3 are mirrored onto 1 and 0 (origin + 1, residual sign flipped),
    so a context is (activity class, distance of the prediction from the nearest integer,
    halved): 22 contexts. Each context's counts over the residuals -vmax..vmax are kept twice in
    the count table, forward and then (second half) reversed, so the probabilities of the values
    0..vmax are one contiguous window in either orientation (:meth:`probabilities`). The tables
    below hold everything that depends on q (clipped to the origins 0..vmax) or on the activity.
    """

    def __init__(self, vmax: int) -> None:
        self.vmax, self.half = vmax, (len(_ACTIVITY_EDGES) + 1) * 2 * (2 * vmax + 1)
        q = np.arange(-4, 4 * vmax + 8)
        phase, up = q & 3, (q & 3) >> 1
        origin = np.minimum(np.maximum((q >> 2) + up, 0), vmax)
        centre = (phase ^ (3 * up)) * (2 * vmax + 1) + vmax
        self.start = centre - origin + up * self.half
        self.mirror = 2 * centre + self.half
        self.activity = _ACTIVITY_CLASS * 2 * (2 * vmax + 1)
        prior = 1 + (_PRIOR >> np.minimum(np.abs(np.arange(2 * vmax + 1) - vmax), 62))
        self.counts = np.tile(prior, 2 * (len(_ACTIVITY_EDGES) + 1) * 2).astype(np.float64)
        self.windows = sliding_window_view(self.counts, vmax + 1)  # views: they see the updates

    def locate(self, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window start, mirror base) of each value from its row of the linear maps."""
        q = np.minimum(np.maximum(linear[:, 0] >> (_SHIFT - 2), -4), 4 * self.vmax + 7) + 4
        activity = self.activity[np.minimum(np.abs(linear[:, 1:]).sum(1), 64)]
        return activity + self.start[q], 2 * activity + self.mirror[q]

    def probabilities(self, start: np.ndarray) -> np.ndarray:
        return self.windows[start]

    def update(self, start: np.ndarray, mirror: np.ndarray, coded: np.ndarray) -> None:
        """Count the coded values in both orientations (np.add.at: a window may repeat)."""
        position = start + coded
        np.add.at(self.counts, np.concatenate([position, mirror - position]), _STEP)


def _causal_neighbours(flat: np.ndarray, n: int) -> np.ndarray:
    """(n^2, K) neighbour values of every value in coding order, as the decoder sees them."""
    pos, bounds = _wavefronts(n)
    stride = n + 2 * _PAD
    offsets = np.array([di * stride + dj for di, dj in _OFFSETS])
    values = np.zeros((n + _PAD) * stride, dtype=np.int64)
    gathered = np.empty((n * n, len(_OFFSETS)), dtype=np.int64)
    for t in range(len(bounds) - 1):
        a, b = bounds[t], bounds[t + 1]
        gathered[a:b] = values[pos[a:b, None] + offsets]
        values[pos[a:b]] = flat[a:b]
        _fill_borders(values, t, n)
    return gathered


def encode_pae_context(pae: np.ndarray) -> bytes:
    """Format 3 context coding of an (L, L) matrix with values 0-63 (:data:`CONTEXT_MAX_VALUE`), L >= 1.

    Layout: max value u8 | CRC-32 u32 | 16 predictor weights i16 (units of 2**-12, least squares
    fitted to this matrix) | range coder words u32.
    """
    import constriction  # only the PAE paths need it

    values = np.asarray(pae, dtype=np.int64)
    n, vmax = values.shape[0], int(values.max(initial=0))
    if vmax > CONTEXT_MAX_VALUE or values.min(initial=0) < 0:
        raise ValueError(f"the PAE context coder takes values 0-{CONTEXT_MAX_VALUE}")
    pos, bounds = _wavefronts(n)
    stride = n + 2 * _PAD
    flat = values.ravel()[(pos // stride - _PAD) * n + pos % stride - _PAD]
    neighbours = _causal_neighbours(flat, n)
    fitted, *_ = np.linalg.lstsq(neighbours.astype(np.float64), flat.astype(np.float64), rcond=None)
    weights = np.clip(np.round(fitted * (1 << _SHIFT)), -32768, 32767).astype(np.int64)
    linear = neighbours @ _linear_maps(weights)
    model = _Model(vmax)
    encoder = constriction.stream.queue.RangeEncoder()
    categorical = constriction.stream.model.Categorical(perfect=False)
    symbols = flat.astype(np.int32)
    for t in range(len(bounds) - 1):
        a, b = bounds[t], bounds[t + 1]
        start, mirror = model.locate(linear[a:b])
        encoder.encode(symbols[a:b], categorical, model.probabilities(start))
        model.update(start, mirror, flat[a:b])
    crc = zlib.crc32(values.astype(np.uint8).tobytes())
    return (_CONTEXT_HEADER.pack(vmax, crc) + weights.astype("<i2").tobytes()
            + encoder.get_compressed().astype("<u4").tobytes())


def decode_pae_context(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`encode_pae_context`: int64 (n, n), n >= 1.

    Raises:
        ValueError: the bytes are not a context-coded matrix of that size (checked by the CRC).
    """
    import constriction

    head = _CONTEXT_HEADER.size + 2 * len(_OFFSETS)
    if len(data) < head or (len(data) - head) % 4:
        raise ValueError("compact record: the PAE context coding is truncated")
    vmax, crc = _CONTEXT_HEADER.unpack_from(data)
    if vmax > CONTEXT_MAX_VALUE:
        raise ValueError(f"compact record: PAE context coding with max value {vmax}")
    weights = np.frombuffer(data, "<i2", len(_OFFSETS), _CONTEXT_HEADER.size).astype(np.int64)
    words = np.frombuffer(data, "<u4", offset=head).astype(np.uint32)
    maps = _linear_maps(weights)
    pos, bounds = _wavefronts(n)
    stride = n + 2 * _PAD
    offsets = np.array([di * stride + dj for di, dj in _OFFSETS])
    values = np.zeros((n + _PAD) * stride, dtype=np.int64)
    model = _Model(vmax)
    decoder = constriction.stream.queue.RangeDecoder(words)
    categorical = constriction.stream.model.Categorical(perfect=False)
    try:
        for t in range(len(bounds) - 1):
            p = pos[bounds[t] : bounds[t + 1]]
            start, mirror = model.locate(values[p[:, None] + offsets] @ maps)
            decoded = decoder.decode(categorical, model.probabilities(start))
            values[p] = decoded
            model.update(start, mirror, decoded)
            _fill_borders(values, t, n)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise ValueError(f"compact record: the PAE context coding does not decode: {e}") from e
    matrix = values.reshape(n + _PAD, stride)[_PAD:, _PAD : _PAD + n]
    if zlib.crc32(matrix.astype(np.uint8).tobytes()) != crc:
        raise ValueError("compact record: the PAE context coding is corrupt (CRC mismatch)")
    return matrix.copy()
