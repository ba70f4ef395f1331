"""MSA stage end to end: real MMseqs2 / pyhmmer searches on local Ray, the MSA cache, failures."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from pipeline.config import load_config
from pipeline.errors import FoldAtlasError
from pipeline.msa_db import build_msa_db
from pipeline.runner import run
from storage.a3m import parse_a3m

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data"
UNIREF = DATA / "msa" / "af3_testdata_uniref90__subsampled_1000.fasta"
QUERIES = DATA / "msa" / "queries.fasta"  # 3 UniRef90 members + 3 E. coli proteins (one with U: rejected)


def config(tmp: Path, tool: str, db: Path, model: str = "esmfold-tiny", weights: Path | None = None) -> Path:
    path = tmp / f"{tool}-{model}.toml"
    weights_line = f'weights = "{weights}"' if weights else ""
    path.write_text(textwrap.dedent(f"""
        [model]
        name = "{model}"
        {weights_line}
        [msa]
        tool = "{tool}"
        db = "{db}"
        iterations = 2
        sensitivity = 2.0
        [ray]
        fold_cpus = 1.0
        write_cpus = 0.5
    """))
    return path


def entries(atlas: Path) -> list[dict]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{atlas}/entries/*.parquet', union_by_name=true)"
                      ).to_arrow_table().to_pylist()


@pytest.fixture(scope="module")
def mmseqs_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("msadb") / "uniref90"
    build_msa_db([str(UNIREF)], str(out), tool="mmseqs2")
    return out


def test_msa_run_then_cache_means_zero_searches(tmp_path, mmseqs_db, ray_session, tiny_backend):
    atlas = tmp_path / "atlas"
    first = run([QUERIES], atlas, load_config(config(tmp_path, "mmseqs2", mmseqs_db)), progress=False)
    assert first.predicted == first.accepted == 5 and first.msa_searched == 5 and first.msa_cached == 0
    cli = [sys.executable, "-m", "pipeline.cli"]
    for e in entries(atlas):
        assert e["msa_depth"] >= 1 and e["msa_neff"] >= 1 and e["msa_key"]
        out = tmp_path / f"{e['accession']}.a3m"
        subprocess.run([*cli, "get", str(atlas), e["accession"], "--msa", str(out)], check=True, capture_output=True)
        a3m = parse_a3m(out.read_text())
        assert a3m.query == e["uniprotSequence"] and len(a3m) == e["msa_depth"]
    # UniRef90 queries taken from the database find at least themselves
    selfhit = [e for e in entries(atlas) if e["accession"].startswith("UniRef90_")]
    assert selfhit and all(e["msa_depth"] >= 2 for e in selfhit)

    again = run([QUERIES], atlas, load_config(config(tmp_path, "mmseqs2", mmseqs_db)), progress=False)
    assert again.msa_searched == 0 and again.predicted == 0

    # a second model over the same sequences folds again but takes every MSA from the cache
    weights = tmp_path / "weights"
    tiny_backend.model.save_pretrained(weights)
    other = run([QUERIES], atlas, load_config(config(tmp_path, "mmseqs2", mmseqs_db, "esmfold", weights)),
                progress=False)
    assert other.predicted == 5 and other.msa_searched == 0 and other.msa_cached == 5
    msas = duckdb.sql(f"SELECT msa_key FROM read_parquet('{atlas}/msas/*.parquet')").fetchall()
    assert len(msas) == len(set(msas)) == 5


def test_hmmer_backend_end_to_end(tmp_path, ray_session):
    db = tmp_path / "hmmerdb"
    build_msa_db([str(UNIREF)], str(db), tool="hmmer")
    small = tmp_path / "q.fasta"
    small.write_text(">" + ">".join(QUERIES.read_text().split(">")[1:3]))  # the first two records
    summary = run([small], tmp_path / "atlas", load_config(config(tmp_path, "hmmer", db)), progress=False)
    assert summary.msa_searched == summary.predicted == 2
    for e in entries(tmp_path / "atlas"):
        assert e["msa_depth"] >= 2  # the query's own database entry is found


def test_bad_msa_setup_fails_before_any_work(tmp_path, mmseqs_db):
    atlas = tmp_path / "atlas"
    cfg = load_config(overrides={"model": {"name": "esmfold-tiny"}, "msa": {"tool": "mmseqs2"}})
    with pytest.raises(FoldAtlasError, match="--msa-db"):
        run([QUERIES], atlas, cfg, progress=False)
    cfg = load_config(overrides={"model": {"name": "esmfold-tiny"}, "msa": {"tool": "mmseqs2", "db": str(tmp_path)}})
    with pytest.raises(FoldAtlasError, match="msa-db build"):
        run([QUERIES], atlas, cfg, progress=False)
    cfg = load_config(overrides={"model": {"name": "esmfold-tiny"}, "msa": {"tool": "hmmer", "db": str(mmseqs_db)}})
    with pytest.raises(FoldAtlasError, match="built for mmseqs2"):
        run([QUERIES], atlas, cfg, progress=False)
    assert not atlas.exists()


def test_mmseqs_missing_is_a_clear_error(tmp_path, mmseqs_db, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mmseqs on PATH
    cfg = load_config(overrides={"model": {"name": "esmfold-tiny"}, "msa": {"tool": "mmseqs2", "db": str(mmseqs_db)}})
    with pytest.raises(FoldAtlasError, match="mmseqs2"):
        run([QUERIES], tmp_path / "atlas", cfg, progress=False)


def test_crashed_search_is_retried_then_recorded(tmp_path, mmseqs_db, tiny_backend):
    """A database that breaks after the run started: retried, then msa_error rows; ESMFold still folds."""
    import shutil

    from pipeline.confidence import ConfidencePolicy
    from pipeline.config import MSAConfig
    from pipeline.ingest import ingest
    from pipeline.msa_stage import make_spec, search_unit
    from pipeline.plan import make_plan
    from pipeline.write import WriteContext, write_unit
    from storage.atlas import Atlas

    broken = tmp_path / "db"
    shutil.copytree(mmseqs_db, broken)
    spec = make_spec(MSAConfig(tool="mmseqs2", db=str(broken), retries=1))
    for f in broken.iterdir():  # corrupt the database files, keep the identity record
        if f.name != "foldatlas-msa-db.json":
            f.write_bytes(b"garbage")
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    result = ingest(QUERIES)
    (unit,) = make_plan(result.accepted, [], atlas, "esmfold-tiny", load_config().plan, spec).units
    sequences = {r.sha256: r.sequence for r in unit.records}
    msa = search_unit(sequences, {}, spec)
    assert msa.attempts == 2 and set(msa.failed) == set(sequences) and msa.searched == 0
    outcomes = [tiny_backend.predict([s])[0] for s in unit.sequences]
    ctx = WriteContext(staging=str(tmp_path / "stage"), atlas=str(atlas.root), run_id="r", policy=ConfidencePolicy(),
                       provenance={}, msa=spec)
    m = write_unit(unit, outcomes, tiny_backend.info, {}, ctx, msa)
    assert m.msa_failed == 5 and m.counts["failures"] == 5 and m.counts["structures"] == 5
    failures = duckdb.sql(f"SELECT reason, attempts, message FROM read_parquet('{m.staged['failures']}')").fetchall()
    assert {r for r, _, _ in failures} == {"msa_error"} and {a for _, a, _ in failures} == {2}
    assert all("mmseqs" in msg.lower() or "msa-db" in msg for _, _, msg in failures), failures


def test_several_units_share_one_search_call(tmp_path, ray_session):
    """msa.units_per_search = 2: the MSA actor searches two units at once; every entry still gets
    its own MSA, and the per-unit results equal separate searches (tests/pipeline/test_msa.py)."""
    db = tmp_path / "hmmerdb"
    build_msa_db([str(UNIREF)], str(db), tool="hmmer")
    small = tmp_path / "q.fasta"
    small.write_text(">" + ">".join(QUERIES.read_text().split(">")[1:5]))  # four records
    cfg_path = config(tmp_path, "hmmer", db)
    cfg_path.write_text(cfg_path.read_text().replace("[msa]", "[plan]\nunit_max_residues = 150\n[msa]\n"
                                                     "units_per_search = 2"))
    cfg = load_config(cfg_path)
    assert cfg.msa.units_per_search == 2
    summary = run([small], tmp_path / "atlas", cfg, progress=False)
    assert summary.units_planned >= 3 and summary.units_published == summary.units_planned
    assert summary.msa_searched == summary.predicted == 4
    assert summary.stages["msa"]["sequences"] == 4
    rows = entries(tmp_path / "atlas")
    assert len(rows) == 4 and all(e["msa_depth"] >= 2 and e["msa_key"] for e in rows)
