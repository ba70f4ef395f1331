"""Tests for storage.mmcif: ModelCIF writing, re-labelling, reading and dictionary validation.

Predictions are built from real AlphaFold DB v4 files (coordinates parsed with gemmi into atom37
arrays, pLDDT from the B-factors, PAE from the AFDB JSON). Expected values come from those files
or from independent readers (gemmi, Biopython ``MMCIFParser``), never from our own writer alone.
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import subprocess
from pathlib import Path

import gemmi
import numpy as np
import pytest
from Bio.PDB import MMCIFParser
from transformers.models.esm.openfold_utils import residue_constants

from model.base import ModelInfo, Prediction
from pipeline.confidence import compute_confidence
from storage.afdb_json import read_pae_json
from storage.mmcif import (
    ATOM_TYPES,
    RESTYPE_1TO3,
    ModelCIFEntry,
    read_modelcif,
    render_modelcif,
    retarget_modelcif,
    validate_modelcif,
)
from tests.afdb_data import AFDB, DATA, DICTIONARY, ENTRIES, METADATA, read_csv  # noqa: F401

TRAINED = ModelInfo(name="esmfold", version="transformers 4.46.0", weights_sha256="ab" * 32, trained=True)
UNTRAINED = ModelInfo(
    name="esmfold-tiny", version="transformers 4.46.0", weights_sha256="random-init:seed=0", trained=False
)
PROVENANCE = {
    "package_version": "0.1.0",
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "config_sha256": "cd" * 32,
    "run_id": "run-20240101-000000-abcd",
    "started_at": "2024-01-01T00:00:00+00:00",
}


def afdb_cif(accession: str) -> Path:
    return AFDB / f"AF-{accession}-F1-model_v4.cif"


def afdb_prediction(accession: str, ptm: float = 0.8123) -> Prediction:
    """A Prediction holding a real AFDB model: gemmi atoms -> atom37, pLDDT = B-factors, AFDB PAE.

    AFDB v4 carries no pTM, so ``ptm`` is a stand-in value.
    """
    structure = gemmi.read_structure(str(afdb_cif(accession)))
    chain = structure[0][0]
    atom_index = {name: i for i, name in enumerate(residue_constants.atom_types)}
    n = len(chain)
    positions = np.zeros((n, 37, 3), dtype=np.float32)
    mask = np.zeros((n, 37), dtype=bool)
    plddt = np.zeros(n, dtype=np.float32)
    letters = []
    for i, residue in enumerate(chain):
        letters.append(gemmi.find_tabulated_residue(residue.name).one_letter_code.upper())
        for atom in residue:
            positions[i, atom_index[atom.name]] = atom.pos.tolist()
            mask[i, atom_index[atom.name]] = True
        plddt[i] = residue[0].b_iso
    pae = read_pae_json((AFDB / f"AF-{accession}-F1-predicted_aligned_error_v4.json").read_bytes())
    return Prediction("".join(letters), positions, mask, plddt, pae.pae, pae.max_pae, ptm)


def afdb_entry(accession: str, entry_id: str | None = None) -> ModelCIFEntry:
    row = METADATA[accession]
    return ModelCIFEntry(
        entry_id=entry_id or f"FA-{accession}-F1",
        accession=accession,
        uniprot_id=row["uniprotId"],
        description=row["uniprotDescription"],
        organism_scientific_name=row["organismScientificName"],
        tax_id=int(row["taxId"]),
        sequence_db_name="UNP",
        sequence_version_date=row["sequenceVersionDate"],
        model_created_date="2024-01-01",
        gene_name=row["gene"],
        sequence_checksum=row["sequenceChecksum"],
    )


def _global_metrics(block: gemmi.cif.Block) -> dict[str, str]:
    """``_ma_qa_metric_global`` values by metric id."""
    glob = block.get_mmcif_category("_ma_qa_metric_global.")
    return dict(zip(glob["metric_id"], glob["metric_value"], strict=True))


@pytest.fixture(scope="module", params=ENTRIES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, Prediction, str]:
    accession = request.param
    prediction = afdb_prediction(accession)
    return accession, prediction, render_modelcif(prediction, afdb_entry(accession), TRAINED, PROVENANCE)


def test_constants_match_transformers_residue_constants() -> None:
    assert list(ATOM_TYPES) == list(residue_constants.atom_types)
    assert dict(residue_constants.restype_1to3) == RESTYPE_1TO3


def test_prediction_from_afdb_matches_metadata() -> None:
    for accession in ENTRIES:
        prediction = afdb_prediction(accession)
        assert prediction.sequence == METADATA[accession]["uniprotSequence"]


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accession", ENTRIES)
def test_afdb_files_validate_with_zero_problems(accession: str) -> None:
    assert validate_modelcif(afdb_cif(accession), DICTIONARY) == []


def test_afdb_files_fail_parent_checks_on_citation_author() -> None:
    # AFDB writes _citation.id "primary" but _citation_author.citation_id "1": a real defect that
    # only the (optional) parent checks see. Our files pass those checks too.
    problems = validate_modelcif(afdb_cif("P00221"), DICTIONARY, check_parents=True)
    assert problems and all("_citation_author.citation_id" in p for p in problems)


def test_rendered_validates_with_zero_problems(rendered: tuple[str, Prediction, str]) -> None:
    _, _, text = rendered
    assert validate_modelcif(text, DICTIONARY) == []
    assert validate_modelcif(text, DICTIONARY, check_parents=True) == []


def test_validation_reports_real_problems(rendered: tuple[str, Prediction, str]) -> None:
    _, _, text = rendered
    doc = gemmi.cif.read_string(text)
    block = doc.sole_block()
    block.set_pair("_entity_poly.type", "polypeptide(X)")  # not an allowed value
    block.set_pair("_pdbx_database_status.recvd_initial_deposition_date", "yesterday")  # not a date
    block.set_pair("_foldatlas.unknown_item", "1")  # not in the dictionary
    problems = validate_modelcif(doc.as_string(), DICTIONARY)
    assert len(problems) == 3
    assert any("polypeptide(X)" in p for p in problems)
    assert any("yesterday" in p for p in problems)
    assert any("_foldatlas.unknown_item" in p for p in problems)


def test_validation_reports_syntax_errors() -> None:
    assert validate_modelcif("data_x\nloop_\n_a.b\n'unterminated\n", DICTIONARY)


def test_validate_accepts_paths(tmp_path: Path, rendered: tuple[str, Prediction, str]) -> None:
    _, _, text = rendered
    path = tmp_path / "model.cif"
    path.write_text(text)
    assert validate_modelcif(path, DICTIONARY) == []
    assert validate_modelcif(str(path), DICTIONARY) == []
    assert validate_modelcif(text.encode(), DICTIONARY) == []


@pytest.mark.skipif(
    shutil.which("gemmi") is None, reason="needs the gemmi command line (Debian package gemmi)"
)
def test_debian_gemmi_validate_command_agrees(tmp_path: Path, rendered: tuple[str, Prediction, str]) -> None:
    _, _, text = rendered
    dictionary = tmp_path / "mmcif_ma.dic"
    dictionary.write_bytes(gzip.decompress(DICTIONARY.read_bytes()))  # gemmi 0.5.7's CLI cannot read .gz
    files = {"ours.cif": text, "afdb.cif": afdb_cif("P00221").read_text()}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
        run = subprocess.run(
            ["gemmi", "validate", "-d", str(dictionary), str(tmp_path / name)],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [
            x for x in (run.stdout + run.stderr).splitlines() if not x.startswith("Category indicated as ")
        ]
        assert run.returncode == 0 and lines == [], (name, lines)
    broken = text.replace(
        "_entity_poly.type                                polypeptide(L)", "_entity_poly.type X"
    )
    assert broken != text
    (tmp_path / "broken.cif").write_text(broken)
    run = subprocess.run(
        ["gemmi", "validate", "-d", str(dictionary), str(tmp_path / "broken.cif")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "not one of the allowed values" in run.stdout + run.stderr


# ----------------------------------------------------------------------------------------------
# Content: independent readers get back what went in
# ----------------------------------------------------------------------------------------------


def test_gemmi_reads_back_coordinates_and_plddt(rendered: tuple[str, Prediction, str]) -> None:
    accession, prediction, text = rendered
    original = gemmi.read_structure(str(afdb_cif(accession)))
    ours = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
    assert len(ours) == 1 and len(ours[0]) == 1
    ours_atoms = [
        (r.seqid.num, r.name, a.name, a.element.name, a.pos, a.b_iso) for r in ours[0][0] for a in r
    ]
    afdb_atoms = [
        (r.seqid.num, r.name, a.name, a.element.name, a.pos, a.b_iso) for r in original[0][0] for a in r
    ]
    assert [x[:4] for x in ours_atoms] == [x[:4] for x in afdb_atoms]  # same atoms, same (atom37) order
    assert max(o[4].dist(a[4]) for o, a in zip(ours_atoms, afdb_atoms, strict=True)) < 1e-3
    assert max(abs(o[5] - a[5]) for o, a in zip(ours_atoms, afdb_atoms, strict=True)) < 1e-2
    coords = np.array([o[4].tolist() for o in ours_atoms])
    mask = prediction.atom_mask
    assert np.abs(coords - prediction.atom_positions[mask]).max() <= 0.0005 + 1e-6
    per_atom_plddt = np.repeat(prediction.plddt, mask.sum(axis=1))
    assert np.abs(np.array([o[5] for o in ours_atoms]) - per_atom_plddt).max() <= 0.005 + 1e-4
    # every atom of a residue carries the residue's pLDDT
    for residue in ours[0][0]:
        assert len({a.b_iso for a in residue}) == 1


def test_biopython_reads_back_coordinates_and_plddt(
    tmp_path: Path, rendered: tuple[str, Prediction, str]
) -> None:
    accession, prediction, text = rendered
    path = tmp_path / "model.cif"
    path.write_text(text)
    structure = MMCIFParser(QUIET=True).get_structure(accession, str(path))
    chains = list(structure[0])
    assert [c.id for c in chains] == ["A"]
    residues = list(chains[0])
    assert len(residues) == len(prediction.sequence)
    for i, residue in enumerate(residues):
        assert residue.id[1] == i + 1
        assert residue.get_resname() == RESTYPE_1TO3[prediction.sequence[i]]
        names = [a.get_id() for a in residue]
        expected = [ATOM_TYPES[j] for j in np.nonzero(prediction.atom_mask[i])[0]]
        assert names == expected
        for atom in residue:
            j = ATOM_TYPES.index(atom.get_id())
            assert np.abs(atom.get_coord() - prediction.atom_positions[i, j]).max() <= 0.0005 + 1e-5
            assert abs(atom.get_bfactor() - prediction.plddt[i]) <= 0.005 + 1e-4


def test_modelcif_categories_match_afdb(rendered: tuple[str, Prediction, str]) -> None:
    accession, _, text = rendered
    ours = gemmi.cif.read_string(text).sole_block()
    afdb = gemmi.cif.read(str(afdb_cif(accession))).sole_block()
    assert ours.name == f"FA-{accession}-F1"
    # pLDDT per residue, exactly as AFDB wrote it
    assert list(ours.find_values("_ma_qa_metric_local.metric_value")) == list(
        afdb.find_values("_ma_qa_metric_local.metric_value")
    )
    # global pLDDT: mean over atoms, the value AFDB stores (and its globalMetricValue)
    assert _global_metrics(ours)["1"] == afdb.find_value("_ma_qa_metric_global.metric_value")
    assert float(_global_metrics(ours)["1"]) == float(METADATA[accession]["globalMetricValue"])
    metrics = ours.get_mmcif_category("_ma_qa_metric.")
    assert list(zip(metrics["id"], metrics["mode"], metrics["type"], strict=True)) == [
        ("1", "global", "pLDDT"),
        ("2", "local", "pLDDT"),
        ("3", "global", "pTM"),
    ]
    assert _global_metrics(ours)["3"] == "0.8123"
    for tag in ("db_accession", "db_code", "db_name", "ncbi_taxonomy_id", "organism_scientific", "gene_name",
                "seq_db_sequence_checksum", "seq_db_sequence_version_date", "seq_db_align_begin", "seq_db_align_end"):  # fmt: skip
        ours_value = gemmi.cif.as_string(ours.find_value(f"_ma_target_ref_db_details.{tag}"))
        assert ours_value == gemmi.cif.as_string(afdb.find_value(f"_ma_target_ref_db_details.{tag}")), tag
    for tag in (
        "_entity_poly_seq.mon_id",
        "_pdbx_poly_seq_scheme.mon_id",
        "_chem_comp.id",
        "_atom_type.symbol",
    ):
        assert list(ours.find_values(tag)) == list(afdb.find_values(tag)), tag
    can = "_entity_poly.pdbx_seq_one_letter_code_can"
    assert gemmi.cif.as_string(ours.find_value(can)) == gemmi.cif.as_string(afdb.find_value(can))
    assert (
        gemmi.cif.as_string(ours.find_value("_entity.pdbx_description"))
        == METADATA[accession]["uniprotDescription"]
    )
    # model provenance
    software = ours.get_mmcif_category("_software.")
    assert software["name"] == ["esmfold", "FoldAtlas"]
    assert software["version"] == ["transformers 4.46.0", "0.1.0"]
    params = ours.get_mmcif_category("_ma_software_parameter.")
    by_name = dict(zip(params["name"], params["value"], strict=True))
    assert by_name["weights_sha256"] == TRAINED.weights_sha256
    assert by_name["trained"] == "true"
    for key, value in PROVENANCE.items():
        assert by_name[key] == value
    assert ours.find_value("_ma_model_list.model_type") == "'Ab initio model'"


def test_global_metric_agrees_with_confidence_stage(rendered: tuple[str, Prediction, str]) -> None:
    _, prediction, text = rendered
    written = float(_global_metrics(gemmi.cif.read_string(text).sole_block())["1"])
    assert written == compute_confidence(prediction).global_metric_value


def test_read_modelcif_round_trip(rendered: tuple[str, Prediction, str]) -> None:
    _, prediction, text = rendered
    contents = read_modelcif(text)
    assert contents.sequence == prediction.sequence
    assert np.array_equal(contents.atom_mask, prediction.atom_mask)
    assert np.abs(contents.atom_positions - prediction.atom_positions).max() <= 0.0005 + 1e-5
    assert np.abs(contents.plddt - prediction.plddt).max() <= 0.005 + 1e-4
    assert contents.ptm == pytest.approx(0.8123)


def test_read_modelcif_reads_afdb() -> None:
    contents = read_modelcif(afdb_cif("P00221").read_text())
    assert contents.entry_id == "AF-P00221-F1"
    assert contents.sequence == METADATA["P00221"]["uniprotSequence"]
    assert contents.global_plddt == 84.43
    assert contents.ptm is None
    assert contents.atom_mask.sum() == 1088  # _atom_site rows of the file
    assert contents.plddt[0] == pytest.approx(56.42)


# ----------------------------------------------------------------------------------------------
# Untrained label, unknown residues, failures
# ----------------------------------------------------------------------------------------------


def test_untrained_model_is_labelled() -> None:
    prediction = afdb_prediction("O05023")
    text = render_modelcif(prediction, afdb_entry("O05023"), UNTRAINED, PROVENANCE)
    block = gemmi.cif.read_string(text).sole_block()
    title = gemmi.cif.as_string(block.find_value("_struct.title"))
    details = gemmi.cif.as_string(block.find_value("_struct.pdbx_model_details"))
    assert title.startswith("UNTRAINED MODEL OUTPUT, NOT A REAL PREDICTION")
    assert "UNTRAINED, randomly initialised" in details and "NOT a real prediction" in details
    assert "UNTRAINED" in gemmi.cif.as_string(block.find_value("_ma_model_list.model_name"))
    assert "NOT A REAL PREDICTION" in gemmi.cif.as_string(block.find_value("_pdbx_data_usage.details"))
    assert validate_modelcif(text, DICTIONARY, check_parents=True) == []
    trained = render_modelcif(prediction, afdb_entry("O05023"), TRAINED, PROVENANCE)
    assert "UNTRAINED" not in trained.upper()


def test_unknown_residue_written_as_unk() -> None:
    base = afdb_prediction("O05023")
    i = 9
    mask = base.atom_mask.copy()
    mask[i] = False
    mask[i, :5] = True  # N CA C CB O
    sequence = base.sequence[:i] + "X" + base.sequence[i + 1 :]
    prediction = dataclasses.replace(base, sequence=sequence, atom_mask=mask)
    text = render_modelcif(prediction, afdb_entry("O05023"), TRAINED, {})
    assert validate_modelcif(text, DICTIONARY, check_parents=True) == []
    structure = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
    residue = structure[0][0][i]
    assert residue.name == "UNK" and [a.name for a in residue] == ["N", "CA", "C", "CB", "O"]
    block = gemmi.cif.read_string(text).sole_block()
    assert "UNK" in list(block.find_values("_chem_comp.id"))
    assert "(UNK)" in gemmi.cif.as_string(block.find_value("_entity_poly.pdbx_seq_one_letter_code"))
    assert read_modelcif(text).sequence == sequence


def test_residue_without_atoms_is_in_the_sequence_only() -> None:
    base = afdb_prediction("O05023")
    mask = base.atom_mask.copy()
    mask[5] = False  # e.g. an X the model gives no atoms
    sequence = base.sequence[:5] + "X" + base.sequence[6:]
    text = render_modelcif(
        dataclasses.replace(base, sequence=sequence, atom_mask=mask), afdb_entry("O05023"), TRAINED, {}
    )
    assert validate_modelcif(text, DICTIONARY, check_parents=True) == []
    block = gemmi.cif.read_string(text).sole_block()
    assert list(block.find_values("_entity_poly_seq.mon_id"))[5] == "UNK"
    assert "6" not in set(block.find_values("_ma_qa_metric_local.label_seq_id"))
    scheme = block.get_mmcif_category("_pdbx_poly_seq_scheme.")
    assert (scheme["auth_seq_num"][5], scheme["pdb_mon_id"][5]) == (None, None)  # "?"
    contents = read_modelcif(text)
    assert contents.sequence == sequence and not contents.atom_mask[5].any() and np.isnan(contents.plddt[5])


def test_render_refuses_broken_predictions() -> None:
    base = afdb_prediction("O05023")
    positions = base.atom_positions.copy()
    positions[3, 1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        render_modelcif(
            dataclasses.replace(base, atom_positions=positions), afdb_entry("O05023"), TRAINED, {}
        )
    with pytest.raises(ValueError, match="single line"):
        render_modelcif(base, afdb_entry("O05023"), TRAINED, {"run_id": "a\nb"})
    with pytest.raises(ValueError, match="residue name"):
        render_modelcif(
            dataclasses.replace(base, sequence="U" + base.sequence[1:]), afdb_entry("O05023"), TRAINED, {}
        )


def test_entry_validation() -> None:
    with pytest.raises(ValueError, match="entry_id"):
        afdb_entry("P00221", entry_id="FA P00221")
    with pytest.raises(ValueError, match="ISO date"):
        dataclasses.replace(afdb_entry("P00221"), model_created_date="01/01/2024")


# ----------------------------------------------------------------------------------------------
# Re-labelling for another accession with the same sequence
# ----------------------------------------------------------------------------------------------


def _atom_site_text(text: str) -> str:
    return text[text.index("loop_\n_atom_site.") :]


def test_retarget_keeps_structure_and_validates(rendered: tuple[str, Prediction, str]) -> None:
    accession, prediction, text = rendered
    other = ModelCIFEntry(
        entry_id="FA-A0A000XYZ1-F1",
        accession="A0A000XYZ1",
        uniprot_id="A0A000XYZ1_9XXXX",
        description="Uncharacterized protein",
        organism_scientific_name="Escherichia coli (strain K12)",
        tax_id=83333,
        sequence_db_name="UNP",
        sequence_version_date="2020-01-01",
        model_created_date="2024-02-02",
    )
    moved = retarget_modelcif(text, other)
    assert validate_modelcif(moved, DICTIONARY, check_parents=True) == []
    assert _atom_site_text(moved) == _atom_site_text(text)
    block = gemmi.cif.read_string(moved).sole_block()
    assert block.name == "FA-A0A000XYZ1-F1"
    assert block.find_value("_entry.id") == "FA-A0A000XYZ1-F1"
    assert block.find_value("_ma_target_ref_db_details.db_accession") == "A0A000XYZ1"
    assert block.find_value("_ma_target_ref_db_details.ncbi_taxonomy_id") == "83333"
    assert (
        gemmi.cif.as_string(block.find_value("_ma_target_ref_db_details.organism_scientific"))
        == "Escherichia coli (strain K12)"
    )
    assert block.find_value("_struct_ref.pdbx_db_accession") == "A0A000XYZ1"
    assert "(A0A000XYZ1)" in gemmi.cif.as_string(block.find_value("_struct.title"))
    assert accession not in gemmi.cif.as_string(block.find_value("_struct.title"))
    before, after = read_modelcif(text), read_modelcif(moved)
    assert np.array_equal(before.atom_positions, after.atom_positions)
    assert np.array_equal(before.plddt, after.plddt)
    assert list(block.find_values("_atom_site.label_seq_id"))[-1] == str(len(prediction.sequence))
    assert list(block)[-1].loop is not None and list(block)[-1].loop.tags[0] == "_atom_site.group_PDB"


def test_retarget_to_entries_without_uniprot() -> None:
    text = render_modelcif(afdb_prediction("O05023"), afdb_entry("O05023"), UNTRAINED, PROVENANCE)
    mgnify = ModelCIFEntry(
        "FA-MGYP000000000001-F1", "MGYP000000000001", None, "", None, None, "MGnify", None, None
    )
    moved = retarget_modelcif(text, mgnify)
    assert validate_modelcif(moved, DICTIONARY, check_parents=True) == []
    block = gemmi.cif.read_string(moved).sole_block()
    assert block.find_value("_ma_target_ref_db_details.db_name") == "Other"
    assert block.find_value("_ma_target_ref_db_details.db_name_other_details") == "MGnify"
    assert gemmi.cif.as_string(block.find_value("_struct.title")).startswith("UNTRAINED")
    bare = ModelCIFEntry(
        "FA-seq1-F1", None, None, "user sequence", None, None, "input.fasta", None, "2024-01-01"
    )
    moved = retarget_modelcif(moved, bare)
    assert validate_modelcif(moved, DICTIONARY, check_parents=True) == []
    block = gemmi.cif.read_string(moved).sole_block()
    assert block.find_value("_ma_target_entity.origin") == "designed"
    assert block.find_mmcif_category("_ma_target_ref_db_details.").width() == 0
    assert block.find_mmcif_category("_struct_ref.").width() == 0
    assert _atom_site_text(moved) == _atom_site_text(text)


def test_retarget_refuses_foreign_files() -> None:
    with pytest.raises(ValueError, match="FoldAtlas"):
        retarget_modelcif(afdb_cif("P00221").read_text(), afdb_entry("P00221"))
