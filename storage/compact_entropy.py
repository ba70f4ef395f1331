"""Entropy coding of integer streams for compact records (format 3): range coding with fixed models.

Integers are range coded with ``constriction`` (a maintained Rust entropy-coding library); this
module only turns integers into symbols and builds the probability tables, so that encoder and
decoder agree bit for bit on every platform:

* a signed integer is zigzag coded (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) and split into a *token*
  and raw bits: values below 16 are their own token; a larger value with highest bit ``n`` has
  token ``16 + 2 (n - 4) + (next bit)`` and its remaining ``n - 1`` bits are raw (uniform, coded
  in chunks of at most 16 bits). Tokens cover every value below 2**40;
* the tokens of a group of values share one categorical model from a small family, chosen by the
  encoder per group and stored as one byte (:func:`model_byte`): ``geometric`` (probability
  proportional to ``theta**u`` in the zigzag value ``u``: a discrete Laplace-like law for
  residuals) or ``flat`` (uniform below a bound, then a geometric tail: for a torsion's position
  on its circle). The scale grid is exact in binary floating point (:func:`scale`), and the
  tables are built from it with IEEE-exact operations only (+, -, *, /, no ``exp`` or ``pow``
  from a maths library, whose last bits differ across platforms), as plain Python floats, and
  handed to ``constriction``'s categorical model (``perfect=False``, whose fixed-point
  quantisation again uses only exact operations). ``constriction`` gives every token of the
  alphabet a non-zero probability, so any value can be coded, however unlikely.
"""

from __future__ import annotations

import math
from functools import cache

import constriction
import numpy as np

__all__ = ["FLAT", "GEOMETRIC", "Decoder", "Encoder", "best_model", "model_byte", "scale"]

_DIRECT = 16  # values below this are their own token
_MAX_BITS = 40  # values (zigzag) below 2**40
TOKENS = _DIRECT + 2 * (_MAX_BITS - 4)
_RAW_CHUNK = 16
GEOMETRIC, FLAT = 0, 1
_SCALES = 128  # model byte: family in the top bit, scale index below


def scale(index: int) -> float:
    """The scale of index 0-127: 1, 1.25, 1.5, 1.75, 2, 2.5, ... (x 2 every 4 steps), times 1/8 (exact)."""
    return math.ldexp(4 + index % 4, index // 4 - 5)


def model_byte(family: int, index: int) -> int:
    return family * _SCALES + index


def _ipow(x: float, n: int) -> float:
    """x**n by squaring (exact IEEE multiplications in a fixed order)."""
    result, base = 1.0, x
    while n:
        if n & 1:
            result *= base
        base *= base
        n >>= 1
    return result


def _bucket(token: int) -> tuple[int, int]:
    """[lo, hi) of the zigzag values of a token."""
    if token < _DIRECT:
        return token, token + 1
    n, top = divmod(token - _DIRECT, 2)
    n += 4
    lo = (2 + top) << (n - 1)
    return lo, lo + (1 << (n - 1))


def _geometric_mass(theta: float, lo: int, hi: int) -> float:
    """sum of theta**u for u in [lo, hi), without the common factor 1 / (1 - theta)."""
    return _ipow(theta, lo) * (1.0 - _ipow(theta, hi - lo))


@cache
def _table(byte: int) -> np.ndarray:
    """Unnormalised token probabilities (float64) of a model byte."""
    family, index = divmod(byte, _SCALES)
    s = scale(index)
    masses = []
    if family == GEOMETRIC:  # mean zigzag value s
        theta = s / (1.0 + s)
        masses = [_geometric_mass(theta, *_bucket(t)) for t in range(TOKENS)]
    else:  # flat below 2 s (a uniform |x| < s), geometric tail of mean s / 4 beyond
        bound = max(int(2 * s), 1)
        tail = max(s / 4.0, 1.0)
        theta = tail / (1.0 + tail)
        for t in range(TOKENS):
            lo, hi = _bucket(t)
            flat = max(0, min(hi, bound) - lo) * (1.0 - theta)
            start = max(lo, bound)
            masses.append(flat + (_geometric_mass(theta, start - bound, hi - bound) if start < hi else 0.0))
    return np.array(masses, dtype=np.float64)


@cache
def _model(byte: int) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(_table(byte), perfect=False)


@cache
def _categorical(probabilities: tuple[float, ...]) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(np.array(probabilities, dtype=np.float64), perfect=False)


def _zigzag(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.int64).ravel()
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    return (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)


def _tokens(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token, raw bit count, raw bits) of zigzag values."""
    if u.size and int(u.max()) >= 1 << _MAX_BITS:
        raise ValueError("compact record: an integer is too large to code")
    n = np.zeros(u.shape, dtype=np.int64)
    big = u >= _DIRECT
    n[big] = np.floor(np.log2(u[big].astype(np.float64))).astype(np.int64)
    # float log2 may be off by one near powers of two: fix it exactly
    n[big] -= (u[big] < (np.uint64(1) << n[big].astype(np.uint64))).astype(np.int64)
    n[big] += (u[big] >= (np.uint64(2) << n[big].astype(np.uint64))).astype(np.int64)
    nbits = np.where(big, n - 1, 0)
    top = np.where(big, (u >> np.maximum(nbits, 0).astype(np.uint64)) & np.uint64(1), 0).astype(np.int64)
    token = np.where(big, _DIRECT + 2 * (n - 4) + top, u.astype(np.int64))
    raw = u & ((np.uint64(1) << nbits.astype(np.uint64)) - np.uint64(1))
    return token, nbits, raw


@cache
def _code_lengths() -> np.ndarray:
    """(model bytes, tokens) ideal code lengths in bits (for the encoder's choice only)."""
    tables = np.array([_table(b) for b in range(2 * _SCALES)])
    return -np.log2(np.maximum(tables / tables.sum(axis=1, keepdims=True), 2.0**-24))


def best_model(values: np.ndarray, families: tuple[int, ...] = (GEOMETRIC,)) -> int:
    """The model byte with the shortest code for ``values`` (of the given families)."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if not v.size:
        return 0
    token, _, _ = _tokens(_zigzag(v))
    bits = _code_lengths() @ np.bincount(token, minlength=TOKENS).astype(np.float64)
    allowed = np.concatenate([np.arange(_SCALES) + f * _SCALES for f in families])
    return int(allowed[np.argmin(bits[allowed])])


class Encoder:
    """Range encoder of integer groups; the decoder must read the same groups in the same order."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def ints(self, values: np.ndarray, byte: int) -> None:
        self.groups([(values, byte)])

    def groups(self, groups: list[tuple[np.ndarray, int]]) -> None:
        """Integer groups, each with its model byte: all tokens (group by group), then all raw bits."""
        coded = [(_tokens(_zigzag(values)), byte) for values, byte in groups]
        for (token, _, _), byte in coded:
            if token.size:
                self._coder.encode(token.astype(np.int32), _model(byte))
        if coded:
            nbits = np.concatenate([c[0][1] for c in coded])
            raw = np.concatenate([c[0][2] for c in coded])
            for shift in range(0, int(nbits.max(initial=0)), _RAW_CHUNK):
                sel = nbits > shift
                width = np.minimum(nbits[sel] - shift, _RAW_CHUNK).astype(np.uint64)
                symbols = (raw[sel] >> np.uint64(shift)) & ((np.uint64(1) << width) - np.uint64(1))
                self._coder.encode(symbols.astype(np.int32), constriction.stream.model.Uniform(),
                                   (np.uint64(1) << width).astype(np.int32))

    def categorical(self, symbols: np.ndarray, probabilities: tuple[float, ...]) -> None:
        """Symbols 0..n-1, all with the same (unnormalised) probabilities."""
        if len(symbols):
            self._coder.encode(np.asarray(symbols, dtype=np.int32), _categorical(probabilities))

    def uniform(self, symbols: np.ndarray, size: int) -> None:
        """Symbols 0..size-1, all equally likely."""
        if len(symbols):
            self._coder.encode(np.asarray(symbols, dtype=np.int32), constriction.stream.model.Uniform(size))

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Inverse of :class:`Encoder` (same calls, same order)."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise ValueError("compact record: entropy-coded section is not a whole number of words")
        self._coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

    def ints(self, count: int, byte: int) -> np.ndarray:
        return self.groups([(count, byte)])

    def groups(self, groups: list[tuple[int, int]]) -> np.ndarray:
        """The values of :meth:`Encoder.groups` (given each group's size and model byte), concatenated."""
        tokens = [self._decode(_model(byte), count) for count, byte in groups if count]
        if not tokens:
            return np.zeros(0, dtype=np.int64)
        token = np.concatenate(tokens).astype(np.int64)
        big = token >= _DIRECT
        nbits = np.where(big, (token - _DIRECT) // 2 + 3, 0)
        u = np.where(big, (2 + (token - _DIRECT) % 2) << nbits, token).astype(np.uint64)
        for shift in range(0, int(nbits.max(initial=0)), _RAW_CHUNK):
            sel = nbits > shift
            width = np.minimum(nbits[sel] - shift, _RAW_CHUNK)
            chunk = self._decode(constriction.stream.model.Uniform(), (1 << width).astype(np.int32))
            u[sel] |= chunk.astype(np.uint64) << np.uint64(shift)
        return _unzigzag(u)

    def categorical(self, count: int, probabilities: tuple[float, ...]) -> np.ndarray:
        if not count:
            return np.zeros(0, dtype=np.int64)
        return self._decode(_categorical(probabilities), count).astype(np.int64)

    def uniform(self, count: int, size: int) -> np.ndarray:
        if not count:
            return np.zeros(0, dtype=np.int64)
        return self._decode(constriction.stream.model.Uniform(size), count).astype(np.int64)

    def _decode(self, model: object, arg: object) -> np.ndarray:
        try:
            return np.asarray(self._coder.decode(model, arg))
        except (ValueError, RuntimeError, AssertionError) as e:
            raise ValueError(f"compact record: entropy-coded data does not decode: {e}") from e
