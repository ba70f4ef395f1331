"""End to end: real records through every stage on a local Ray with the tiny ESMFold.

The default suite runs these (they are the acceptance tests of the foundation); they take a few
minutes on 2 cores. Marked ``slow`` so ``-m "not slow"`` gives a quick inner loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from pipeline.config import load_config
from pipeline.ingest import ingest_many
from pipeline.runner import run
from storage.mmcif import read_modelcif, validate_modelcif
from storage.mmcif_shard import iter_shard
from storage.structure_record import read_record

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "uniprot" / "sample.fasta"
MALFORMED = DATA / "uniprot" / "malformed.fasta"
DICTIONARY = DATA / "dictionaries" / "mmcif_ma_v1.4.2.dic.gz"
ROOT = Path(__file__).resolve().parent.parent


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return f'"{v}"' if isinstance(v, str | Path) else str(v)


def tiny_config(tmp_path: Path, unit_max_residues: int = 1500, **sections: dict[str, object]) -> Path:
    """``tmp_path/run.toml``: the tiny model on 2 cores; ``sections`` add or override keys per section."""
    merged: dict[str, dict[str, object]] = {"model": {"name": "esmfold-tiny"},
                                            "plan": {"unit_max_residues": unit_max_residues},
                                            "ray": {"fold_cpus": 1.0, "write_cpus": 0.5}}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    path = tmp_path / "run.toml"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
                            for name, values in merged.items()))
    return path


def table(atlas: Path, name: str, sql: str = "SELECT * FROM t") -> list[dict]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{atlas}/{name}/*.parquet', union_by_name=true)")
    return con.sql(sql).to_arrow_table().to_pylist()


def snapshot(atlas: Path) -> dict[str, int]:
    return {name: len(table(atlas, name)) for name in ("entries", "structures", "rejects", "failures")}


@pytest.fixture(scope="module")
def atlas_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("e2e")
    atlas = tmp / "atlas"
    cfg = load_config(tiny_config(tmp))
    summary = run([SAMPLE, MALFORMED], atlas, cfg, progress=False)
    return atlas, cfg, summary, tmp


def test_every_record_ends_in_exactly_one_state(atlas_run):
    atlas, cfg, summary, _ = atlas_run
    expected = ingest_many([str(SAMPLE), str(MALFORMED)], cfg.ingest)
    entries, rejects = table(atlas, "entries"), table(atlas, "rejects")
    assert summary.read == expected.n_read == len(entries) + len(rejects)
    assert sorted(e["accession"] for e in entries) == sorted(r.accession for r in expected.accepted)
    assert len({(e["accession"], e["sequence_sha256"]) for e in entries}) == len(entries)
    assert sorted(r["reason"] for r in rejects) == sorted(r.code for r in expected.rejected)
    # the shortest (13 aa) and longest (7,096 aa) records of the sample are rejected with their reason
    by_acc = {r["accession"]: r for r in rejects}
    assert by_acc["Q8X4F5"]["reason"] == "too_short" and by_acc["A0A8A9J5M6"]["reason"] == "too_long"
    assert len(by_acc["A0A8A9J5M6"]["raw_sequence"].replace("\n", "")) == 7096
    assert summary.units_published == summary.units_planned > 1
    assert all(e["status"] == "predicted" for e in entries) and table(atlas, "failures") == []


def test_entries_carry_afdb_columns_and_hashes(atlas_run):
    atlas, *_ = atlas_run
    columns = (DATA / "afdb_metadata" / "afdb_bigquery_metadata_columns.csv").read_text().split()[1:]
    names = [c.split(",")[0] for c in columns]
    assert len(names) == 27
    rows = table(atlas, "entries", "SELECT * FROM t WHERE accession = 'A3CWV2'")
    assert len(rows) == 1
    row = rows[0]
    assert set(names) <= set(row)
    # >sp|A3CWV2|FEN_METMJ Flap endonuclease 1 OS=Methanoculleus marisnigri (strain ATCC 35101 / DSM 1498 / JR1)
    #  OX=368407 GN=fen PE=3 SV=1
    assert row["entryId"] == "FA-A3CWV2-F1" and row["uniprotId"] == "FEN_METMJ"
    assert row["organismScientificName"] == "Methanoculleus marisnigri (strain ATCC 35101 / DSM 1498 / JR1)"
    assert row["taxId"] == 368407 and row["gene"] == "fen" and row["isReviewed"] is True
    assert row["proteinFullNames"] == ["Flap endonuclease 1"] and row["uniprotDescription"] == "Flap endonuclease 1"
    assert row["model"] == "esmfold-tiny" and row["status"] == "predicted" and row["tier"] == "low"
    assert len(row["sequence_sha256"]) == 64 and len(row["sequenceChecksum"]) == 16
    assert 0 <= row["ptm"] <= 1 and 0 <= row["globalMetricValue"] <= 100
    fractions = sum(row[f"fractionPlddt{b}"] for b in ("VeryLow", "Low", "Confident", "VeryHigh"))
    assert fractions == pytest.approx(1.0, abs=0.003)


def test_published_mmcif_validates_and_reads_back(atlas_run):
    atlas, *_ = atlas_run
    structures = table(atlas, "structures")
    checked = 0
    for shard in sorted((atlas / "mmcif").glob("*.tar")):
        members = dict(iter_shard(shard))
        for s in (s for s in structures if s["mmcif_shard"] == f"mmcif/{shard.name}"):
            text = read_record(members[s["mmcif_member"]]).render_mmcif()  # compact record -> ModelCIF
            assert validate_modelcif(text, str(DICTIONARY)) == []
            contents = read_modelcif(text)
            assert contents.sequence == s["sequence"]
            assert contents.plddt == pytest.approx(s["plddt"], abs=0.006)
            checked += 1
    assert checked == len(structures) > 0


def test_rerun_adds_no_row_and_predicts_nothing(atlas_run):
    atlas, cfg, _, _ = atlas_run
    before = snapshot(atlas)
    files_before = sorted(p.relative_to(atlas) for p in atlas.rglob("*.parquet"))
    again = run([SAMPLE, MALFORMED], atlas, cfg, progress=False)
    assert again.predicted == 0 and again.units_planned == 0 and again.entries_written == 0
    assert again.already_in_atlas == again.accepted and again.new_rejects == 0
    assert snapshot(atlas) == before
    assert sorted(p.relative_to(atlas) for p in atlas.rglob("*.parquet")) == files_before


def test_shared_sequence_links_instead_of_predicting(atlas_run):
    atlas, cfg, _, tmp = atlas_run
    seq = table(atlas, "structures", "SELECT sequence FROM t LIMIT 1")[0]["sequence"]
    other = tmp / "other.fasta"
    other.write_text(f">MY_COPY same protein, another name\n{seq}\n")
    before = snapshot(atlas)
    summary = run([other], atlas, cfg, progress=False)
    assert summary.linked == 1 and summary.predicted == 0
    after = snapshot(atlas)
    assert after["entries"] == before["entries"] + 1 and after["structures"] == before["structures"]
    row = table(atlas, "entries", "SELECT * FROM t WHERE accession = 'MY_COPY'")[0]
    assert row["uniprotAccession"] is None and row["status"] == "predicted" and row["ptm"] is not None


def test_plain_duckdb_answers_without_foldatlas(atlas_run):
    """AFDB's documented subsetting query, unchanged, in a process that never imports foldatlas."""
    atlas, *_ = atlas_run
    script = textwrap.dedent(f"""
        import sys, duckdb
        con = duckdb.connect()
        con.execute("CREATE VIEW metadata AS SELECT * FROM read_parquet('{atlas}/entries/*.parquet', union_by_name=true)")
        n = con.execute('''SELECT count(*) FROM metadata
                       WHERE organismScientificName = 'Methanoculleus marisnigri (strain ATCC 35101 / DSM 1498 / JR1)'
                       AND (fractionPlddtVeryHigh + fractionPlddtConfident) > 0.5''').fetchone()[0]
        total = con.execute("SELECT count(*) FROM read_parquet('{atlas}/structures/*.parquet')").fetchone()[0]
        assert not any(m.split('.')[0] in ('pipeline', 'storage', 'model') for m in sys.modules)
        print(n, total)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd="/", env={**os.environ, "PYTHONPATH": ""})
    n, total = map(int, out.stdout.split())
    assert n == 0 and total > 0  # a random-weight model is never confident


def test_summary_and_histogram_saved(atlas_run):
    atlas, _, summary, _ = atlas_run
    run_dir = atlas / "_runs" / summary.run_id
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["read"] == summary.read and saved["predicted"] == summary.predicted
    assert sum(saved["plddt_histogram"].values()) == summary.predicted
    assert (run_dir / "plddt_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "config.json").read_text())["model"]["name"] == "esmfold-tiny"
    published = [json.loads(x) for x in (run_dir / "published.jsonl").read_text().splitlines()]
    assert len(published) == summary.units_published


def test_stage_progress_and_run_report(atlas_run, tmp_path):
    """Every stage saw every planned sequence; the report has its four plots and the stage table."""
    atlas, _, summary, _ = atlas_run
    assert list(summary.stages) == ["fold", "write", "publish"]
    for name, st in summary.stages.items():
        assert st["sequences"] == summary.sequences_planned, name
        assert st["units"] == summary.units_published and st["busy_seconds"] > 0
    assert summary.stages["fold"]["utilisation"] is not None and 0 < summary.stages["fold"]["utilisation"] <= 1.05
    last = summary.timeline[-1]
    assert last["done"]["publish"] == summary.sequences_planned and all(q == 0 for q in last["queue"].values())
    saved = json.loads((atlas / "_runs" / summary.run_id / "summary.json").read_text())
    assert saved["stages"]["publish"]["sequences"] == summary.sequences_planned
    page = (atlas / "_runs" / summary.run_id / "report.html").read_text()
    assert page.count("<img alt=") == 4 and "data:image/png;base64," in page and "UNTRAINED" in page
    assert all(f"<td>{name}</td>" in page for name in summary.stages)
    out = tmp_path / "r.html"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(atlas), "-o", str(out)], check=True,
                   capture_output=True)
    assert out.read_text().count("<img alt=") == 4


def test_cli_get_query_and_sql(atlas_run, tmp_path):
    atlas, *_ = atlas_run
    cli = [sys.executable, "-m", "pipeline.cli"]
    acc = table(atlas, "entries", "SELECT accession FROM t WHERE accession <> 'MY_COPY' LIMIT 1")[0]["accession"]
    subprocess.run([*cli, "get", str(atlas), acc, "-o", str(tmp_path / "e.cif"), "--pae", str(tmp_path / "p.json"),
                    "--confidence", str(tmp_path / "c.json")], check=True, capture_output=True)
    assert read_modelcif((tmp_path / "e.cif").read_text()).sequence
    pae = json.loads((tmp_path / "p.json").read_text())
    assert pae[0]["max_predicted_aligned_error"] == pytest.approx(31.75)
    conf = json.loads((tmp_path / "c.json").read_text())
    assert len(conf["residueNumber"]) == len(pae[0]["predicted_aligned_error"])
    out = subprocess.run([*cli, "query", str(atlas), "SELECT count(*) AS n FROM rejects", "-f", "json"],
                         check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)[0]["n"] == len(table(atlas, "rejects"))
    out = subprocess.run([*cli, "sql", str(atlas)], input="SELECT count(*) FROM structures;\n.quit\n",
                         check=True, capture_output=True, text=True)
    assert str(len(table(atlas, "structures"))) in out.stdout
    missing = subprocess.run([*cli, "get", str(atlas), "NOPE", "-o", str(tmp_path / "n.cif")], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "No entry 'NOPE'" in missing.stderr


def test_get_relabels_mmcif_for_a_linked_accession(atlas_run, tmp_path):
    atlas, *_ = atlas_run
    subprocess.run([sys.executable, "-m", "pipeline.cli", "get", str(atlas), "MY_COPY", "-o", str(tmp_path / "m.cif")],
                   check=True, capture_output=True)
    text = (tmp_path / "m.cif").read_text()
    assert "data_FA-MY_COPY-F1" in text and validate_modelcif(text, str(DICTIONARY)) == []


def test_sigkill_mid_run_then_resume(tmp_path):
    """kill -9 the driver (and its local Ray) mid-run; the atlas stays consistent; rerun completes it."""
    atlas = tmp_path / "atlas"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(SAMPLE), "--atlas", str(atlas),
           "--config", str(tiny_config(tmp_path, unit_max_residues=500)), "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    deadline = time.time() + 300
    published: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        published = list(atlas.glob("_runs/*/published.jsonl"))
        if published and len(published[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "run finished before it could be killed; make units smaller"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # consistent at the moment of death: whole shards only, no duplicate rows
    entries = table(atlas, "entries")
    assert 0 < len(entries) < 35
    assert len({e["accession"] for e in entries}) == len(entries)
    structures = table(atlas, "structures")
    assert len({s["sequence_sha256"] for s in structures}) == len(structures)
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    entries = table(atlas, "entries")
    accepted = ingest_many([str(SAMPLE)]).accepted
    assert sorted(e["accession"] for e in entries) == sorted(r.accession for r in accepted)
    structures = table(atlas, "structures")
    assert sorted(s["sequence_sha256"] for s in structures) == sorted({r.sha256 for r in accepted})
    assert not list((atlas / "_staging").glob("*"))
    # every published structure record is readable after the crash and the resume
    for shard in (atlas / "mmcif").glob("*.tar"):
        for _name, data in iter_shard(shard):
            assert read_record(data).sequence


def cookbook_examples() -> list[tuple[str, str]]:
    """(dialect, sql) for every ```sql block marked with <!-- example ... --> in docs/query.md."""
    import re

    text = (ROOT / "docs" / "query.md").read_text()
    pattern = re.compile(r"<!-- example(?: dialect=(\w+))? -->\n```sql\n(.*?)```", re.S)
    return [(m.group(1) or "duckdb", m.group(2)) for m in pattern.finditer(text)]


def test_query_cookbook(atlas_run):
    from storage.query import query

    atlas, *_ = atlas_run
    examples = cookbook_examples()
    assert len(examples) >= 12
    results = [query(atlas, sql.replace("{atlas}", str(atlas)), dialect) for dialect, sql in examples]
    # spot checks against the atlas contents
    states = dict(zip(*results[2].to_pydict().values(), strict=True))
    assert states["entry: predicted"] == len(table(atlas, "entries"))
    assert sum(v for k, v in states.items() if k.startswith("reject")) == len(table(atlas, "rejects"))
    assert results[7].num_rows == 20  # per-residue pLDDT rows
    assert "run_id" in results[-1].column(1)[0].as_py()  # provenance JSON


def test_afdb_bigquery_query_runs_unchanged_via_cli(atlas_run):
    atlas, *_ = atlas_run
    dialect, sql = cookbook_examples()[0]
    assert dialect == "bigquery" and "bigquery-public-data.deepmind_alphafold.metadata" in sql
    org = table(atlas, "entries", "SELECT organismScientificName o FROM t WHERE o IS NOT NULL LIMIT 1")[0]["o"]
    sql = sql.replace('"Homo sapiens"', f'"{org}"').replace("> 0.5", "> -1")  # the tiny model is never confident
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", str(atlas), sql, "--dialect", "bigquery",
                          "-f", "csv"], check=True, capture_output=True, text=True)
    files = out.stdout.splitlines()[1:]
    n = len(table(atlas, "entries", f"SELECT * FROM t WHERE organismScientificName = '{org}'"))
    assert len(files) == 2 * n and files[0].startswith("gs://public-datasets-deepmind-alphafold-v4/FA-")


def test_mmcif_coordinates_equal_the_prediction(atlas_run, tiny_backend):
    """gemmi and Biopython read back what the model predicted (re-predicted alone: same seed, same weights)."""
    import gemmi
    import numpy as np
    from Bio.PDB.MMCIFParser import MMCIFParser

    atlas, *_ = atlas_run
    s = table(atlas, "structures", "SELECT * FROM t ORDER BY sequence_length LIMIT 1")[0]
    text = read_record(next(data for name, data in iter_shard(atlas / s["mmcif_shard"])
                            if name == s["mmcif_member"])).render_mmcif()
    pred = tiny_backend.predict([s["sequence"]])[0]
    expected = {(i + 1, atom): pred.atom_positions[i, j] for i in range(len(pred.sequence))
                for j, atom in enumerate(ATOM37) if pred.atom_mask[i, j]}
    gemmi_atoms = {(r.seqid.num, a.name): (a.pos.x, a.pos.y, a.pos.z, a.b_iso)
                   for r in gemmi.read_structure_string(text)[0][0] for a in r}
    path = atlas.parent / "one.cif"
    path.write_text(text)
    bio = MMCIFParser(QUIET=True).get_structure("x", str(path))
    bio_atoms = {(a.get_parent().id[1], a.get_id()): (*a.coord, a.bfactor) for a in bio.get_atoms()}
    for read in (gemmi_atoms, bio_atoms):
        assert set(read) == set(expected)
        for (resnum, atom), xyz in expected.items():
            np.testing.assert_allclose(read[(resnum, atom)][:3], xyz, atol=2e-3)
            assert read[(resnum, atom)][3] == pytest.approx(pred.plddt[resnum - 1], abs=0.006)


ATOM37 = ["N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1", "ND2", "OD1",
          "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2", "NH1", "NH2", "OH", "CZ",
          "CZ2", "CZ3", "NZ", "OXT"]  # AlphaFold's atom37 order (independent of our code)
