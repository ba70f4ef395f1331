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

import numpy as np

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
