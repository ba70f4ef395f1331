"""AlphaFold DB JSON formats, byte for byte: PAE JSON (v4) and confidence JSON (v4).

PAE JSON (``AF-<acc>-F1-predicted_aligned_error_v4.json``)
---------------------------------------------------------
One JSON array holding one object::

    [{"predicted_aligned_error":[[0,1,4,...],...],"max_predicted_aligned_error":31.75}]

Measured on the five AFDB v4 files in ``tests/data/afdb`` (and the shared reference data):

* compact separators ``,`` and ``:``, no spaces, no indentation, no trailing newline; key order
  ``predicted_aligned_error`` then ``max_predicted_aligned_error``. Python's
  ``json.dumps(obj, separators=(",", ":"))`` reproduces the files byte for byte.
* the matrix is square (L x L, row ``i`` = aligned on residue ``i``) and every value is an
  integer (Angstrom, rounded to the nearest integer; the diagonal is 0 and no value exceeds 31 in
  these files). AFDB introduced integer rounding with the v3/v4 format change (see the discussion
  in cctbx/cctbx_project PRs #775/#776: "rounding all values to the nearest integer"; the older
  minimum of 0.2 became 0). Ties cannot be observed in integer files; we round half to even
  (``numpy.rint`` on float64), which is what AlphaFold's own ``get_pae_json`` does with
  ``np.round`` at one decimal.
* ``max_predicted_aligned_error`` is the largest value the PAE head can express, written as a JSON
  float (``31.75`` for AlphaFold2 and ESMFold).

Confidence JSON (``AF-<acc>-F1-confidence_v4.json``)
---------------------------------------------------
::

    {"residueNumber":[1,2,...],"confidenceScore":[56.42,52.97,...],"confidenceCategory":["L","L",...]}

This is the layout of AlphaFold's ``confidence_json`` (``alphafold/common/confidence.py``), which
documents it as the AFDB format: compact separators, no spaces, keys in that order, scores
``round(float(score), 2)`` (so ``67.0`` prints as ``67.0``), residue numbers from 1. Category
letters: ``D`` very low (pLDDT < 50), ``L`` low (50 <= pLDDT < 70), ``M`` confident
(70 <= pLDDT < 90), ``H`` very high (pLDDT >= 90): lower bounds inclusive. That convention is
AlphaFold's ``_confidence_category`` and it is also the one that reproduces the AFDB
``fractionPlddt*`` metadata of AF-A0A1U8FD60-F1, the one reference entry with residues exactly at
a boundary (one at 50.00, two at 90.00). We categorise the rounded score that is written (not the
unrounded model output), so a reader always gets the letter from the number in the file.

No real AFDB confidence JSON is in the reference data, so tests derive one from a real AFDB mmCIF
and check its letters against the AFDB band fractions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIDENCE_CATEGORY_LETTERS",
    "PLDDT_BAND_EDGES",
    "ConfidenceJson",
    "PaeJson",
    "confidence_from_plddt",
    "plddt_band_index",
    "read_confidence_json",
    "read_pae_json",
    "round_plddt",
    "write_confidence_json",
    "write_pae_json",
]

#: pLDDT band edges (0-100 scale); a value equal to an edge belongs to the band above it.
PLDDT_BAND_EDGES: tuple[float, float, float] = (50.0, 70.0, 90.0)
#: AFDB confidence letters for bands 0..3: very low, low, confident, very high.
CONFIDENCE_CATEGORY_LETTERS = "DLMH"

_SEPARATORS = (",", ":")


def plddt_band_index(plddt: np.ndarray | Sequence[float]) -> np.ndarray:
    """Band of each pLDDT value: 0 very low (<50), 1 low, 2 confident, 3 very high (>=90).

    Raises:
        ValueError: a value is not finite or outside 0-100.
    """
    values = np.asarray(plddt, dtype=np.float64)
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 100.0):
        raise ValueError("pLDDT values must be finite and within 0-100")
    return np.searchsorted(np.asarray(PLDDT_BAND_EDGES), values, side="right")


def round_plddt(plddt: np.ndarray | Sequence[float]) -> np.ndarray:
    """pLDDT as written to files: each value correctly rounded to 2 decimals (float64).

    Equal to parsing ``f"{value:.2f}"`` back, i.e. to what the mmCIF B-factor column and the
    confidence JSON carry (``numpy.round`` can differ in the last digit, so it is not used).
    """
    return np.array([round(float(v), 2) for v in np.asarray(plddt).ravel()], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# PAE JSON
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PaeJson:
    """Contents of an AFDB v4 PAE JSON file.

    Attributes:
        pae: float32 (L, L), Angstrom; row ``i`` = aligned on residue ``i``.
        max_pae: the largest value the PAE head can express (``max_predicted_aligned_error``).
    """

    pae: np.ndarray
    max_pae: float


def read_pae_json(data: bytes | str) -> PaeJson:
    """Parse AFDB v4 PAE JSON text.

    Raises:
        ValueError: not the v4 layout (one object with a square matrix and the max value).
    """
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"PAE JSON is not valid JSON: {e}") from e
    if not (isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], dict)):
        raise ValueError("PAE JSON must be a list holding exactly one object (AFDB v4 layout)")
    entry = obj[0]
    missing = {"predicted_aligned_error", "max_predicted_aligned_error"} - entry.keys()
    if missing:
        raise ValueError(f"PAE JSON lacks {sorted(missing)}; older AFDB layouts are not supported")
    pae = np.asarray(entry["predicted_aligned_error"], dtype=np.float32)
    if pae.ndim != 2 or pae.shape[0] != pae.shape[1]:
        raise ValueError(f"PAE matrix must be square, got shape {pae.shape}")
    return PaeJson(pae=pae, max_pae=float(entry["max_predicted_aligned_error"]))


def write_pae_json(pae: PaeJson | np.ndarray, max_pae: float | None = None) -> bytes:
    """Serialise PAE exactly as AFDB v4 does (integers, compact, no trailing newline).

    Args:
        pae: a :class:`PaeJson`, or an (L, L) array in Angstrom (then ``max_pae`` is required).
        max_pae: the head's maximum expressible PAE (31.75 for AlphaFold2/ESMFold).

    Raises:
        ValueError: the matrix is not square, has non-finite or negative values, or
            ``max_pae`` is missing.
    """
    if isinstance(pae, PaeJson):
        matrix, max_value = pae.pae, pae.max_pae if max_pae is None else max_pae
    else:
        if max_pae is None:
            raise ValueError("max_pae is required when writing a bare PAE array")
        matrix, max_value = pae, max_pae
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"PAE matrix must be square, got shape {values.shape}")
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0.0):
        raise ValueError("PAE values must be finite and non-negative")
    rounded = np.rint(values).astype(np.int64)
    obj = [{"predicted_aligned_error": rounded.tolist(), "max_predicted_aligned_error": float(max_value)}]
    return json.dumps(obj, separators=_SEPARATORS, allow_nan=False).encode("ascii")


# ----------------------------------------------------------------------------------------------
# Confidence JSON
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceJson:
    """Contents of an AFDB confidence JSON: one entry per residue, residue numbers from 1."""

    residue_number: tuple[int, ...]
    confidence_score: tuple[float, ...]
    confidence_category: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.residue_number)
        if len(self.confidence_score) != n or len(self.confidence_category) != n:
            raise ValueError("confidence JSON arrays must have one entry per residue")
        bad = set(self.confidence_category) - set(CONFIDENCE_CATEGORY_LETTERS)
        if bad:
            raise ValueError(f"unknown confidence categories {sorted(bad)}; expected D, L, M or H")


def confidence_from_plddt(plddt: np.ndarray | Sequence[float]) -> ConfidenceJson:
    """Confidence JSON contents for per-residue pLDDT (0-100), rounded to 2 decimals."""
    scores = round_plddt(plddt)
    letters = [CONFIDENCE_CATEGORY_LETTERS[i] for i in plddt_band_index(scores)]
    return ConfidenceJson(
        residue_number=tuple(range(1, len(scores) + 1)),
        confidence_score=tuple(float(s) for s in scores),
        confidence_category=tuple(letters),
    )


def write_confidence_json(confidence: ConfidenceJson | np.ndarray | Sequence[float]) -> bytes:
    """Serialise confidence JSON in AFDB's layout (compact, no spaces, no trailing newline)."""
    if not isinstance(confidence, ConfidenceJson):
        confidence = confidence_from_plddt(confidence)
    obj = {
        "residueNumber": list(confidence.residue_number),
        "confidenceScore": [round(float(s), 2) for s in confidence.confidence_score],
        "confidenceCategory": list(confidence.confidence_category),
    }
    return json.dumps(obj, separators=_SEPARATORS, allow_nan=False).encode("ascii")


def read_confidence_json(data: bytes | str) -> ConfidenceJson:
    """Parse AFDB confidence JSON text.

    Raises:
        ValueError: not valid JSON, or keys/arrays not in the AFDB layout.
    """
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"confidence JSON is not valid JSON: {e}") from e
    keys = ("residueNumber", "confidenceScore", "confidenceCategory")
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise ValueError(f"confidence JSON must be an object with keys {list(keys)}")
    return ConfidenceJson(
        residue_number=tuple(int(x) for x in obj["residueNumber"]),
        confidence_score=tuple(float(x) for x in obj["confidenceScore"]),
        confidence_category=tuple(str(x) for x in obj["confidenceCategory"]),
    )
