"""Tests for pipeline.confidence: AFDB metrics, geometry checks, publication policy.

Expected values are the AlphaFold DB metadata of each real AFDB entry
(``tests/data/afdb/DERIVED_afdb_metadata_rows_from_cif.csv``) and distances measured with gemmi.
"""

from __future__ import annotations

import dataclasses
import itertools

import gemmi
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.confidence import (
    REASON_INVALID_OUTPUT,
    REASON_NON_FINITE_OUTPUT,
    ConfidencePolicy,
    ConfidenceTier,
    assign_tier,
    ca_ca_outlier_fraction,
    check_geometry,
    compute_confidence,
    global_metric_value,
    plddt_band_fractions,
)
from tests.afdb_data import AFDB, ENTRIES, METADATA, read_csv
from tests.storage.test_mmcif import afdb_prediction

EXTRACTS = ["A0A1U8FD60", "Q5VSL9"]  # per-residue pLDDT + atom counts extracted from AFDB mmCIF

BANDS = ["fractionPlddtVeryLow", "fractionPlddtLow", "fractionPlddtConfident", "fractionPlddtVeryHigh"]


def expected(accession: str) -> tuple[float, tuple[float, ...]]:
    row = METADATA[accession]
    return float(row["globalMetricValue"]), tuple(float(row[b]) for b in BANDS)


# ----------------------------------------------------------------------------------------------
# AFDB metrics recomputed from the real files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accession", ENTRIES)
def test_metrics_from_afdb_mmcif_equal_afdb_metadata(accession: str) -> None:
    metrics = compute_confidence(afdb_prediction(accession))
    global_value, fractions = expected(accession)
    assert metrics.global_metric_value == global_value
    assert (
        metrics.fraction_plddt_very_low,
        metrics.fraction_plddt_low,
        metrics.fraction_plddt_confident,
        metrics.fraction_plddt_very_high,
    ) == fractions
    assert metrics.afdb_columns() == {
        "globalMetricValue": global_value,
        **{b: f for b, f in zip(BANDS, fractions, strict=True)},
    }
    assert metrics.failure_reason is None
    assert metrics.max_pae == 31.75


@pytest.mark.parametrize("accession", EXTRACTS)
def test_metrics_from_afdb_extracts_equal_afdb_metadata(accession: str) -> None:
    rows = read_csv(AFDB / f"DERIVED_AF-{accession}-F1_plddt_atoms.csv")
    plddt = np.array([float(r["plddt"]) for r in rows])
    atoms = np.array([int(r["n_atoms"]) for r in rows])
    global_value, fractions = expected(accession)
    assert global_metric_value(plddt, atoms) == global_value
    assert plddt_band_fractions(plddt) == fractions


def test_global_metric_is_the_mean_over_atoms_not_residues() -> None:
    metrics = compute_confidence(afdb_prediction("P00221"))
    assert metrics.global_metric_value == 84.43
    assert round(metrics.mean_plddt_residues, 2) == 83.87


def test_band_boundaries_are_lower_inclusive() -> None:
    # AF-A0A1U8FD60-F1 has residues at exactly 50.00 and 90.00; only "lower bound inclusive"
    # (very low < 50 <= low < 70 <= confident < 90 <= very high) gives AFDB's fractions.
    rows = read_csv(AFDB / "DERIVED_AF-A0A1U8FD60-F1_plddt_atoms.csv")
    plddt = np.array([float(r["plddt"]) for r in rows])
    _, fractions = expected("A0A1U8FD60")
    assert plddt_band_fractions(plddt) == fractions
    upper_inclusive = tuple(
        round(float(np.mean(m)), 3)
        for m in (plddt <= 50, (plddt > 50) & (plddt <= 70), (plddt > 70) & (plddt <= 90), plddt > 90)
    )
    assert upper_inclusive != fractions
    assert plddt_band_fractions(np.array([49.99, 50.0, 69.99, 70.0, 89.99, 90.0, 100.0, 0.0])) == (
        0.25,
        0.25,
        0.25,
        0.25,
    )


def test_metrics_use_plddt_as_written() -> None:
    # 69.996 is written as 70.00, so it counts as confident in the file and in the metrics.
    base = afdb_prediction("O05023")
    plddt = np.full(len(base.sequence), 69.996, dtype=np.float32)
    metrics = compute_confidence(dataclasses.replace(base, plddt=plddt))
    assert metrics.fraction_plddt_confident == 1.0
    assert metrics.global_metric_value == 70.0
    assert metrics.mean_plddt_residues == pytest.approx(69.996, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def _gemmi_ca_ca_fraction(accession: str) -> tuple[float, int]:
    chain = gemmi.read_structure(str(AFDB / f"AF-{accession}-F1-model_v4.cif"))[0][0]
    ca = [residue.find_atom("CA", "*").pos for residue in chain]
    distances = [a.dist(b) for a, b in itertools.pairwise(ca)]
    return sum(1 for d in distances if d < 3.0 or d > 4.5) / len(distances), len(distances)


@pytest.mark.parametrize("accession", ENTRIES)
def test_ca_ca_outliers_match_gemmi(accession: str) -> None:
    prediction = afdb_prediction(accession)
    fraction, pairs = _gemmi_ca_ca_fraction(accession)
    check = check_geometry(prediction)
    assert check.failure_reason is None
    assert (check.ca_ca_outlier_fraction, check.n_ca_ca_pairs) == pytest.approx((fraction, pairs))
    assert compute_confidence(prediction).ca_ca_outlier_fraction == pytest.approx(fraction)


def test_ca_ca_outliers_count_a_displaced_residue() -> None:
    prediction = afdb_prediction("O05023")
    positions = prediction.atom_positions.copy()
    positions[50] += np.array([10.0, 0.0, 0.0], dtype=np.float32)  # breaks both neighbouring pairs
    fraction, pairs = ca_ca_outlier_fraction(positions, prediction.atom_mask)
    baseline, _ = ca_ca_outlier_fraction(prediction.atom_positions, prediction.atom_mask)
    assert pairs == len(prediction.sequence) - 1
    assert fraction == pytest.approx(baseline + 2 / pairs)
    metrics = compute_confidence(dataclasses.replace(prediction, atom_positions=positions))
    assert metrics.failure_reason is None  # recorded, not a failure


def test_non_finite_coordinates_are_a_failure() -> None:
    prediction = afdb_prediction("O05023")
    positions = prediction.atom_positions.copy()
    positions[7, 1, 2] = np.inf  # CA of residue 8
    positions[0, 36] = np.nan  # residue 1 has no OXT: masked atoms are ignored
    broken = dataclasses.replace(prediction, atom_positions=positions)
    check = check_geometry(broken)
    assert check.failure_reason == REASON_NON_FINITE_OUTPUT
    assert "residue 8" in check.failure_message
    metrics = compute_confidence(broken, ConfidencePolicy())
    assert metrics.failure_reason == REASON_NON_FINITE_OUTPUT
    assert metrics.published is False and metrics.tier == "low"
    assert np.isnan(metrics.global_metric_value)


def test_invalid_confidence_values_are_failures() -> None:
    prediction = afdb_prediction("O05023")
    plddt = prediction.plddt.copy()
    plddt[3] = np.nan
    assert (
        check_geometry(dataclasses.replace(prediction, plddt=plddt)).failure_reason
        == REASON_NON_FINITE_OUTPUT
    )
    assert (
        check_geometry(dataclasses.replace(prediction, ptm=float("nan"))).failure_reason
        == REASON_NON_FINITE_OUTPUT
    )
    assert check_geometry(dataclasses.replace(prediction, ptm=1.5)).failure_reason == REASON_INVALID_OUTPUT
    plddt[3] = 101.0
    assert (
        check_geometry(dataclasses.replace(prediction, plddt=plddt)).failure_reason == REASON_INVALID_OUTPUT
    )
    empty = dataclasses.replace(prediction, atom_mask=np.zeros_like(prediction.atom_mask))
    assert compute_confidence(empty).failure_reason == REASON_INVALID_OUTPUT


# ----------------------------------------------------------------------------------------------
# Policy
# ----------------------------------------------------------------------------------------------


def test_default_policy_is_esm_atlas_high_confidence() -> None:
    policy = ConfidencePolicy()
    assert policy.tier_names == ["high", "low"]
    assert assign_tier(70.01, 0.71, policy) == "high"
    assert assign_tier(70.0, 0.9, policy) == "low"  # strictly greater than
    assert assign_tier(90.0, 0.7, policy) == "low"
    assert assign_tier(float("nan"), 0.9, policy) == "low"
    assert policy.is_published("high") and policy.is_published("low")


def test_policy_decides_tier_and_published_but_keeps_metrics() -> None:
    prediction = afdb_prediction("P00221", ptm=0.75)  # mean pLDDT 83.87
    only_high = ConfidencePolicy(publish_tiers=["high"])
    assert compute_confidence(prediction, only_high).tier == "high"
    low = compute_confidence(dataclasses.replace(prediction, ptm=0.5), only_high)
    assert (low.tier, low.published) == ("low", False)
    assert low.global_metric_value == 84.43 and low.ptm == 0.5  # the metrics row is kept


def test_policy_with_several_tiers_from_config_dict() -> None:
    policy = ConfidencePolicy.model_validate(
        {
            "tiers": [
                {"name": "very_high", "min_mean_plddt": 90, "min_ptm": 0.8},
                {"name": "high", "min_mean_plddt": 70, "min_ptm": 0.7},
                {"name": "plddt_only", "min_mean_plddt": 50},
            ],
            "fallback_tier": "rest",
            "publish_tiers": ["very_high", "high"],
        }
    )
    assert [assign_tier(p, t, policy) for p, t in [(95, 0.9), (95, 0.75), (60, 0.1), (40, 0.99)]] == [
        "very_high",
        "high",
        "plddt_only",
        "rest",
    ]
    assert not policy.is_published("plddt_only")


def test_policy_validation() -> None:
    with pytest.raises(ValidationError, match="unique"):
        ConfidencePolicy(tiers=[ConfidenceTier(name="low", min_ptm=0.5)])
    with pytest.raises(ValidationError, match="unknown tiers"):
        ConfidencePolicy(publish_tiers=["medium"])
    with pytest.raises(ValidationError):
        ConfidenceTier(name="x", min_ptm=2.0)
    with pytest.raises(ValidationError):
        ConfidencePolicy.model_validate({"tiers": [], "typo": 1})
