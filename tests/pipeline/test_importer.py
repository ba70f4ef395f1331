"""``foldatlas import``: real AlphaFold DB entries in, the same coordinates, pLDDT and PAE out.

Expected values come from the original files parsed with gemmi (and the PAE JSON bytes), and from
the AFDB metadata rows derived from the files (tests/data/afdb/README.md), never from our reader.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb
import gemmi
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.import_files import IMPORT_REJECT_REASONS
from pipeline.importer import import_predictions
from pipeline.runner import run
from storage.entry import fetch_entry
from storage.mmcif import validate_modelcif
from tests.afdb_data import AFDB, DICTIONARY, METADATA

ALL = ["P00221", "O05023", "O05012", "A0A1U8FD60", "Q5VSL9"]  # the two larger ones are gzipped copies
SHARED_PDB = Path("/work/shared/data/afdb/AF-P00221-F1-model_v4.pdb")


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _afdb_file(accession: str, kind: str) -> Path:
    name = f"AF-{accession}-F1-model_v4.cif" if kind == "cif" else f"AF-{accession}-F1-predicted_aligned_error_v4.json"
    path = AFDB / name
    return path if path.exists() else AFDB / f"{name}.gz"


def _atoms(cif_text: str) -> list[tuple[str, ...]]:
    block = gemmi.cif.read_string(cif_text).sole_block()
    table = block.find("_atom_site.", ["label_seq_id", "label_comp_id", "label_atom_id", "Cartn_x", "Cartn_y",
                                       "Cartn_z", "B_iso_or_equiv"])
    return [tuple(str(row[i]) for i in range(7)) for row in table]


def _global_plddt(cif_text: str) -> str:
    block = gemmi.cif.read_string(cif_text).sole_block()
    metrics = block.get_mmcif_category("_ma_qa_metric.")
    plddt_id = next(i for i, t, m in zip(metrics["id"], metrics["type"], metrics["mode"], strict=True)
                    if t == "pLDDT" and m == "global")
    glob = block.get_mmcif_category("_ma_qa_metric_global.")
    return next(v for i, v in zip(glob["metric_id"], glob["metric_value"], strict=True) if i == plddt_id)


def _table(atlas: Path, name: str, where: str = "") -> list[dict]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{atlas}/{name}/*.parquet', union_by_name=true) {where}"
                      ).to_arrow_table().to_pylist()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    atlas = tmp_path_factory.mktemp("import") / "atlas"
    return atlas, import_predictions([AFDB], atlas)


def test_all_five_afdb_entries_are_imported(imported) -> None:
    atlas, summary = imported
    assert summary.structures_written == 5 and summary.entries_written == 5 and summary.rejected == 0
    entries = {e["accession"]: e for e in _table(atlas, "entries")}
    assert sorted(entries) == sorted(ALL)
    for accession, e in entries.items():
        expected = METADATA[accession]  # the AFDB metadata row derived from the mmCIF
        assert e["model"] == "alphafold-db-v4" and e["status"] == "predicted" and e["published"] is True
        for column in ("uniprotId", "gene", "uniprotDescription", "organismScientificName", "sequenceChecksum",
                       "uniprotSequence"):
            assert e[column] == expected[column], column
        assert e["taxId"] == int(expected["taxId"]) and e["latestVersion"] == int(expected["latestVersion"])
        assert e["globalMetricValue"] == float(expected["globalMetricValue"])
        assert str(e["modelCreatedDate"]) == expected["modelCreatedDate"]
        assert str(e["sequenceVersionDate"]) == expected["sequenceVersionDate"]
        for band in ("VeryLow", "Low", "Confident", "VeryHigh"):
            assert e[f"fractionPlddt{band}"] == float(expected[f"fractionPlddt{band}"])
        assert any("AF-" in n for n in e["ingest_notes"]) and e["ptm"] is None
    structures = _table(atlas, "structures")
    assert {s["model_version"] for s in structures} == {"AlphaFold v2.0 (AlphaFold DB v4)"}


@pytest.mark.parametrize("accession", ALL)
def test_imported_entry_renders_the_original_coordinates_plddt_and_pae(imported, accession: str) -> None:
    atlas, _ = imported
    found = fetch_entry(atlas, accession)
    text = found.mmcif()
    original = _read(_afdb_file(accession, "cif")).decode()
    ours, theirs = _atoms(text), _atoms(original)
    assert ours == theirs  # residue, atom, x, y, z (0.001 A text) and pLDDT text, atom by atom
    assert _global_plddt(text) == _global_plddt(original)
    assert found.pae_json() == _read(_afdb_file(accession, "json"))
    assert validate_modelcif(text, DICTIONARY) == []


def test_reimport_adds_nothing(imported) -> None:
    atlas, _ = imported
    files = sorted(p.relative_to(atlas) for p in atlas.rglob("*") if p.is_file() and "_runs" not in p.parts)
    again = import_predictions([AFDB], atlas)
    assert again.already_in_atlas == 5 and again.entries_written == 0 and again.structures_written == 0
    assert sorted(p.relative_to(atlas) for p in atlas.rglob("*") if p.is_file() and "_runs" not in p.parts) == files


def test_run_reuses_imported_structures(imported, tmp_path: Path) -> None:
    atlas, _ = imported
    sequence = METADATA["P00221"]["uniprotSequence"]
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">sp|P00221|FER1_SPIOL Ferredoxin-1 OS=Spinacia oleracea OX=3562 GN=PETF PE=1 SV=2\n{sequence}\n"
                     f">MY_COPY the same protein under another name\n{sequence}\n")
    cfg = load_config(None, {"model": {"name": "esmfold-tiny"}})
    summary = run([fasta], atlas, cfg, progress=False)
    assert summary.sequences_planned == 0 and summary.units_planned == 0 and summary.predicted == 0
    assert summary.already_in_atlas == 1 and summary.linked == 1
    (copy,) = _table(atlas, "entries", "WHERE accession = 'MY_COPY'")
    assert copy["model"] == "alphafold-db-v4" and copy["globalMetricValue"] == 84.43
    text = fetch_entry(atlas, "MY_COPY").mmcif()
    assert text.startswith("data_FA-MY_COPY-F1") and _atoms(text) == _atoms((AFDB / "AF-P00221-F1-model_v4.cif")
                                                                           .read_text())
    again = run([fasta], atlas, cfg, progress=False)
    assert again.already_in_atlas == 2 and again.entries_written == 0
    # with reuse switched off the run would predict it (the plan says so; nothing is run here)
    from pipeline.ingest import ingest_many
    from pipeline.plan import make_plan
    from storage.atlas import Atlas

    accepted = ingest_many([str(fasta)], cfg.ingest).accepted
    assert make_plan(accepted, [], Atlas(atlas), "esmfold-tiny", cfg.plan).sequences_to_predict == 1


def _pdb_with_plddt_scale(tmp: Path, name: str, divide: float) -> Path:
    st = gemmi.read_structure(str(SHARED_PDB))
    for residue in st[0][0]:
        for atom in residue:
            atom.b_iso = atom.b_iso / divide
    out = tmp / name
    st.write_pdb(str(out))
    return out


@pytest.mark.skipif(not SHARED_PDB.exists(), reason="the AFDB PDB file of the shared data is not here")
def test_pdb_imports_detect_the_plddt_scale(tmp_path: Path) -> None:
    colab = tmp_path / "P00221_unrelaxed_rank_001_alphafold2_ptm_model_1_seed_000.pdb"
    shutil.copy(SHARED_PDB, colab)
    esm = _pdb_with_plddt_scale(tmp_path, "ESM1.pdb", 100.0)  # ESMFold 0-1 pLDDT
    atlas = tmp_path / "atlas"
    summary = import_predictions([colab], atlas)
    assert summary.models == {"colabfold": 1} and summary.rejected == 0
    summary = import_predictions([esm], atlas, source="esmfold")
    assert summary.models == {"esmfold-import": 1}
    colab_plddt = [r[6] for r in _atoms((AFDB / "AF-P00221-F1-model_v4.cif").read_text())]
    # a PDB B-factor has 2 decimals: 0-1 pLDDT keeps 2 digits (0.56 -> 56.00), as gemmi reads it
    esm_plddt = [f"{atom.b_iso * 100:.2f}" for residue in gemmi.read_structure(str(esm))[0][0] for atom in residue]
    for accession, model, expected in (("P00221", "colabfold", colab_plddt), ("ESM1", "esmfold-import", esm_plddt)):
        found = fetch_entry(atlas, accession, model=model)
        assert [r[6] for r in _atoms(found.mmcif())] == expected
        assert any("scale" in n for n in found.entry["ingest_notes"])
        with pytest.raises(Exception, match="no PAE"):
            found.pae_json()


def test_bad_input_becomes_reject_rows(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    # PAE of another protein (118 x 118) beside a 147-residue model
    shutil.copy(AFDB / "AF-P00221-F1-model_v4.cif", src / "AF-P00221-F1-model_v4.cif")
    shutil.copy(AFDB / "AF-O05023-F1-predicted_aligned_error_v4.json",
                src / "AF-P00221-F1-predicted_aligned_error_v4.json")
    (src / "AF-BROKEN-F1-model_v4.cif").write_text("this is not mmCIF\n")
    shutil.copy(AFDB / "AF-O05023-F1-predicted_aligned_error_v4.json",
                src / "AF-BROKEN-F1-predicted_aligned_error_v4.json")
    shutil.copy(AFDB / "AF-O05012-F1-model_v4.cif", src / "AF-O05012-F1-model_v4.cif")  # no PAE
    shutil.copy(AFDB / "AF-O05023-F1-predicted_aligned_error_v4.json",
                src / "AF-NOMODEL-F1-predicted_aligned_error_v4.json")
    shutil.copy(AFDB / "AF-O05023-F1-model_v4.cif", src / "mystery.cif")
    if SHARED_PDB.exists():
        _pdb_with_plddt_scale(src, "zero_unrelaxed_rank_001_x.pdb", float("inf"))  # all B-factors 0
    atlas = tmp_path / "atlas"
    summary = import_predictions([src], atlas)
    assert summary.structures_written == 0
    rejects = {r["source_file"]: r for r in _table(atlas, "rejects")}
    expected = {"AF-P00221-F1-model_v4.cif": "pae_size_mismatch", "AF-BROKEN-F1-model_v4.cif": "unreadable_file",
                "AF-O05012-F1-model_v4.cif": "missing_pae", "mystery.cif": "unknown_source",
                "AF-NOMODEL-F1-predicted_aligned_error_v4.json": "orphan_pae"}
    if SHARED_PDB.exists():
        expected["zero_unrelaxed_rank_001_x.pdb"] = "missing_plddt"
    assert {name: r["reason"] for name, r in rejects.items()} == expected
    assert all(r["detail"] and r["reason"] in IMPORT_REJECT_REASONS for r in rejects.values())
    # duplicates: the same accession twice (mmCIF + PDB of one entry), the same file twice
    dup = tmp_path / "dup"
    dup.mkdir()
    for name in ("AF-O05023-F1-model_v4.cif", "AF-O05023-F1-predicted_aligned_error_v4.json"):
        shutil.copy(AFDB / name, dup / name)
    shutil.copy(AFDB / "AF-O05023-F1-model_v4.cif", dup / "AF-O05023-F1-model_v4.cif.gz")
    (dup / "AF-O05023-F1-model_v4.cif.gz").write_bytes(gzip.compress((AFDB / "AF-O05023-F1-model_v4.cif")
                                                                       .read_bytes()))
    summary = import_predictions([dup, dup / "AF-O05023-F1-model_v4.cif"], tmp_path / "atlas2")
    assert summary.structures_written == 1
    assert summary.rejected_by_reason == {"duplicate_accession": 1, "duplicate_file": 1}


def test_cli_import(tmp_path: Path) -> None:
    atlas = tmp_path / "atlas"
    result = CliRunner().invoke(app, ["import", str(AFDB / "AF-O05023-F1-model_v4.cif"),
                                      str(AFDB / "AF-O05023-F1-predicted_aligned_error_v4.json"), "--atlas", str(atlas)])
    assert result.exit_code == 0, result.output
    assert "new structures 1" in result.output
    result = CliRunner().invoke(app, ["import", str(tmp_path / "nope.cif"), "--atlas", str(atlas)])
    assert result.exit_code == 2 and "does not exist" in result.output
