"""Tests for storage.compact and storage.structure_record: lossless compact structure records.

Expected values come from the real AlphaFold DB v4 files (coordinate text read with gemmi, PAE
JSON bytes) and from transformers' residue_constants, not from our own encoder.
"""

from __future__ import annotations

import gzip
import json

import gemmi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.esm.openfold_utils import residue_constants

from storage.afdb_json import read_pae_json
from storage.compact import (
    FORMAT_VERSION,
    RESIDUE_ATOMS,
    CompactStructure,
    decode_structure,
    encode_structure,
    quantize,
    template_atom_mask,
)
from storage.mmcif import read_modelcif, validate_modelcif
from storage.structure_record import encode_prediction, read_record
from tests.afdb_data import AFDB, DICTIONARY, ENTRIES
from tests.storage.test_mmcif import PROVENANCE, TRAINED, afdb_entry, afdb_prediction

LETTERS = "ARNDCQEGHILKMFPSTWYVX"


def _atom_site_text(cif_text: str) -> list[tuple[str, ...]]:
    """(seq id, atom name, x, y, z, B) as text, read with gemmi (independent of our reader)."""
    block = gemmi.cif.read_string(cif_text).sole_block()
    rows = block.find("_atom_site.", ["label_seq_id", "label_atom_id", "Cartn_x", "Cartn_y", "Cartn_z",
                                      "B_iso_or_equiv"])
    return [tuple(str(row[i]) for i in range(6)) for row in rows]


def test_templates_match_transformers_residue_constants() -> None:
    for one, three in residue_constants.restype_1to3.items():
        expected = set(residue_constants.residue_atoms[three])
        assert {"N", "CA", "C", "O", *RESIDUE_ATOMS[one]} == expected, three


@st.composite
def structures(draw: st.DrawFn) -> CompactStructure:
    sequence = draw(st.text(alphabet=LETTERS, min_size=1, max_size=25))
    n = len(sequence)
    mode = draw(st.sampled_from(["template", "oxt", "random"]))
    if mode == "random":
        mask = np.array(draw(st.lists(st.booleans(), min_size=n * 37, max_size=n * 37)), dtype=bool).reshape(n, 37)
    else:
        mask = template_atom_mask(sequence, oxt=mode == "oxt")
    n_atoms = int(mask.sum())
    scale = draw(st.sampled_from([1, 1000, 100_000, 2**31 - 1]))  # up to the int32 limit, negative too
    coords = np.array(draw(st.lists(st.integers(-scale, scale), min_size=n_atoms * 3, max_size=n_atoms * 3)),
                      dtype=np.int64).reshape(n_atoms, 3)
    plddt = np.array(draw(st.lists(st.integers(0, 10000), min_size=n, max_size=n)), dtype=np.int64)
    pae = None
    if draw(st.booleans()):
        pae = np.array(draw(st.lists(st.integers(0, draw(st.sampled_from([31, 65535]))), min_size=n * n,
                                     max_size=n * n)), dtype=np.int64).reshape(n, n)
    return CompactStructure(sequence, mask, coords, plddt, pae, {"ptm": 0.5, "note": "x"})


@settings(max_examples=150, deadline=None)
@given(structures())
def test_round_trip_is_lossless(structure: CompactStructure) -> None:
    record = encode_structure(structure)
    assert record[:3] == b"FAC" and record[3] == FORMAT_VERSION
    back = decode_structure(record)
    assert back.sequence == structure.sequence
    np.testing.assert_array_equal(back.atom_mask, structure.atom_mask)
    np.testing.assert_array_equal(back.coords, structure.coords)
    np.testing.assert_array_equal(back.plddt, structure.plddt)
    if structure.pae is None:
        assert back.pae is None
    else:
        np.testing.assert_array_equal(back.pae, structure.pae)
    assert dict(back.meta) == {"ptm": 0.5, "note": "x"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-9999.9994, 9999.9994, allow_nan=False), min_size=3, max_size=60))
def test_quantize_matches_the_text_mmcif_writes(values: list[float]) -> None:
    k = len(values) // 3
    positions = np.zeros((k, 37, 3))
    positions[:, 1, :] = np.array(values[: k * 3]).reshape(k, 3)
    mask = np.zeros((k, 37), dtype=bool)
    mask[:, 1] = True
    q = quantize("G" * k, positions, mask, np.full(k, 50.0), None)
    # same decimal text, except that "-0.000" (a value in (-0.0005, 0]) comes back as "0.000"
    assert [f"{v / 1000:.3f}" for v in q.coords.ravel()] == [
        f"{v:.3f}".replace("-0.000", "0.000") for v in values[: k * 3]]


def test_corrupt_and_unknown_records_are_refused() -> None:
    structure = quantize("AG", np.zeros((2, 37, 3)), template_atom_mask("AG"), np.array([50.0, 60.0]), None)
    record = encode_structure(structure)
    with pytest.raises(ValueError, match="magic"):
        decode_structure(b"XYZ" + record[3:])
    with pytest.raises(ValueError, match="version 9"):
        decode_structure(record[:3] + bytes([9]) + record[4:])
    with pytest.raises(ValueError, match="truncated"):
        decode_structure(record[:-3])
    with pytest.raises(ValueError, match="trailing"):
        decode_structure(record + b"\0")
    with pytest.raises(ValueError, match="beyond"):
        CompactStructure("A", template_atom_mask("A"), np.full((5, 3), 2**31), np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="only the 20"):
        template_atom_mask("AUG")


@pytest.mark.parametrize("accession", ENTRIES)
def test_real_afdb_coordinates_and_pae_are_byte_identical(accession: str) -> None:
    cif_path = AFDB / f"AF-{accession}-F1-model_v4.cif"
    pae_path = AFDB / f"AF-{accession}-F1-predicted_aligned_error_v4.json"
    contents = read_modelcif(cif_path.read_text())
    pae = read_pae_json(pae_path.read_bytes())
    structure = quantize(contents.sequence, contents.atom_positions, contents.atom_mask, contents.plddt, pae.pae)
    back = decode_structure(encode_structure(structure))
    original = _atom_site_text(cif_path.read_text())
    assert len(original) == len(back.coords)
    xyz_text = [tuple(f"{v / 1000:.3f}" for v in atom) for atom in back.coords]
    assert xyz_text == [row[2:5] for row in original]
    res_of_atom = np.nonzero(back.atom_mask)[0]
    assert [f"{back.plddt[r] / 100:.2f}" for r in res_of_atom] == [row[5] for row in original]
    expected_pae = json.loads(pae_path.read_bytes())[0]["predicted_aligned_error"]
    assert back.pae is not None and back.pae.tolist() == expected_pae


@pytest.mark.parametrize("accession", ENTRIES)
def test_record_renders_the_same_files_as_the_prediction(accession: str) -> None:
    from storage.afdb_json import write_pae_json
    from storage.mmcif import render_modelcif

    prediction = afdb_prediction(accession)
    entry = afdb_entry(accession)
    record = encode_prediction(prediction, entry, TRAINED, PROVENANCE)
    stored = read_record(record)
    text = stored.render_mmcif()
    assert text == render_modelcif(prediction, entry, TRAINED, PROVENANCE)
    assert validate_modelcif(text, DICTIONARY) == []
    original_pae = (AFDB / f"AF-{accession}-F1-predicted_aligned_error_v4.json").read_bytes()
    assert stored.render_pae_json() == original_pae == write_pae_json(prediction.pae, prediction.max_pae)
    # the point of the record: much smaller than the gzipped files it replaces (the 1/3 target is
    # measured per entry by benchmarks/storage_size.py; see docs/benchmarks.md)
    gz = len(gzip.compress(text.encode(), 6)) + len(gzip.compress(original_pae, 6))
    assert len(record) < gz / 2


def test_record_without_ptm_or_pae() -> None:
    prediction = afdb_prediction("O05023")
    stored = read_record(encode_prediction(prediction, afdb_entry("O05023"), TRAINED, {}, with_ptm=False,
                                           with_pae=False))
    text = stored.render_mmcif()
    assert validate_modelcif(text, DICTIONARY) == []
    block = gemmi.cif.read_string(text).sole_block()
    assert list(block.find_values("_ma_qa_metric.type")) == ["pLDDT", "pLDDT"]
    assert read_modelcif(text).ptm is None
    with pytest.raises(ValueError, match="no PAE"):
        stored.render_pae_json()
