"""Tests for storage.afdb_json: AFDB v4 PAE JSON and confidence JSON, byte for byte.

Expected bytes are the real AFDB files; the confidence JSON is derived from a real AFDB mmCIF's
pLDDT (read with gemmi) and its category letters are checked against AFDB's band fractions.
"""

from __future__ import annotations

import json
from pathlib import Path

import gemmi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.afdb_json import (
    ConfidenceJson,
    PaeJson,
    confidence_from_plddt,
    plddt_band_index,
    read_confidence_json,
    read_pae_json,
    round_plddt,
    write_confidence_json,
    write_pae_json,
)
from tests.afdb_data import AFDB, ENTRIES, METADATA, read_csv

BANDS = ["fractionPlddtVeryLow", "fractionPlddtLow", "fractionPlddtConfident", "fractionPlddtVeryHigh"]


def pae_path(accession: str) -> Path:
    return AFDB / f"AF-{accession}-F1-predicted_aligned_error_v4.json"


def afdb_plddt_text(accession: str) -> list[str]:
    """Per-residue pLDDT of the AFDB mmCIF, as the text written there."""
    block = gemmi.cif.read(str(AFDB / f"AF-{accession}-F1-model_v4.cif")).sole_block()
    return list(block.find_values("_ma_qa_metric_local.metric_value"))


# ----------------------------------------------------------------------------------------------
# PAE JSON
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accession", ENTRIES)
def test_pae_json_round_trip_is_byte_identical(accession: str) -> None:
    original = pae_path(accession).read_bytes()
    assert write_pae_json(read_pae_json(original)) == original


@pytest.mark.parametrize("accession", ENTRIES)
def test_pae_json_from_float32_array_is_byte_identical(accession: str) -> None:
    # What the write stage does: a float32 (L, L) array from the model plus the head's maximum.
    original = pae_path(accession).read_bytes()
    pae = read_pae_json(original)
    noisy = pae.pae + np.float32(0.3) * np.sign(np.sin(np.arange(pae.pae.size, dtype=np.float32))).reshape(
        pae.pae.shape
    )
    noisy = np.clip(noisy, 0, None).astype(np.float32)
    assert write_pae_json(noisy, 31.75) == original


def test_pae_json_contents() -> None:
    pae = read_pae_json(pae_path("P00221").read_bytes())
    assert pae.pae.shape == (147, 147) and pae.pae.dtype == np.float32
    assert pae.max_pae == 31.75
    assert np.all(np.diag(pae.pae) == 0)
    raw = json.loads(pae_path("P00221").read_bytes())
    assert raw[0]["predicted_aligned_error"][0][:5] == [0, 1, 4, 4, 6]  # the file's first values
    assert pae.pae[0, :5].tolist() == [0, 1, 4, 4, 6]


def test_pae_json_rounds_to_nearest_integer_half_to_even() -> None:
    pae = np.array(
        [[0.0, 0.49, 0.5, 0.51], [1.5, 2.5, 31.49, 31.75], [3.2, 4.8, 0.25, 12.0], [7.5, 8.5, 9.4999, 30.6]],
        dtype=np.float32,
    )
    text = write_pae_json(pae, 31.75)
    assert text == (
        b'[{"predicted_aligned_error":[[0,0,0,1],[2,2,31,32],[3,5,0,12],[8,8,9,31]],'
        b'"max_predicted_aligned_error":31.75}]'
    )


def test_pae_json_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        write_pae_json(np.zeros((2, 3)), 31.75)
    with pytest.raises(ValueError, match="finite"):
        write_pae_json(np.array([[0.0, np.nan], [1.0, 0.0]]), 31.75)
    with pytest.raises(ValueError, match="max_pae"):
        write_pae_json(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one object"):
        read_pae_json(b'{"predicted_aligned_error": [[0]]}')
    with pytest.raises(ValueError, match="older AFDB layouts"):
        read_pae_json(
            b'[{"residue1": [1], "residue2": [1], "distance": [0.2], "max_predicted_aligned_error": 31.75}]'
        )
    with pytest.raises(ValueError, match="square"):
        read_pae_json(b'[{"predicted_aligned_error": [[0, 1]], "max_predicted_aligned_error": 31.75}]')


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=2**32 - 1))
def test_pae_json_property_round_trip(n: int, seed: int) -> None:
    values = np.random.default_rng(seed).uniform(0, 31.75, size=(n, n)).astype(np.float32)
    text = write_pae_json(PaeJson(values, 31.75))
    back = read_pae_json(text)
    assert np.array_equal(back.pae, np.rint(values.astype(np.float64)))
    assert write_pae_json(back) == text


# ----------------------------------------------------------------------------------------------
# Confidence JSON
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accession", ENTRIES)
def test_confidence_json_from_afdb_plddt(accession: str) -> None:
    text = afdb_plddt_text(accession)
    data = write_confidence_json(np.array([float(t) for t in text]))
    assert b" " not in data and not data.endswith(b"\n")
    obj = json.loads(data)
    assert list(obj) == ["residueNumber", "confidenceScore", "confidenceCategory"]
    assert obj["residueNumber"] == list(range(1, len(text) + 1))
    assert obj["confidenceScore"] == [float(t) for t in text]
    # the letters reproduce AFDB's band fractions for this entry
    letters = np.array(obj["confidenceCategory"])
    fractions = [round(float(np.mean(letters == c)), 3) for c in "DLMH"]
    assert fractions == [float(METADATA[accession][b]) for b in BANDS]


@pytest.mark.parametrize("accession", ENTRIES)
def test_confidence_json_round_trip(accession: str) -> None:
    data = write_confidence_json(np.array([float(t) for t in afdb_plddt_text(accession)]))
    assert write_confidence_json(read_confidence_json(data)) == data


def test_confidence_json_format_and_boundaries() -> None:
    data = write_confidence_json(
        np.array([0.0, 49.994, 49.996, 50.0, 69.99, 70.0, 89.999, 90.0, 100.0, 67.0])
    )
    assert data == (
        b'{"residueNumber":[1,2,3,4,5,6,7,8,9,10],'
        b'"confidenceScore":[0.0,49.99,50.0,50.0,69.99,70.0,90.0,90.0,100.0,67.0],'
        b'"confidenceCategory":["D","D","L","L","L","M","H","H","H","L"]}'
    )


def test_band_boundaries_from_afdb_entry_with_values_on_the_edges() -> None:
    # AF-A0A1U8FD60-F1 has one residue at 50.00 and two at 90.00 (see tests/data/afdb/README.md).
    rows = read_csv(AFDB / "DERIVED_AF-A0A1U8FD60-F1_plddt_atoms.csv")
    plddt = np.array([float(r["plddt"]) for r in rows])
    assert (plddt == 50.0).sum() == 1 and (plddt == 90.0).sum() == 2
    letters = np.array(confidence_from_plddt(plddt).confidence_category)
    fractions = [round(float(np.mean(letters == c)), 3) for c in "DLMH"]
    assert fractions == [float(METADATA["A0A1U8FD60"][b]) for b in BANDS] == [0.132, 0.126, 0.48, 0.262]
    assert letters[plddt == 50.0].tolist() == ["L"] and letters[plddt == 90.0].tolist() == ["H", "H"]


def test_band_index_and_rounding_helpers() -> None:
    assert plddt_band_index([0, 49.99, 50, 69.99, 70, 89.99, 90, 100]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        plddt_band_index([101.0])
    with pytest.raises(ValueError):
        plddt_band_index([np.nan])
    values = np.array([84.435, 0.125, 70.005, 69.995], dtype=np.float32)
    assert round_plddt(values).tolist() == [float(f"{float(v):.2f}") for v in values]


def test_confidence_json_validation() -> None:
    with pytest.raises(ValueError, match="one entry per residue"):
        ConfidenceJson((1, 2), (50.0,), ("L",))
    with pytest.raises(ValueError, match="unknown confidence categories"):
        ConfidenceJson((1,), (50.0,), ("X",))
    with pytest.raises(ValueError, match="keys"):
        read_confidence_json(b'{"residueNumber":[1]}')
