"""`foldatlas run ... --address ray://HOST:PORT`: the driver runs on the cluster, driven over Ray Client.

A real head node is started here with `ray start --head --ray-client-server-port` under its own
``RAY_TMPDIR`` (as tests/test_cluster.py does). It runs in a private mount namespace where a
tmpfs hides one directory of this machine: files there exist for the client only, as on a
workstation, so shipping an input and refusing an atlas the cluster cannot see are tested for real.
``GRPC_ENABLE_FORK_SUPPORT=0`` on the head: with grpcio 1.85 the Ray Client server's child
process otherwise aborts in gRPC's fork handler (ray-project/ray#63202; docs/operations.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from pipeline.ingest import ingest_many
from tests.conftest import _free_port
from tests.test_cluster import RAY, _kill_matching
from tests.test_end_to_end import SAMPLE, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_cluster():
    tmp = Path(tempfile.mkdtemp(prefix="fa-rayclient-"))
    hidden = tmp / "client-only"  # a directory the cluster's processes cannot see
    hidden.mkdir()
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (a private mount namespace) to give the cluster its own view of files")
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray"), "RAY_AUTH_MODE": "disabled", "GRPC_ENABLE_FORK_SUPPORT": "0"}
    for attempt in range(1, 4):  # a loaded host can miss Ray's fixed 30 s start-up deadline: start again
        port, client_port = _free_port(), _free_port()
        start = [RAY, "start", "--head", "--port", str(port), "--ray-client-server-port", str(client_port),
                 "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                 "--object-store-memory", str(200 * 1024 * 1024)]
        script = f"mount -t tmpfs none {hidden} && exec {' '.join(start)}"
        out = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                             timeout=300)
        if out.returncode == 0:
            break
        _kill_matching(str(tmp))
        if attempt == 3:
            raise RuntimeError(f"ray start --head failed 3 times; last output:\n{(out.stdout + out.stderr)[-3000:]}")
        time.sleep(5)
    try:
        yield f"ray://127.0.0.1:{client_port}", env, hidden
    finally:
        _kill_matching(str(tmp))
        _kill_matching(f"--port={client_port}")
        shutil.rmtree(tmp, ignore_errors=True)


def _fasta(directory: Path, start: int, stop: int) -> Path:
    path = directory / f"in-{start}-{stop}.fasta"
    path.write_text("".join(">" + r for r in SAMPLE.read_text().split(">")[1:][start:stop]))
    return path


def _cli(fasta: Path, atlas: Path | str, address: str, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", str(fasta), "--atlas", str(atlas), "--address", address,
            "--config", str(cfg), "--no-progress"]


def _entries(atlas: Path) -> list[str]:
    return sorted(a for (a,) in duckdb.connect().execute(
        f"SELECT accession FROM read_parquet('{atlas}/entries/*.parquet')").fetchall())


def test_run_through_ray_client_ships_a_client_only_input(client_cluster, tmp_path):
    address, env, hidden = client_cluster
    fasta = _fasta(hidden, 0, 4)  # only this machine has it: shipped through the object store
    atlas = tmp_path / "atlas"  # same path on both sides: a shared filesystem
    cfg = tiny_config(tmp_path, 600, ray={"progress_log_s": 1})
    out = subprocess.run(_cli(fasta, atlas, address, cfg), env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = out.stdout + out.stderr
    assert "RemoteDriver pid=" in logs and "plan: " in logs  # the remote driver's log lines reach the client
    assert "progress " in logs  # progress lines (no terminal on the cluster)
    assert f"-> {atlas}" in out.stdout  # the summary came back
    assert _entries(atlas) == sorted(r.accession for r in ingest_many([str(fasta)]).accepted)
    summary = json.loads(next((atlas / "_runs").glob("*/summary.json")).read_text())
    assert summary["inputs"] == [f"client:{fasta}"]
    entries_source = duckdb.connect().execute(
        f"SELECT DISTINCT source_file FROM read_parquet('{atlas}/entries/*.parquet')").fetchall()
    assert entries_source == [(fasta.name,)]  # the shipped copy keeps the file's name


def test_an_atlas_the_cluster_cannot_see_is_refused(client_cluster, tmp_path):
    address, env, hidden = client_cluster
    atlas = hidden / "atlas"
    out = subprocess.run(_cli(_fasta(tmp_path, 0, 2), atlas, address, tiny_config(tmp_path)), env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert f"does not see the atlas directory {atlas}" in out.stderr and "s3://" in out.stderr
    assert not atlas.exists()  # the directory made for the probe is removed again


def test_ctrl_c_stops_the_remote_driver_and_the_rerun_resumes(client_cluster, tmp_path):
    address, env, _ = client_cluster
    # all 40 sample sequences, one unit each: the run goes on well after its first publish (with 16,
    # an idle machine finished the run between the first entries file and the Ctrl-C, exit 0)
    fasta = _fasta(tmp_path, 0, 40)
    atlas = tmp_path / "atlas"
    cfg = tiny_config(tmp_path, 300)
    proc = subprocess.Popen(_cli(fasta, atlas, address, cfg), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list((atlas / "entries").glob("*-*.parquet")):
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run finished before the Ctrl-C reached it: give it more work"
    assert proc.returncode == 130 and "stopping the driver on the cluster" in out and "Traceback" not in out
    partial = _entries(atlas)
    accepted = sorted(r.accession for r in ingest_many([str(fasta)]).accepted)
    assert 0 < len(partial) < len(accepted), "the interrupt came too late to stop anything"
    time.sleep(5)
    assert _entries(atlas) == partial, "the remote driver kept publishing after Ctrl-C"
    # the writer lock is free again (the remote driver is gone) and the rerun completes the atlas
    again = subprocess.run(_cli(fasta, atlas, address, cfg), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _entries(atlas) == accepted  # every entry exactly once


@pytest.mark.s3
def test_run_through_ray_client_into_an_s3_atlas(client_cluster, s3_server, tmp_path):
    from tests.test_s3_atlas import _bucket, _rows

    address, env, hidden = client_cluster
    fasta = _fasta(hidden, 4, 7)
    uri = f"s3://{_bucket('atlas-client')}/demo"
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # forwarded to the remote driver
    out = subprocess.run(_cli(fasta, uri, address, tiny_config(tmp_path, 600)), env={**env, **aws},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(r["accession"] for r in _rows(uri, "entries")) == sorted(
        r.accession for r in ingest_many([str(fasta)]).accepted)
