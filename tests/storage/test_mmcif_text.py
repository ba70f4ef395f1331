"""Tests for storage.mmcif_text: the numpy-formatted ``_atom_site`` loop is the text gemmi writes.

The reference is gemmi itself: ``storage.mmcif._render_modelcif_gemmi`` writes every category,
``_atom_site`` included, through a gemmi ``cif.Document`` (the rendering before the fast path),
and the column helpers are compared with Python's own formatting and gemmi's loop writer.
"""

from __future__ import annotations

import dataclasses
import gzip

import gemmi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.base import Prediction
from storage.mmcif import (
    ModelCIFEntry,
    _render_modelcif_gemmi,
    _write_options,
    read_modelcif,
    render_modelcif,
    validate_modelcif,
)
from storage.mmcif_text import fixed3_column, loop_text, serial_column, take_rows, text_column
from storage.structure_record import encode_prediction, read_record
from tests.afdb_data import AFDB, DICTIONARY
from tests.storage.test_mmcif import PROVENANCE, TRAINED, UNTRAINED, afdb_entry

ALL_AFDB = ["P00221", "O05023", "O05012", "Q5VSL9", "A0A1U8FD60"]  # 118-957 residues, .cif and .cif.gz


def _afdb_prediction(accession: str, ptm: float = 0.8123) -> Prediction:
    path = next(AFDB.glob(f"AF-{accession}-F1-model_v4.cif*"))
    raw = path.read_bytes()
    contents = read_modelcif(gzip.decompress(raw) if path.name.endswith(".gz") else raw)
    n = len(contents.sequence)
    return Prediction(contents.sequence, contents.atom_positions.astype(np.float64), contents.atom_mask,
                      contents.plddt.astype(np.float64), np.zeros((n, n)), 0.0, ptm)


def _text(values: np.ndarray) -> list[str]:
    return [row.tobytes().decode().rstrip(" ") for row in values]


# ----------------------------------------------------------------------------------------------
# Whole files: fast path == gemmi-only path
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accession", ALL_AFDB)
def test_fast_rendering_equals_gemmi_rendering_for_afdb_entries(accession: str) -> None:
    prediction = _afdb_prediction(accession)
    entry = afdb_entry(accession)
    for with_ptm in (True, False):
        fast = render_modelcif(prediction, entry, TRAINED, PROVENANCE, with_ptm=with_ptm)
        assert fast == _render_modelcif_gemmi(prediction, entry, TRAINED, PROVENANCE, with_ptm=with_ptm)
    # what `foldatlas get` renders: the decoded record (coordinates exactly at 0.001 A)
    stored = read_record(encode_prediction(prediction, entry, TRAINED, PROVENANCE, with_ptm=False, with_pae=False))
    text = stored.render_mmcif()
    assert text == _render_modelcif_gemmi(stored.prediction(with_pae=False), entry, TRAINED, PROVENANCE,
                                          with_ptm=False)
    assert validate_modelcif(text, DICTIONARY) == []


def test_fast_rendering_equals_gemmi_rendering_for_a_tiny_model_prediction(tiny_backend) -> None:
    # float32 coordinates and unrounded pLDDT of an untrained model: nothing is at 0.001 A or 0.01
    prediction = tiny_backend.predict(["MKTAYIAKQRQISFVKSHFSRQXLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"])[0]
    entry = ModelCIFEntry(entry_id="FA-TINY-1", accession=None, uniprot_id=None, description="", tax_id=None,
                          organism_scientific_name=None, sequence_db_name="input", sequence_version_date=None,
                          model_created_date="2024-01-01")
    fast = render_modelcif(prediction, entry, UNTRAINED, PROVENANCE)
    assert fast == _render_modelcif_gemmi(prediction, entry, UNTRAINED, PROVENANCE)
    assert validate_modelcif(fast, DICTIONARY) == []


def _small(n: int, seed: int = 0) -> Prediction:
    rng = np.random.default_rng(seed)
    sequence = "".join(rng.choice(list("ARNDCQEGHILKMFPSTWYVX"), n))
    mask = np.zeros((n, 37), dtype=bool)
    mask[:, :5] = True
    positions = rng.normal(0.0, 20.0, (n, 37, 3))
    plddt = rng.uniform(0.0, 100.0, n)
    return Prediction(sequence, positions, mask, plddt, np.zeros((n, n)), 0.0, 0.5)


def _same(prediction: Prediction, with_ptm: bool = True) -> str:
    entry = afdb_entry("O05023")
    fast = render_modelcif(prediction, entry, TRAINED, {}, with_ptm=with_ptm)
    assert fast == _render_modelcif_gemmi(prediction, entry, TRAINED, {}, with_ptm=with_ptm)
    return fast


def test_fast_rendering_of_unusual_structures() -> None:
    # missing atoms: a residue without any, one with only CA, a full side chain elsewhere
    base = _small(12)
    mask = base.atom_mask.copy()
    mask[3] = False
    mask[4] = False
    mask[4, 1] = True
    mask[7, :] = True
    plddt = base.plddt.copy()
    plddt[[0, 1, 2]] = [100.0, 0.0, 99.995]  # 100.00, 0.00, and one next to a rounding boundary
    positions = base.atom_positions.copy()
    positions[0, 0] = [-999.999, -0.0, -0.0004]  # "-999.999", "-0.000", "-0.000"
    positions[0, 1] = [0.0005, 1.0625, -2.0005]  # binary values next to a half-thousandth
    positions[0, 2] = [9999.9995, -12345678.25, 1e-9]
    odd = dataclasses.replace(base, atom_mask=mask, plddt=plddt, atom_positions=positions)
    text = _same(odd)
    _same(odd, with_ptm=False)
    assert validate_modelcif(text, DICTIONARY) == []
    atoms = gemmi.cif.read_string(text).sole_block().find("_atom_site.", ["Cartn_x", "Cartn_y", "Cartn_z"])
    assert list(atoms[0]) == ["-999.999", "-0.000", "-0.000"]
    assert list(atoms[1]) == [f"{v:.3f}" for v in positions[0, 1]]
    # one residue (several atoms; and a single atom, which gemmi writes as pairs, not a loop)
    one = _small(1)
    _same(one)
    single = dataclasses.replace(one, atom_mask=np.eye(1, 37, 1, dtype=bool))
    assert "loop_\n_atom_site." not in _same(single)
    # all atoms of all residues, many of them (atom numbers past 9,999: wider id column)
    big = _small(400, seed=1)
    _same(dataclasses.replace(big, atom_mask=np.ones((400, 37), dtype=bool)))
    # a coordinate wider than gemmi's 30-character alignment: gemmi writes that loop itself
    huge = positions.copy()
    huge[0, 0, 0] = 1e30
    _same(dataclasses.replace(odd, atom_positions=huge))


# ----------------------------------------------------------------------------------------------
# Column helpers
# ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
                min_size=1, max_size=40))
def test_fixed3_column_is_python_formatting(values: list[float]) -> None:
    assert _text(fixed3_column(np.array(values))) == [f"{v:.3f}" for v in values]


@pytest.mark.parametrize("v", [0.0, -0.0, 0.0005, 0.0015, -0.0005, 1.0625, 2.5e-4, 999.9995, 1e6 - 0.0005, 1e6,
                               123456789.0625, -1e-300, 5e-324])
def test_fixed3_column_edge_values(v: float) -> None:
    assert _text(fixed3_column(np.array([v, 1.0]))) == [f"{v:.3f}", "1.000"]


def test_serial_and_text_columns() -> None:
    for n in (1, 9, 10, 1024, 1025, 12_345):
        assert _text(serial_column(n)) == [str(i) for i in range(1, n + 1)]
        assert serial_column(n).shape[1] == len(str(n))
    column = text_column(["N", "CA", "OXT"])
    assert column.shape == (3, 3) and _text(column) == ["N", "CA", "OXT"]
    assert take_rows(column, np.array([1, 0, 1])).shape == (3, 2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.sampled_from(["A", "CA", "OXT", "UNK"]),
                          st.integers(0, 10**5)), min_size=2, max_size=30),
       st.integers(3, 30))
def test_loop_text_is_gemmi_loop(rows: list[tuple[int, str, int]], align: int) -> None:
    tags = ["_x.a", "_x.b", "_x.c", "_x.d", "_x.e"]
    columns = [text_column([str(r[0]) for r in rows]), "?", text_column([r[1] for r in rows]), "1.0",
               text_column([str(r[2]) for r in rows])]
    doc = gemmi.cif.Document()
    block = doc.add_new_block("b")
    block.set_mmcif_category("_x.", {"a": [str(r[0]) for r in rows], "b": ["?"] * len(rows),
                                     "c": [r[1] for r in rows], "d": ["1.0"] * len(rows),
                                     "e": [str(r[2]) for r in rows]}, raw=True)
    options = _write_options()
    options.align_loops = align
    expected = doc.as_string(options)
    text = loop_text(tags, columns, align)
    if text is None:
        assert max(len(str(r[0])) for r in rows) > align
    else:
        assert "data_b\n#\n" + text + "#\n" == expected
