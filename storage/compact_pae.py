"""PAE coding for compact records: mixing coder (format 4), context coder (3), JPEG XL (2), 2-D deltas (1).

A PAE matrix is an L x L image of small integers (AFDB v4: integer Angstrom, 0-31) that is smooth
in blocks (domains) and along the diagonal band, with row and column offsets and +-1 noise.

Format 4 (written): :func:`encode_pae_payload` writes the mixing coder (codec 4,
:func:`encode_pae_mix`, values 0-63); up to 256 residues it also tries JPEG XL and keeps the
smaller; JPEG XL alone when a value exceeds 63. The context coder (codec 3) is still read, no
longer written (see :func:`encode_pae_payload`). The mixing coder:

* **prediction**: codec 3's least squares, over a larger causal support: rows -4..0 and columns
  -6..+4 (46 neighbours) below 512 residues, rows -8..0 and columns -20..+8 (236) from 512 (every
  offset on an earlier wavefront), each value weighted 1 / (2 + its activity) in the fit; the
  rounded weights keep the fitted sum. Stored as varints (:data:`_MIX_SMALL`, :data:`_MIX_LARGE`);
  from 512 residues the fit reads every 8th wavefront (encode time);
* **binary decisions**: the residual against the prediction's integer origin (mirrored by the
  fraction as in codec 3) is ``r == 0``, ``r > 0``, then a unary chain ``|r| == 1``, ``|r| == 2``,
  ... (from the second on one node class per side). Each decision's probability is a logistic mix
  (integer stretch/squash tables, weights selected by node x activity x whether N and W lie above
  the prediction) of seven adaptive bit probabilities, one per context: predicted level x
  activity, the origin, the row and column means of the values decoded so far (coarse and fine),
  the neighbours' past prediction errors (bias and spread), the distance of the origin from 0 and
  from the maximum, and N, W, NE, NW against the origin; each times the prediction's distance
  from the nearest integer in quarters (eighths from 256 residues);
* **probabilities**: the leaf masses of all values 0..max (products along the chain, integers
  below 2**41 + 32, exact in float64) per value, a batch of them range coded with ``constriction``
  (Categorical, as codec 3); the model learns from each batch, value by value, after coding it;
* **order**: one strip (wavefronts 2r + j: 3L - 2 batches): strip tops predict from their own first
  row, which cost this support much more than codec 3 (at 957 residues with 89 neighbours, 7
  strips of 137 rows: 5.8 % smaller than codec 3; 3 strips: 6.8 %; one: 7.2 %).

The model is compiled with numba (:mod:`storage._pae_mix_kernel`) and is integer arithmetic
throughout (the predictions are float64 sums of integer products far below 2**53, exact in any
order), so it is deterministic across platforms; the kernels read the neighbours straight from the
padded matrix. Sizes on the five real AFDB entries (B per residue², 118 -> 957 residues; codec 3
in brackets): O05023 0.2453 (0.2549, -3.7 %), P00221 0.1735 (0.1839, -5.6 %), O05012 0.1573
(0.1720, -8.6 %), Q5VSL9 0.1351 (0.1523, -11.3 %), A0A1U8FD60 0.1838 (0.2014, -8.7 %). CPU time at
957 residues (fastest of 3, one process, loaded 2-core machine): decoding 0.54 s (codec 3 0.22 s),
encoding 1.5 s (0.28 s; half of it the 236 x 236 normal equations).

How it was chosen (ideal code lengths, sum of -log2 p, against codec 3, at 957 / 118 residues; the
scripts were scratch): codec 3's count model with a larger support -2.6 / -1.2 % (36 neighbours),
-2.8 / -1.2 % (46), -3.1 / +0.6 % (89, weights as int16); binary mixing with codec 3's 16
neighbours -1.8 / -1.4 %; mixing with 46 -5.0 / -2.5 %, + eighths -5.4 / -1.9 % (so eighths only
from 256 residues), 89 neighbours -5.95 % at 957 (all with codec 3's 7 strips). Then the coder
itself, one strip, at 957 residues: 89 neighbours -7.45 %, (rows, left, right) = (7, 10, 7) -7.7 %,
(7, 12, 7) with the damped fit and counts capped at 255 -8.0 %, (8, 12, 8) -8.05 %, (8, 14, 8)
-8.2 %, (8, 16, 8) -8.3 %, (8, 20, 8) -8.75 % (adopted), (8, 28, 8) -9.1 % (decoding 10 % and
encoding 50 % slower; at 837 residues no gain past 20 columns), (4, 28, 4) -8.6 %; the damped fit
-0.1 %, the kept weight sum -0.1 %, one unary node class per side instead of two +0.07 % (-0.2 %
at 118 and 147 residues). Not adopted: an APM/SSE stage after the
mixer (0.05-0.3 % larger), mixer weights also by fraction (+0.1 %), sixteenths (no gain), more
unary node classes (2, 3, 4, 6, 10: the same), mixer learning rates 2**-15 / 2**-17 (+0.1 %),
contexts from the transposed value, texture bits and gradients (no gain; dropped models: activity
alone, texture, gradient each changed < 0.01 %), weights per strip of rows (-0.1 % at 957, +0.6 %
at 411) or per activity class (-0.2 to -0.7 %, +0.2 % at 411), blending several predictors by
their local errors (TMW style: the global 46-neighbour fit with activity-split fits, codec 3's
16-neighbour fit, row-only and column-only fits: -0.06 % at best, up to +2.4 %), weights in units
of 2**-9 (+1.4 %).

Format 3 (still read; what its :func:`encode_pae_payload` wrote): per record the context coder (codec 3,
for values 0-63) or lossless JPEG XL (codecs 1/2 = 8/16-bit samples, format 2's coding), the
smaller; JPEG XL is tried only up to 256 residues (tens of ms there; above, it takes about 0.8 s
to encode at 957 residues and was 11-16 % larger on the three real entries above 256 residues),
or when a value exceeds 63. The context coder
(:func:`encode_pae_context`):

* **prediction**: a linear combination of 16 causal neighbours (N, W, NW, NE, NN, WW, NNE, NNW, NWW,
  NNEE, NNN, WWW, NNWW, NNNW, NWWW, NNNE) whose weights are fitted to the matrix by least squares
  and stored (16 int16 in units of 2**-12; a coarser 2**-6 cost up to 11 %: a weight sum off by
  1/64 biases every prediction);
* **contexts** (22): local activity (|N-NW| + |W-NW| + |NE-N| + |N-NN| + |W-WW|, 11 classes) x the
  prediction's fractional quarter, mirrored (a prediction 0.75 above an integer is coded like one
  0.25 below the next, residual negated), so a context's histogram learns sub-integer bias;
* **probabilities**: adaptive counts per context over the residuals (initial 1 + 256 >> |residual|,
  + 64 per coded value), renormalised over the values 0..max, range coded with ``constriction``
  (Categorical model, ``perfect=False``);
* **order**: the rows are cut into strips of at least 128 rows, coded side by side; within a
  strip, value (r, j) lies on wavefront 2r + j, and every neighbour on an earlier one, so a
  wavefront of all strips is one vectorised batch (2 * strip height + L - 2 batches; strip tops
  predict from their own first row, 0.7 % larger at 957 residues than one strip).

It is deterministic across platforms: the model is integer arithmetic (the predictor sums 16
int16 x value products in float64 BLAS, exact because every partial sum is an integer far below
2**53), and the probabilities handed to constriction are exact integer counts as float64, which
its fixed-point quantisation maps identically everywhere; only the encoder fits (floating-point
least squares), and it stores the rounded weights. A CRC-32 of the matrix (4 bytes) makes
corrupt bytes a ValueError rather than a wrong matrix.

Measured on the five real AFDB entries (B per residue², 118 -> 957 residues; docs/benchmarks.md):
JPEG XL effort 7/9 as format 2 wrote it 0.177-0.285, the context coder 0.152-0.255 (7-14 %
smaller; 0.255 for the 118-residue O05023, 0.201 for the 957-residue entry). Decoding takes
0.02-0.03 s of CPU at 118 residues and 0.29-0.45 s at 957 on the loaded 2-core benchmark
machine (JPEG XL: 0.002 s and 0.08-0.11 s); encoding 0.03 s and 0.45 s (JPEG XL: 0.025 s at
effort 9, 0.74-0.84 s at effort 7). Measured and not adopted (ideal code lengths or the
coder itself): contexts from the structure the decoder already has (quantised CA-CA distance,
pLDDT of i and j: at most 0.8 % smaller on the three large entries, 1.5-5 % larger on the small
ones, whose extra contexts cost more than they tell; 0.1-2 % larger mixed in as a third model),
the transposed value PAE(j, i) as a predictor input, contexts from the neighbours' prediction
errors, 8 fraction phases, two weight sets by activity, least absolute deviations weights, count
halving (each within +-1 %, mostly worse).

Format 2 (still read): always lossless JPEG XL (ISO/IEC 18181, libjxl through ``imagecodecs``):
one 8-bit grey channel (16-bit when a value exceeds 255; the record format allows 0-65535),
effort 9 up to 256 residues, 7 above. Lossless JPEG XL decodes to the exact input samples by
definition. Format 1 (still read): the 2-D difference image (each value minus its upper and left
neighbours plus the upper-left one), zigzag coded and compressed with zstd by :mod:`storage.compact`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

__all__ = [
    "CODEC_CONTEXT",
    "CODEC_JPEGXL_8",
    "CODEC_JPEGXL_16",
    "CODEC_MIX",
    "CONTEXT_MAX_VALUE",
    "PAE_CODECS",
    "PAE_CODECS_OF",
    "decode_pae_context",
    "decode_pae_image",
    "decode_pae_mix",
    "decode_pae_payload",
    "encode_pae_context",
    "encode_pae_image",
    "encode_pae_mix",
    "encode_pae_payload",
    "pae_deltas",
    "undo_pae_deltas",
]

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


#: PAE codecs of format 3 and 4 records (the PAE section's ``width`` byte): lossless JPEG XL with
#: 8- or 16-bit samples (what format 2 always uses; the byte is then the sample width), the context
#: coder (:func:`encode_pae_context`, format 3 on) and the mixing coder (:func:`encode_pae_mix`,
#: format 4 on: :data:`PAE_CODECS_OF` says which a version may hold).
CODEC_JPEGXL_8, CODEC_JPEGXL_16, CODEC_CONTEXT, CODEC_MIX = 1, 2, 3, 4
PAE_CODECS = (CODEC_JPEGXL_8, CODEC_JPEGXL_16, CODEC_CONTEXT, CODEC_MIX)
PAE_CODECS_OF = {2: PAE_CODECS[:2], 3: PAE_CODECS[:3], 4: PAE_CODECS}  # by record format version
_JPEGXL_TRIED_UP_TO = 256  # residues: JPEG XL is also tried there, the smaller kept


def encode_pae_payload(pae: np.ndarray) -> tuple[int, bytes]:
    """(codec, bytes) of an (L, L) integer matrix with values 0-65535, L >= 1 (format 4).

    The mixing coder when every value is within 0-63, and up to 256 residues lossless JPEG XL too,
    keeping the smaller (the first of equals); JPEG XL alone for larger values. The context coder
    (codec 3) is no longer tried: the mixing coder was 2.5-11 % smaller on every real AFDB matrix
    (``tests/storage/test_compact.py``), and trying it cost the write stage 45 % more PAE encoding
    time on small proteins, where JPEG XL (15 ms at 16-250 residues, against 26 ms for the mixing
    coder) wins on the near-constant matrices of a randomly initialised model.
    """
    values = np.asarray(pae, dtype=np.int64)
    candidates = []
    if int(values.max(initial=0)) <= CONTEXT_MAX_VALUE:
        candidates.append((CODEC_MIX, encode_pae_mix(values)))
    if not candidates or values.shape[0] <= _JPEGXL_TRIED_UP_TO:
        candidates.append(encode_pae_image(values))
    return min(candidates, key=lambda candidate: len(candidate[1]))


def decode_pae_payload(data: bytes, codec: int, n: int) -> np.ndarray:
    """Inverse of :func:`encode_pae_payload` (and of format 3's): int64 (n, n), n >= 1.

    Raises:
        ValueError: unknown codec, or bytes that do not decode to an (n, n) matrix.
    """
    if codec == CODEC_MIX:
        return decode_pae_mix(data, n)
    if codec == CODEC_CONTEXT:
        return decode_pae_context(data, n)
    if codec in (CODEC_JPEGXL_8, CODEC_JPEGXL_16):
        return decode_pae_image(data, codec, n)
    raise ValueError(f"compact record: unknown PAE codec {codec}")


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
#: an earlier wavefront of the coding order (see :class:`_Layout`).
_OFFSETS = ((-1, 0), (0, -1), (-1, -1), (-1, 1), (-2, 0), (0, -2), (-2, 1), (-2, -1), (-1, -2), (-2, 2),
            (-3, 0), (0, -3), (-2, -2), (-3, -1), (-1, -3), (-3, 1))
#: Local activity: |N - NW| + |W - NW| + |NE - N| + |N - NN| + |W - WW| (indices into _OFFSETS),
#: bucketed at these edges (11 classes).
_ACTIVITY_PAIRS = ((0, 2), (1, 2), (3, 0), (0, 4), (1, 5))
_ACTIVITY_EDGES = (0, 1, 2, 3, 4, 6, 8, 11, 15, 20)
_ACTIVITY_CLASS = np.searchsorted(np.array(_ACTIVITY_EDGES), np.arange(65), side="right")
_SHIFT = 12  # predictor weights and predictions in units of 2**-12
_PAD = 3  # border cells around the matrix (the farthest offset)
_STRIP_HEIGHT = 128  # rows per strip (at least; n // 128 strips)
_BLOCK = (4, 6)  # the neighbourhood read per value: rows -3..0, columns -3..+2
_PRIOR, _STEP = 256, 64  # adaptive counts: initial 1 + PRIOR >> |residual|, STEP per coded value
CONTEXT_MAX_VALUE = 63  # the context coder's alphabet limit (AFDB PAE: 0-31)
_CONTEXT_HEADER = struct.Struct("<BI")  # max value, CRC-32 of the matrix (uint8, row-major)


class _Layout:
    """Coding order, border cells and strided views of an n x n matrix cut into horizontal strips.

    The rows are cut into ``strips`` strips of ``height`` rows (n // ``strip`` strips, codec 3:
    128, codec 4: one; the last one may have fewer rows), coded side by side; within a strip, value
    (r, j) (r: row in the strip) is on wavefront t = 2r + j. A value depends only on values of
    earlier wavefronts of its own strip (every neighbour offset has 2 * row + column < 0), so each
    wavefront of all strips is modelled and coded as one vectorised batch, strip by strip, rows in
    order: 2 * height + n - 2 batches instead of n^2 single values. Each strip is stored with
    ``pad`` border rows above it and border columns either side, in one flat float64 array
    (``values``, exact small integers): the left border of row r holds the value above its first
    column until that is coded, then (r, 0); the right border (r, n - 1); the top border at column
    c: (0, c - right - 1) (``right``: the farthest column offset to the right, codec 3: 2), so the
    first row of a strip predicts from its own left values (:meth:`fill_borders`, run by encoder
    and decoder alike after each wavefront). A batch's cells and their ``block`` neighbourhoods
    (rows x columns, codec 3: 4 x 6) are strided views of that array (:meth:`views`), read and
    written without index arrays.
    """

    def __init__(self, n: int, pad: int = _PAD, block: tuple[int, int] = _BLOCK, right: int = 2,
                 strip: int = _STRIP_HEIGHT) -> None:
        self.n, self.pad, self.block, self.right = n, pad, block, right
        self.strips = max(1, n // strip)
        self.height = h = -(-n // self.strips)
        last = n - (self.strips - 1) * h  # rows of the last strip
        self.stride = n + 2 * pad
        self.strip_size = (h + pad) * self.stride
        # the block's top-left cell relative to the value: block[0] - 1 rows up, block[1] - 1 - right columns left
        self.origin = (pad - block[0] + 1) * self.stride + pad - (block[1] - 1 - right)
        t = np.arange(2 * h + n - 2)
        self.low = np.maximum(0, (t - n + 2) // 2)
        self.rows = np.minimum(h - 1, t // 2) - self.low + 1
        self.last_rows = np.maximum(0, np.minimum(np.minimum(h - 1, t // 2), last - 1) - self.low + 1)
        self.bounds = np.concatenate([[0], np.cumsum((self.strips - 1) * self.rows + self.last_rows)])

    def new_values(self) -> np.ndarray:
        return np.zeros(self.strips * self.strip_size, dtype=np.float64)

    def batches(self) -> range:
        return range(len(self.bounds) - 1)

    def views(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blocks, cells): blocks[t, s, r] = the 4 x 6 cells from 3 rows above and 3 columns left
        of value (r, t - 2r) of strip s (its 16 neighbours among them), cells[t, s, r] = that value.

        Views of ``values`` (which must be :meth:`new_values`): only the (t, s, r) of a batch are
        ever read or written, all inside the array.
        """
        item = values.itemsize
        steps = (item, self.strip_size * item, (self.stride - 2) * item)
        shape = (len(self.rows), self.strips, self.height)
        rows, cols = self.block
        blocks = as_strided(values[self.origin :], shape=(*shape, rows, cols),
                            strides=(*steps, self.stride * item, item), writeable=False)
        cells = as_strided(values[self.pad * self.stride + self.pad :], shape=shape, strides=steps)
        return blocks, cells

    def read(self, blocks: np.ndarray, t: int) -> np.ndarray:
        """(m, 24) neighbourhoods of batch t, in coding order (a copy)."""
        low, rows = self.low[t], self.rows[t]
        found = blocks[t, :, low : low + rows].reshape(self.strips * rows, -1)
        return found[: self.bounds[t + 1] - self.bounds[t]]

    def write(self, cells: np.ndarray, t: int, coded: np.ndarray) -> None:
        low, rows, last = self.low[t], self.rows[t], self.last_rows[t]
        full = (self.strips - 1) * rows
        cells[t, : self.strips - 1, low : low + rows] = coded[:full].reshape(self.strips - 1, rows)
        cells[t, self.strips - 1, low : low + last] = coded[full:]

    def order(self) -> np.ndarray:
        """Row-major matrix index of each value in coding order."""
        index = self.new_values()
        _, cells = self.views(index)
        pad = self.pad
        grid = index.reshape(self.strips, self.height + pad, self.stride)[:, pad:, pad : pad + self.n]
        rows = np.zeros((self.strips * self.height, self.n))
        rows[: self.n] = np.arange(self.n * self.n).reshape(self.n, self.n)
        grid[...] = rows.reshape(self.strips, self.height, self.n)
        return np.concatenate([self.read(cells[..., None, None], t).ravel() for t in self.batches()]).astype(np.int64)

    def scan(self, step: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
        """Walk the batches in order: ``step(t, neighbourhoods)`` returns the batch's values, which
        are stored (and the borders filled) before the next batch; returns the filled array."""
        values = self.new_values()
        blocks, cells = self.views(values)
        for t in self.batches():
            self.write(cells, t, step(t, self.read(blocks, t)))
            self.fill_borders(values, t)
        return values

    def matrix(self, values: np.ndarray) -> np.ndarray:
        pad = self.pad
        grid = values.reshape(self.strips, self.height + pad, self.stride)[:, pad:, pad : pad + self.n]
        return grid.reshape(-1, self.n)[: self.n].astype(np.int64)

    def fill_borders(self, values: np.ndarray, t: int) -> None:
        """After wavefront t: copy just-coded values into the border cells later wavefronts read."""
        pad, shift = self.pad, self.right + 1
        grid = values.reshape(self.strips, self.height + pad, self.stride)
        n, h = self.n, self.height
        if t + shift < n + pad and t < n:
            grid[:, :pad, t + shift + pad] = grid[:, pad, t + pad, None]
        if t % 2 == 0 and t // 2 < h:
            row = t // 2 + pad
            grid[:, row : row + 2, :pad] = grid[:, row, pad, None, None]
        if t >= n - 1 and (t - n + 1) % 2 == 0 and (t - n + 1) // 2 < h:
            row = (t - n + 1) // 2 + pad
            grid[:, row, pad + n :] = grid[:, row, pad + n - 1, None]


def _linear_maps(weights: np.ndarray) -> np.ndarray:
    """(24, 6) float64: a 4 x 6 neighbourhood (:meth:`_Layout.views`) -> (prediction * 2**12,
    the five activity differences).

    The products are exact: every product and partial sum is an integer far below 2**53 (values
    <= 63, weights within int16, 16 terms), so any summation order or fused multiply-add (BLAS)
    gives the same doubles on every platform, and the conversion to integers is exact.
    """
    maps = np.zeros((*_BLOCK, 1 + len(_ACTIVITY_PAIRS)))
    cell = [(_BLOCK[0] - 1 + di, _PAD + dj) for di, dj in _OFFSETS]
    for k, at in enumerate(cell):
        maps[at][0] = weights[k]
    for column, (a, b) in enumerate(_ACTIVITY_PAIRS, start=1):
        maps[cell[a]][column] += 1
        maps[cell[b]][column] -= 1
    return maps.reshape(_BLOCK[0] * _BLOCK[1], -1)


class _Model:
    """The context model of one matrix: maps a value's linear features to its count window.

    The prediction (units of 2**-12) in quarters q gives an origin (its integer part, clipped to
    0..vmax) and a phase (the quarter); phases 2 and 3 are mirrored onto 1 and 0 (origin + 1,
    residual sign flipped), so a context is (activity class, distance of the prediction from the
    nearest integer, halved): 22 contexts. Each context's counts over the residuals -vmax..vmax
    are kept twice in the count table, forward and then (second half) reversed, so the
    probabilities of the values 0..vmax are one contiguous window in either orientation
    (:meth:`probabilities`). The tables hold everything that depends on q or on the activity,
    over every value these can take with these weights (no clipping per value).
    """

    def __init__(self, vmax: int, weights: np.ndarray) -> None:
        self.vmax, width = vmax, 2 * vmax + 1
        self.half = (len(_ACTIVITY_EDGES) + 1) * 2 * width
        self.q_low = -((int(np.abs(weights).sum()) * vmax) >> (_SHIFT - 2)) - 1
        q = np.arange(self.q_low, -self.q_low + 1)
        phase, up = q & 3, (q & 3) >> 1
        origin = np.minimum(np.maximum((q >> 2) + up, 0), vmax)
        centre = (phase ^ (3 * up)) * width + vmax
        self.start = centre - origin + up * self.half
        self.mirror = 2 * centre + self.half
        self.activity = _ACTIVITY_CLASS[np.minimum(np.arange(2 * len(_ACTIVITY_PAIRS) * vmax + 1), 64)] * 2 * width
        prior = 1 + (_PRIOR >> np.minimum(np.abs(np.arange(width) - vmax), 62))
        self.counts = np.tile(prior, 2 * (len(_ACTIVITY_EDGES) + 1) * 2).astype(np.float64)
        self.windows = sliding_window_view(self.counts, vmax + 1)  # views: they see the updates

    def locate(self, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window start, mirror base) of each value from its row of the linear maps."""
        q = (linear[:, 0] >> (_SHIFT - 2)) - self.q_low
        activity = self.activity[np.abs(linear[:, 1:]).sum(1)]
        return activity + self.start[q], 2 * activity + self.mirror[q]

    def probabilities(self, start: np.ndarray) -> np.ndarray:
        return self.windows[start]

    def update(self, start: np.ndarray, mirror: np.ndarray, coded: np.ndarray) -> None:
        """Count the coded values in both orientations (a window may repeat within a batch)."""
        position = start + coded
        size = self.counts.size
        self.counts += _STEP * (np.bincount(position, minlength=size) + np.bincount(mirror - position, minlength=size))


def encode_pae_context(pae: np.ndarray) -> bytes:
    """Format 3 context coding of an (L, L) matrix with values 0-63 (:data:`CONTEXT_MAX_VALUE`), L >= 1.

    Layout: max value u8 | CRC-32 u32 | 16 predictor weights i16 (units of 2**-12, least squares
    fitted to this matrix) | range coder words u32. Two scans in coding order, each holding one
    padded copy of the matrix (memory O(L^2), not O(24 L^2)): the normal equations of the fit,
    then the coding, exactly as the decoder will see each batch.
    """
    import constriction  # only the PAE paths need it

    values = np.asarray(pae, dtype=np.int64)
    n, vmax = values.shape[0], max(1, int(values.max(initial=0)))  # an alphabet of at least 0, 1
    if vmax > CONTEXT_MAX_VALUE or values.min(initial=0) < 0:
        raise ValueError(f"the PAE context coder takes values 0-{CONTEXT_MAX_VALUE}")
    layout = _Layout(n)
    flat = values.ravel()[layout.order()]
    cells = [(_BLOCK[0] - 1 + di) * _BLOCK[1] + _PAD + dj for di, dj in _OFFSETS]
    gram, moment = np.zeros((len(cells), len(cells))), np.zeros(len(cells))

    def accumulate(t: int, found: np.ndarray) -> np.ndarray:
        nonlocal gram, moment
        coded = flat[layout.bounds[t] : layout.bounds[t + 1]]
        used = found[:, cells]
        gram += used.T @ used  # exact: integer sums far below 2**53
        moment += used.T @ coded
        return coded

    layout.scan(accumulate)
    fitted, *_ = np.linalg.lstsq(gram, moment, rcond=None)  # least squares over all values
    weights = np.clip(np.round(fitted * (1 << _SHIFT)), -32768, 32767).astype(np.int64)
    maps, model = _linear_maps(weights), _Model(vmax, weights)
    encoder = constriction.stream.queue.RangeEncoder()
    categorical = constriction.stream.model.Categorical(perfect=False)
    symbols = flat.astype(np.int32)

    def code(t: int, found: np.ndarray) -> np.ndarray:
        a, b = layout.bounds[t], layout.bounds[t + 1]
        start, mirror = model.locate((found @ maps).astype(np.int64))
        encoder.encode(symbols[a:b], categorical, model.probabilities(start))
        model.update(start, mirror, flat[a:b])
        return flat[a:b]

    layout.scan(code)
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
    layout = _Layout(n)
    maps, model = _linear_maps(weights), _Model(vmax, weights)
    decoder = constriction.stream.queue.RangeDecoder(words)
    categorical = constriction.stream.model.Categorical(perfect=False)

    def decode(t: int, found: np.ndarray) -> np.ndarray:
        start, mirror = model.locate((found @ maps).astype(np.int64))
        decoded = decoder.decode(categorical, model.probabilities(start))
        model.update(start, mirror, decoded)
        return decoded

    try:
        values = layout.scan(decode)
    except (ValueError, RuntimeError, IndexError, AssertionError) as e:  # constriction asserts on invalid data
        raise ValueError(f"compact record: the PAE context coding does not decode: {e}") from e
    matrix = layout.matrix(values)
    if zlib.crc32(matrix.astype(np.uint8).tobytes()) != crc:
        raise ValueError("compact record: the PAE context coding is corrupt (CRC mismatch)")
    return matrix


# ----------------------------------------------------------------------------------------------
# Codec 4: least squares over 46 neighbours + binary decisions mixed from 8 context models
# ----------------------------------------------------------------------------------------------

class _Support:
    """A predictor support of codec 4: rows -``rows``..0, columns -``left``..+``right``, every offset
    with 2 * row + column < 0 (an earlier wavefront), and the :class:`_Layout` that reads it."""

    def __init__(self, rows: int, left: int, right: int, step: int, prior: tuple[int, ...] | None) -> None:
        self.rows, self.left, self.right, self.step, self.prior = rows, left, right, step, prior
        self.offsets = tuple((dr, dc) for dr in range(-rows, 1) for dc in range(-left, right + 1) if 2 * dr + dc < 0)
        self.pad, self.block = max(rows, left, right), (rows + 1, left + right + 1)
        pairs = [_OFFSETS[k] for pair in _ACTIVITY_PAIRS for k in pair]
        #: the cells the kernel reads: the predictor's, N, W, NE, NW, NN, WW, the activity pairs
        self.read = np.array((*self.offsets, *_MIX_NEIGHBOURS, *pairs), dtype=np.int64)
        assert prior is None or len(prior) == len(self.offsets)

    def relative(self, layout: _Layout) -> np.ndarray:
        """The flat offsets in ``layout``'s padded array of the cells the kernel reads."""
        return np.ascontiguousarray(self.read[:, 0] * layout.stride + self.read[:, 1])

    def layout(self, n: int) -> _Layout:
        """One strip (n rows): a strip's first rows predict from their own first row, which cost
        codec 4 much more than codec 3 (89 neighbours at 957 residues: 3 strips 0.5 % larger than
        one, 7 strips 1.5 %)."""
        return _Layout(n, pad=self.pad, block=self.block, right=self.right, strip=max(1, n))

    def scan(self, layout: _Layout, step: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
        """:meth:`_Layout.scan` of a one-strip layout, handing ``step`` the padded array itself
        (the kernels read the neighbours from it)."""
        values = layout.new_values()
        _, cells = layout.views(values)
        for t in layout.batches():
            low, rows = layout.low[t], layout.rows[t]
            cells[t, 0, low : low + rows] = step(t, values)
            layout.fill_borders(values, t)
        return values


#: N, W, NE, NW, NN, WW: the raw neighbours the mixing model's contexts read.
_MIX_NEIGHBOURS = ((-1, 0), (0, -1), (-1, 1), (-1, -1), (-2, 0), (0, -2))
#: Supports: below 512 residues rows -4..0, columns -6..+4 (46 neighbours), the weights stored in
#: units of 2**-10 (the predictor's 2**-12 times 4; 2**-9 cost 1.4 % at 957 residues) as zigzag
#: LEB128 varints of their difference from a prior, the rounded mean of the fits of the five AFDB
#: entries in tests/data/afdb (one byte each when within +-63: 46 bytes instead of 92, 1.3 % of the
#: 118-residue entry); from 512 rows -8..0, columns -20..+8 (236 neighbours), weights in units of
#: 2**-12 as varints of themselves (2 bytes each), fitted to every 8th wavefront (encode time).
_MIX_SMALL = _Support(4, 6, 4, 4, (12, 28, 35, -16, -58, -87, 107, -14, -5, -9, -8, -6, -9, -5, 13, -31, -85, 133, -17,
                                   -2, 3, 9, -14, -19, -45, -30, -5, -58, 161, -14, -1, 23, -29, -45, -88, -89, -68,
                                   -28, 367, 85, 10, 6, 129, 186, 209, 393))
_MIX_LARGE = _Support(8, 20, 8, 1, None)
_MIX_LARGE_FROM = 512  # residues
_MIX_FIT_EVERY = 8  # from 512 residues the fit reads every 8th wavefront (every 16th: 0.1 % larger)
_MIX_FIT_DAMP = 2.0  # the fit weighs each value by 1 / (2 + its activity): 0.1 % smaller than plain
_MIX_EIGHTHS_FROM = 256  # residues: from here the prediction's fraction has 4 classes (eighths), else 2


def _mix_support(n: int) -> _Support:
    return _MIX_LARGE if n >= _MIX_LARGE_FROM else _MIX_SMALL


class _MixCoder:
    """Codec 4's model state for one n x n matrix: the kernels' arrays and per-batch scratch."""

    def __init__(self, n: int, vmax: int, weights: np.ndarray) -> None:
        from storage import _pae_mix_kernel as kernel  # numba: compiled (and cached) on first use

        self.kernel, self.n, self.vmax = kernel, n, vmax
        support = _mix_support(n)
        self.layout = support.layout(n)
        self.relative, self.taps = support.relative(self.layout), np.ascontiguousarray(weights, dtype=np.float64)
        self.fractions = 4 if n >= _MIX_EIGHTHS_FROM else 2
        self.state = kernel.new_state(n, self.fractions)
        largest = int(np.diff(self.layout.bounds).max(initial=1))
        self.contexts = np.zeros((largest, kernel.MODELS), dtype=np.int64)
        self.features = np.zeros((largest, 8), dtype=np.int64)
        self.geometry = np.zeros((largest, 3), dtype=np.int64)
        self.leaves = np.zeros((largest, vmax + 1), dtype=np.float64)

    def model(self, t: int, grid: np.ndarray) -> np.ndarray:
        """Leaf masses (float64, integers) of batch t, read from the padded array ``grid``."""
        layout, m = self.layout, self.layout.bounds[t + 1] - self.layout.bounds[t]
        probs, _, offsets, weights, errors, row_sum, row_count, col_sum, col_count = self.state
        self.kernel.model_batch(grid, t, int(layout.low[t]), layout.stride, layout.pad, self.relative, self.taps,
                                self.n, self.vmax, self.fractions, _SHIFT, probs, offsets, weights, errors, row_sum,
                                row_count, col_sum, col_count, self.features[:m], self.contexts[:m],
                                self.geometry[:m], self.leaves[:m])
        return self.leaves[:m]

    def update(self, t: int, coded: np.ndarray) -> None:
        m = len(coded)
        probs, counts, _, weights, errors, row_sum, row_count, col_sum, col_count = self.state
        self.kernel.update_batch(coded, self.features[:m], t, int(self.layout.low[t]), self.n, self.vmax, _SHIFT,
                                 probs, counts, weights, errors, row_sum, row_count, col_sum, col_count,
                                 self.contexts[:m], self.geometry[:m])


def encode_pae_mix(pae: np.ndarray) -> bytes:
    """Codec 4 coding of an (L, L) matrix with values 0-63 (:data:`CONTEXT_MAX_VALUE`), L >= 1.

    Layout: max value u8 | CRC-32 u32 | 46 predictor weights (units of 2**-10, least squares
    fitted to this matrix, as varints of their difference from :data:`_MIX_PRIOR`) | range coder
    words u32.
    """
    import constriction

    values = np.asarray(pae, dtype=np.int64)
    n, vmax = values.shape[0], max(1, int(values.max(initial=0)))
    if vmax > CONTEXT_MAX_VALUE or values.min(initial=0) < 0:
        raise ValueError(f"the PAE mixing coder takes values 0-{CONTEXT_MAX_VALUE}")
    support = _mix_support(n)
    layout = support.layout(n)
    flat = values.ravel()[layout.order()]
    from storage._pae_mix_kernel import accumulate_normal

    used = len(support.offsets)
    relative = support.relative(layout)
    every = _MIX_FIT_EVERY if n >= _MIX_LARGE_FROM else 1
    gram, moment = np.zeros((used, used)), np.zeros(used)
    columns = np.zeros((used, int(np.diff(layout.bounds).max(initial=1))))

    def accumulate(t: int, found: np.ndarray) -> np.ndarray:
        coded = flat[layout.bounds[t] : layout.bounds[t + 1]]
        if t % every == 0:
            accumulate_normal(found, t, int(layout.low[t]), layout.stride, layout.pad, relative, used, _MIX_FIT_DAMP,
                              coded.astype(np.float64), columns, gram, moment)
        return coded

    support.scan(layout, accumulate)
    gram = np.triu(gram) + np.triu(gram, 1).T
    fitted, *_ = np.linalg.lstsq(gram, moment, rcond=None)
    step = support.step
    scaled = fitted * ((1 << _SHIFT) // step)
    weights = np.round(scaled).astype(np.int64)
    # keep the rounded weights' sum at the fitted sum, rounded (a sum off biases every prediction;
    # 0.1 % smaller at 957 residues): undo the roundings that pushed it furthest
    excess = int(weights.sum() - np.round(scaled.sum()))
    pushed = np.argsort((weights - scaled) * np.sign(excess), kind="stable")[::-1]
    weights[pushed[: abs(excess)]] -= np.sign(excess)
    weights = np.clip(weights, -32768, 32767) * step
    coder = _MixCoder(n, vmax, weights)
    encoder = constriction.stream.queue.RangeEncoder()
    categorical = constriction.stream.model.Categorical(perfect=False)
    symbols = flat.astype(np.int32)

    def code(t: int, found: np.ndarray) -> np.ndarray:
        a, b = layout.bounds[t], layout.bounds[t + 1]
        encoder.encode(symbols[a:b], categorical, coder.model(t, found))
        coder.update(t, flat[a:b])
        return flat[a:b]

    support.scan(coder.layout, code)
    crc = zlib.crc32(values.astype(np.uint8).tobytes())
    return (_CONTEXT_HEADER.pack(vmax, crc) + _varints(weights // step - np.array(support.prior or 0))
            + encoder.get_compressed().astype("<u4").tobytes())


def _varints(numbers: np.ndarray) -> bytes:
    """Zigzag LEB128: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..., 7 bits a byte, high bit = more."""
    out = bytearray()
    for number in numbers.tolist():
        z = 2 * number if number >= 0 else -2 * number - 1
        while z >= 0x80:
            out.append(z & 0x7F | 0x80)
            z >>= 7
        out.append(z)
    return bytes(out)


def _read_varints(data: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """(numbers, offset after them) of :func:`_varints`' bytes; ValueError when truncated."""
    numbers = []
    for _ in range(count):
        z = shift = 0
        while True:
            if offset >= len(data) or shift > 35:
                raise ValueError("compact record: the PAE mixing coding's weights are truncated")
            byte = data[offset]
            offset += 1
            z |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        numbers.append(z >> 1 if z % 2 == 0 else -(z >> 1) - 1)
    return np.array(numbers, dtype=np.int64), offset


def decode_pae_mix(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`encode_pae_mix`: int64 (n, n), n >= 1.

    Raises:
        ValueError: the bytes are not a codec 4 matrix of that size (checked by the CRC).
    """
    import constriction

    if len(data) < _CONTEXT_HEADER.size:
        raise ValueError("compact record: the PAE mixing coding is truncated")
    vmax, crc = _CONTEXT_HEADER.unpack_from(data)
    if not 1 <= vmax <= CONTEXT_MAX_VALUE:
        raise ValueError(f"compact record: PAE mixing coding with max value {vmax}")
    support = _mix_support(n)
    deltas, head = _read_varints(data, _CONTEXT_HEADER.size, len(support.offsets))
    if (len(data) - head) % 4:
        raise ValueError("compact record: the PAE mixing coding is truncated")
    weights = (deltas + np.array(support.prior or 0)) * support.step
    words = np.frombuffer(data, "<u4", offset=head).astype(np.uint32)
    coder = _MixCoder(n, vmax, weights)
    decoder = constriction.stream.queue.RangeDecoder(words)
    categorical = constriction.stream.model.Categorical(perfect=False)

    def decode(t: int, found: np.ndarray) -> np.ndarray:
        decoded = decoder.decode(categorical, coder.model(t, found)).astype(np.int64)
        coder.update(t, decoded)
        return decoded

    try:
        values = support.scan(coder.layout, decode)
    except (ValueError, RuntimeError, IndexError, AssertionError) as e:
        raise ValueError(f"compact record: the PAE mixing coding does not decode: {e}") from e
    matrix = coder.layout.matrix(values)
    if zlib.crc32(matrix.astype(np.uint8).tobytes()) != crc:
        raise ValueError("compact record: the PAE mixing coding is corrupt (CRC mismatch)")
    return matrix
