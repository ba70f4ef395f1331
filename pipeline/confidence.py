"""Confidence stage: AFDB-compatible confidence metrics, geometry sanity checks, publication tier.

Every prediction gets a :class:`ConfidenceMetrics` row. The :class:`ConfidencePolicy` only decides
its ``tier`` and whether its mmCIF is ``published``; low tiers keep their metrics row.

Conventions (measured on the AlphaFold DB v4 reference entries, see ``tests/data/afdb``):

* pLDDT bands (AFDB ``fractionPlddt*``): very low < 50 <= low < 70 <= confident < 90 <= very high;
  lower bounds inclusive. AF-A0A1U8FD60-F1 has residues at exactly 50.00 and 90.00 and its AFDB
  fractions (0.132, 0.126, 0.48, 0.262) are only reproduced with that convention; it is also
  AlphaFold's own ``_confidence_category`` (``alphafold/common/confidence.py``).
  Fractions are over residues, rounded to 3 decimals (Python ``round``).
* ``globalMetricValue`` (AFDB ``_ma_qa_metric_global``) is the mean over ATOMS of
  ``B_iso_or_equiv``: per-residue pLDDT weighted by each residue's number of atoms, rounded to
  2 decimals (P00221: 84.43, while the mean over residues is 83.87).
* Both are computed from pLDDT as written to the files (2 decimals), so anyone recomputing them
  from our mmCIF or confidence JSON gets the same numbers.
* ``mean_plddt_residues`` is the plain mean over residues of the model's pLDDT (unrounded); it is
  the quantity ESM Atlas's high-confidence rule (mean pLDDT > 70 and pTM > 0.7) is stated for,
  and the one tiers compare against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.base import Prediction
from storage.afdb_json import plddt_band_index, round_plddt

logger = logging.getLogger(__name__)

__all__ = [
    "CA_CA_MAX_ANGSTROM",
    "CA_CA_MIN_ANGSTROM",
    "REASON_INVALID_OUTPUT",
    "REASON_NON_FINITE_OUTPUT",
    "ConfidenceMetrics",
    "ConfidencePolicy",
    "ConfidenceTier",
    "GeometryCheck",
    "assign_tier",
    "ca_ca_outlier_fraction",
    "check_geometry",
    "compute_confidence",
    "global_metric_value",
    "plddt_band_fractions",
]

#: Failure reason codes (``failures.reason``, see ``storage.schema.FAILURE_REASONS``).
REASON_NON_FINITE_OUTPUT = "non_finite_output"  # NaN/inf coordinates of existing atoms, pLDDT, PAE or pTM
REASON_INVALID_OUTPUT = "invalid_output"  # no atoms at all, or pLDDT/pTM/PAE outside their ranges

#: Consecutive CA-CA distances outside this range (Angstrom) count as geometry outliers.
CA_CA_MIN_ANGSTROM = 3.0
CA_CA_MAX_ANGSTROM = 4.5

_CA_INDEX = 1  # atom37 index of CA


# ----------------------------------------------------------------------------------------------
# Publication policy (config boundary: pydantic)
# ----------------------------------------------------------------------------------------------


class ConfidenceTier(BaseModel):
    """One named tier: a prediction belongs to it when it beats every threshold (strict >)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    min_mean_plddt: float | None = Field(default=None, ge=0.0, le=100.0)
    min_ptm: float | None = Field(default=None, ge=0.0, le=1.0)


class ConfidencePolicy(BaseModel):
    """Which tier each prediction falls into and which tiers get their mmCIF published.

    Tiers are tried in order; the first whose thresholds are all beaten (strictly greater) wins,
    anything else falls into ``fallback_tier``. The default is ESM Atlas's high-confidence rule:
    "high" = mean pLDDT > 70 and pTM > 0.7, else "low"; every tier is published.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tiers: list[ConfidenceTier] = Field(
        default_factory=lambda: [ConfidenceTier(name="high", min_mean_plddt=70.0, min_ptm=0.7)]
    )
    fallback_tier: str = Field(default="low", min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    publish_tiers: list[str] | None = Field(
        default=None, description="tiers whose mmCIF is published; None = all tiers"
    )

    @model_validator(mode="after")
    def _check_names(self) -> ConfidencePolicy:
        names = self.tier_names
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        if self.publish_tiers is not None:
            unknown = sorted(set(self.publish_tiers) - set(names))
            if unknown:
                raise ValueError(f"publish_tiers names unknown tiers {unknown}; tiers are {names}")
        return self

    @property
    def tier_names(self) -> list[str]:
        """All tier names in order, the fallback tier last."""
        return [t.name for t in self.tiers] + [self.fallback_tier]

    def is_published(self, tier: str) -> bool:
        """Whether predictions of ``tier`` get their mmCIF published."""
        return self.publish_tiers is None or tier in self.publish_tiers


def assign_tier(mean_plddt: float, ptm: float, policy: ConfidencePolicy) -> str:
    """The first tier of ``policy`` whose thresholds are strictly exceeded (NaN never passes)."""
    for tier in policy.tiers:
        if tier.min_mean_plddt is not None and not mean_plddt > tier.min_mean_plddt:
            continue
        if tier.min_ptm is not None and not ptm > tier.min_ptm:
            continue
        return tier.name
    return policy.fallback_tier


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def plddt_band_fractions(plddt: np.ndarray) -> tuple[float, float, float, float]:
    """AFDB ``fractionPlddt{VeryLow,Low,Confident,VeryHigh}``, 3 decimals, over residues.

    ``plddt`` is taken as given (pass :func:`storage.afdb_json.round_plddt` output to match files).
    """
    values = np.asarray(plddt, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot compute pLDDT bands of an empty sequence")
    counts = np.bincount(plddt_band_index(values), minlength=4)
    n = values.size
    vl, lo, co, vh = (round(float(c) / n, 3) for c in counts)
    return vl, lo, co, vh


def global_metric_value(plddt: np.ndarray, atoms_per_residue: np.ndarray) -> float:
    """AFDB ``globalMetricValue``: mean over atoms of per-residue pLDDT, rounded to 2 decimals."""
    weights = np.asarray(atoms_per_residue, dtype=np.float64)
    values = np.asarray(plddt, dtype=np.float64)
    if weights.shape != values.shape:
        raise ValueError(f"atoms_per_residue shape {weights.shape} != plddt shape {values.shape}")
    total = weights.sum()
    if total <= 0:
        raise ValueError("no atoms: the global pLDDT (mean over atoms) is undefined")
    return round(float((values * weights).sum() / total), 2)


# ----------------------------------------------------------------------------------------------
# Geometry sanity checks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeometryCheck:
    """Result of :func:`check_geometry`.

    Attributes:
        failure_reason: a ``failures.reason`` code when the prediction must become a failure row
            (non-finite coordinates or confidence values), else None.
        failure_message: human-readable detail for the failure row ("" when no failure).
        ca_ca_outlier_fraction: fraction of consecutive CA-CA distances outside 3.0-4.5 Angstrom
            (recorded, never a failure); NaN when coordinates are not finite.
        n_ca_ca_pairs: number of consecutive residue pairs that both have a CA.
    """

    failure_reason: str | None
    failure_message: str
    ca_ca_outlier_fraction: float
    n_ca_ca_pairs: int


def ca_ca_outlier_fraction(atom_positions: np.ndarray, atom_mask: np.ndarray) -> tuple[float, int]:
    """Fraction of consecutive CA-CA distances outside 3.0-4.5 Angstrom, and the pair count.

    Only pairs ``(i, i+1)`` where both residues have a CA are counted; 0.0 when there are none.
    Cis peptides (CA-CA about 2.9 Angstrom) count as outliers: this is a number to record.
    """
    ca = np.asarray(atom_positions, dtype=np.float64)[:, _CA_INDEX, :]
    has_ca = np.asarray(atom_mask, dtype=bool)[:, _CA_INDEX]
    both = has_ca[:-1] & has_ca[1:]
    n_pairs = int(both.sum())
    if n_pairs == 0:
        return 0.0, 0
    dist = np.linalg.norm(ca[1:] - ca[:-1], axis=1)[both]
    outside = (dist < CA_CA_MIN_ANGSTROM) | (dist > CA_CA_MAX_ANGSTROM)
    return float(outside.sum()) / n_pairs, n_pairs


def check_geometry(prediction: Prediction) -> GeometryCheck:
    """Sanity checks: atoms present with finite coordinates, valid confidence, CA-CA distances.

    The first failed check sets ``failure_reason``: ``invalid_output`` (no atoms; pLDDT outside
    0-100, pTM outside 0-1, negative PAE) or ``non_finite_output`` (NaN/inf coordinates of
    existing atoms, pLDDT, PAE or pTM). The CA-CA outlier fraction is recorded whenever the
    coordinates are finite.
    """
    mask = np.asarray(prediction.atom_mask, dtype=bool)
    positions = np.asarray(prediction.atom_positions, dtype=np.float64)
    if not mask.any():
        return GeometryCheck(
            REASON_INVALID_OUTPUT, "the prediction has no atoms (empty atom mask)", float("nan"), 0
        )
    bad_residues = np.nonzero((mask & ~np.isfinite(positions).all(axis=-1)).any(axis=1))[0]
    if bad_residues.size:
        n_pairs = int((mask[:-1, _CA_INDEX] & mask[1:, _CA_INDEX]).sum())
        message = (
            f"{bad_residues.size} of {len(prediction.sequence)} residues have non-finite atom coordinates "
            f"(first: residue {int(bad_residues[0]) + 1}); the model output is unusable"
        )
        return GeometryCheck(REASON_NON_FINITE_OUTPUT, message, float("nan"), n_pairs)
    fraction, n_pairs = ca_ca_outlier_fraction(positions, mask)
    plddt = np.asarray(prediction.plddt, dtype=np.float64)
    pae = np.asarray(prediction.pae, dtype=np.float64)
    ptm = float(prediction.ptm)
    non_finite = [
        name
        for name, ok in (
            ("pLDDT", np.isfinite(plddt).all()),
            ("PAE", np.isfinite(pae).all()),
            ("pTM", np.isfinite(ptm)),
        )
        if not ok
    ]
    if non_finite:
        message = f"non-finite {', '.join(non_finite)} in the model output"
        return GeometryCheck(REASON_NON_FINITE_OUTPUT, message, fraction, n_pairs)
    out_of_range = [
        name
        for name, ok in (
            ("pLDDT (0-100)", plddt.min() >= 0.0 and plddt.max() <= 100.0),
            ("PAE (>= 0)", pae.size == 0 or pae.min() >= 0.0),
            ("pTM (0-1)", 0.0 <= ptm <= 1.0),
        )
        if not ok
    ]
    if out_of_range:
        message = "values out of range: " + ", ".join(out_of_range)
        return GeometryCheck(REASON_INVALID_OUTPUT, message, fraction, n_pairs)
    return GeometryCheck(None, "", fraction, n_pairs)


# ----------------------------------------------------------------------------------------------
# The stage's record
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceMetrics:
    """Confidence metrics of one prediction (pLDDT 0-100, PAE in Angstrom, pTM 0-1).

    Attributes:
        mean_plddt_residues: mean over residues of the model's per-residue pLDDT (unrounded).
        global_metric_value: AFDB ``globalMetricValue``, mean over atoms, 2 decimals.
        fraction_plddt_*: AFDB band fractions over residues, 3 decimals.
        ptm: predicted TM-score.
        max_pae: the largest value the PAE head can express (AFDB ``max_predicted_aligned_error``).
        mean_pae: mean of the full L x L PAE matrix.
        tier: the policy tier; ``published``: whether the tier's mmCIF is published.
        ca_ca_outlier_fraction / n_ca_ca_pairs: see :class:`GeometryCheck`.
        failure_reason / failure_message: set when the prediction must become a failure row;
            the numeric fields may then be NaN and ``published`` is False.
    """

    mean_plddt_residues: float
    global_metric_value: float
    fraction_plddt_very_low: float
    fraction_plddt_low: float
    fraction_plddt_confident: float
    fraction_plddt_very_high: float
    ptm: float
    max_pae: float
    mean_pae: float
    tier: str
    published: bool
    ca_ca_outlier_fraction: float
    n_ca_ca_pairs: int
    failure_reason: str | None = None
    failure_message: str = ""

    def afdb_columns(self) -> dict[str, Any]:
        """The AFDB ``metadata`` column names and values this record provides."""
        return {
            "globalMetricValue": self.global_metric_value,
            "fractionPlddtVeryLow": self.fraction_plddt_very_low,
            "fractionPlddtLow": self.fraction_plddt_low,
            "fractionPlddtConfident": self.fraction_plddt_confident,
            "fractionPlddtVeryHigh": self.fraction_plddt_very_high,
        }


def compute_confidence(prediction: Prediction, policy: ConfidencePolicy | None = None) -> ConfidenceMetrics:
    """Metrics, geometry checks and tier for one prediction.

    Atoms per residue (the weights of ``globalMetricValue``) come from ``prediction.atom_mask``.
    A prediction that fails the sanity checks gets ``failure_reason`` set, the fallback tier and
    ``published=False``; the caller turns it into a failure row.
    """
    policy = policy or ConfidencePolicy()
    geometry = check_geometry(prediction)
    nan = float("nan")
    plddt = np.asarray(prediction.plddt, dtype=np.float64)
    pae = np.asarray(prediction.pae, dtype=np.float64)
    mean_plddt = float(plddt.mean()) if plddt.size else nan
    mean_pae = float(pae.mean()) if pae.size else nan
    fractions: tuple[float, float, float, float] = (nan, nan, nan, nan)
    global_value = nan
    if geometry.failure_reason is None:
        written = round_plddt(plddt)
        fractions = plddt_band_fractions(written)
        global_value = global_metric_value(written, np.asarray(prediction.atom_mask, dtype=bool).sum(axis=1))
        tier = assign_tier(mean_plddt, float(prediction.ptm), policy)
        published = policy.is_published(tier)
    else:
        logger.warning(
            "prediction of length %d failed sanity checks (%s): %s",
            len(prediction.sequence),
            geometry.failure_reason,
            geometry.failure_message,
        )
        tier, published = policy.fallback_tier, False
    return ConfidenceMetrics(
        mean_plddt_residues=mean_plddt,
        global_metric_value=global_value,
        fraction_plddt_very_low=fractions[0],
        fraction_plddt_low=fractions[1],
        fraction_plddt_confident=fractions[2],
        fraction_plddt_very_high=fractions[3],
        ptm=float(prediction.ptm),
        max_pae=float(prediction.max_pae),
        mean_pae=mean_pae,
        tier=tier,
        published=published,
        ca_ca_outlier_fraction=geometry.ca_ca_outlier_fraction,
        n_ca_ca_pairs=geometry.n_ca_ca_pairs,
        failure_reason=geometry.failure_reason,
        failure_message=geometry.failure_message,
    )
