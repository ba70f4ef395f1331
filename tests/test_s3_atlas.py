"""An atlas on S3 (a real local S3 server, moto_server): run, query, get, rerun, kill -9, lock.

The run goes through local Ray with the tiny ESMFold, exactly as for a directory atlas; only the
``--atlas`` location differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.config import load_config
from pipeline.errors import AtlasError
from pipeline.ingest import ingest_many
from pipeline.runner import run
from storage.atlas import Atlas
from storage.mmcif import read_modelcif
from storage.store import S3Store, open_store
from tests.test_end_to_end import SAMPLE, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def _records(n: int) -> str:
    text = SAMPLE.read_text().split(">")[1:]
    return "".join(">" + r for r in text[:n])


def _bucket(name: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


def _rows(uri: str, table: str) -> list[dict]:
    con = open_store(uri).duckdb()
    return con.sql(f"SELECT * FROM read_parquet('{uri}/{table}/*.parquet', union_by_name=true)").to_arrow_table() \
        .to_pylist()


@pytest.fixture(scope="module")
def s3_run(s3_server, ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3run")
    fasta = tmp / "in.fasta"
    fasta.write_text(_records(10))
    uri = f"s3://{_bucket('atlas-e2e')}/proteomes/demo"
    cfg = load_config(tiny_config(tmp, unit_max_residues=1200))
    summary = run([fasta], uri, cfg, progress=False)
    return uri, fasta, cfg, summary, tmp


def test_run_into_s3_every_record_once(s3_run):
    uri, fasta, cfg, summary, _ = s3_run
    expected = ingest_many([str(fasta)], cfg.ingest)
    entries, rejects = _rows(uri, "entries"), _rows(uri, "rejects")
    assert summary.read == expected.n_read == len(entries) + len(rejects)
    assert sorted(e["accession"] for e in entries) == sorted(r.accession for r in expected.accepted)
    structures = _rows(uri, "structures")
    assert sorted(s["sequence_sha256"] for s in structures) == sorted({r.sha256 for r in expected.accepted})
    assert summary.units_published == summary.units_planned >= 2
    store = open_store(uri)
    assert isinstance(store, S3Store)
    keys = [e.path for e in store.list()]
    assert not [k for k in keys if k.startswith("_staging/")], "staged objects left behind"
    assert "_lock" not in keys
    published = [k for k in keys if k.startswith(f"_runs/{summary.run_id}/published/")]
    assert len(published) == summary.units_published
    assert {k.split("/")[0] for k in keys} <= {"atlas.json", "entries", "structures", "rejects", "failures",
                                               "msas", "mmcif", "_runs"}
    assert store.exists(f"_runs/{summary.run_id}/summary.json")
    assert store.exists(f"_runs/{summary.run_id}/plddt_histogram.png")


def test_rerun_on_s3_adds_nothing(s3_run):
    uri, fasta, cfg, _, _ = s3_run
    before = {t: len(_rows(uri, t)) for t in ("entries", "structures", "rejects", "failures")}
    again = run([fasta], uri, cfg, progress=False)
    assert again.sequences_planned == 0 and again.predicted == 0 and again.entries_written == 0
    assert {t: len(_rows(uri, t)) for t in before} == before


def test_plain_duckdb_reads_the_s3_atlas_without_foldatlas(s3_run):
    """DuckDB without httpfs: pyarrow's S3 filesystem registered through fsspec, nothing of ours."""
    uri, *_ = s3_run
    script = f"""
import os, sys, duckdb, pyarrow.fs as pafs
from fsspec.implementations.arrow import ArrowFSWrapper
class S3(ArrowFSWrapper):
    protocol = ("s3",)
host = os.environ["AWS_ENDPOINT_URL"].split("://")[1]
fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1")
con = duckdb.connect(); con.register_filesystem(S3(fs))
n = con.execute("SELECT count(*) FROM read_parquet('{uri}/entries/*.parquet') WHERE status = 'predicted'").fetchone()[0]
assert not any(m.startswith(("pipeline", "storage", "model")) for m in sys.modules), "foldatlas imported"
print(n)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd="/")
    assert int(out.stdout.strip()) == len(_rows(uri, "entries"))


def test_cli_get_and_query_on_s3(s3_run, tmp_path):
    uri, *_ = s3_run
    acc = _rows(uri, "entries")[0]["accession"]
    cli = [sys.executable, "-m", "pipeline.cli"]
    subprocess.run([*cli, "get", uri, acc, "-o", str(tmp_path / "e.cif"), "--pae", str(tmp_path / "p.json")],
                   check=True, capture_output=True)
    contents = read_modelcif((tmp_path / "e.cif").read_text())
    assert contents.sequence == next(e for e in _rows(uri, "entries") if e["accession"] == acc)["uniprotSequence"]
    pae = json.loads((tmp_path / "p.json").read_text())
    assert len(pae[0]["predicted_aligned_error"]) == len(contents.sequence)
    out = subprocess.run([*cli, "query", uri, "SELECT count(*) AS n FROM structures", "-f", "json"],
                         check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)[0]["n"] == len(_rows(uri, "structures"))
    out = subprocess.run([*cli, "sql", uri], input="SELECT count(*) AS n FROM entries;\n", check=True,
                         capture_output=True, text=True)
    assert str(len(_rows(uri, "entries"))) in out.stdout


def test_s3_lock_is_exclusive_and_a_dead_holder_is_taken_over(s3_server):
    uri = f"s3://{_bucket('atlas-lock')}/a"
    atlas, other = Atlas(uri), Atlas(uri)
    with atlas.locked(), pytest.raises(AtlasError, match="Another run is writing"), other.locked():
        pass
    assert not atlas.store.exists("_lock")
    # a holder on this host whose process is gone (kill -9): the next writer takes the lock over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atlas.store.write_text("_lock", json.dumps({"owner": "x", "host": os.uname().nodename, "pid": dead.pid,
                                                "heartbeat": time.time()}))
    with other.locked():
        assert json.loads(atlas.store.read_text("_lock"))["pid"] == os.getpid()


def test_sigkill_mid_run_on_s3_then_resume(s3_server, tmp_path):
    """kill -9 the driver during an S3 run: readers see whole shards only; the rerun completes it."""
    uri = f"s3://{_bucket('atlas-kill')}/a"
    fasta = tmp_path / "in.fasta"
    fasta.write_text(_records(14))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(fasta), "--atlas", uri,
           "--config", str(tiny_config(tmp_path, unit_max_residues=500)), "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    store = open_store(uri)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(store.list("_runs", suffix=".json")) >= 4:  # config, provenance + 2 published units
            break
        time.sleep(0.3)
    assert proc.poll() is None, "run finished before it could be killed; make units smaller"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    entries = _rows(uri, "entries")
    assert 0 < len(entries) < 14 and len({e["accession"] for e in entries}) == len(entries)
    structures = _rows(uri, "structures")
    assert len({s["sequence_sha256"] for s in structures}) == len(structures)
    shards = {e.path for e in store.list("mmcif")}
    assert {s["mmcif_shard"] for s in structures if s["published"]} <= shards
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # the dead run's lock is taken over
    accepted = ingest_many([str(fasta)]).accepted
    assert sorted(e["accession"] for e in _rows(uri, "entries")) == sorted(r.accession for r in accepted)
    assert sorted(s["sequence_sha256"] for s in _rows(uri, "structures")) == sorted({r.sha256 for r in accepted})
    assert not store.list("_staging")


def test_export_and_validate_an_s3_atlas(s3_run, tmp_path):
    """The release tools read an atlas on S3 as they read a directory."""
    from storage.release import ExportOptions, export_release
    from storage.validate import validate

    uri, *_ = s3_run
    assert validate(uri).ok
    dest = f"s3://{_bucket('release-from-s3')}/r1"
    export_release(uri, dest, ExportOptions(by="confidence", engine="threads"))
    report = validate(dest)
    assert report.ok, report.problems
    manifest = json.loads(open_store(dest).read_text("manifest.json"))
    assert sum(f["entries"] for f in manifest["files"] if f["path"].endswith(".tar")) == \
        len([e for e in _rows(uri, "entries") if e["published"]])


def test_import_into_an_s3_atlas_renders_the_afdb_file_back(s3_server, tmp_path):
    """foldatlas import publishes through the store too; get renders AFDB's coordinates back."""
    import gemmi

    from pipeline.importer import import_predictions
    from storage.entry import fetch_entry
    from tests.test_end_to_end import DATA

    uri = f"s3://{_bucket('atlas-import')}/a"
    cif = DATA / "afdb" / "AF-P00221-F1-model_v4.cif"
    import_predictions([cif, DATA / "afdb" / "AF-P00221-F1-predicted_aligned_error_v4.json"], uri)
    assert not open_store(uri).list("_staging")
    text = fetch_entry(uri, "P00221").mmcif()
    ours = gemmi.read_structure(str(_write(tmp_path / "o.cif", text)))
    theirs = gemmi.read_structure(str(cif))
    a = [(at.name, at.pos.x, at.pos.y, at.pos.z) for r in ours[0][0] for at in r]
    b = [(at.name, at.pos.x, at.pos.y, at.pos.z) for r in theirs[0][0] for at in r]
    assert len(a) == len(b) > 1000
    assert all(x[0] == y[0] and max(abs(x[i] - y[i]) for i in (1, 2, 3)) < 5e-4 for x, y in zip(a, b, strict=True))


def _write(path, text: str):
    path.write_text(text)
    return path
