"""A simulated multi-node Ray cluster: a head and two worker nodes started with `ray start` here.

Each node is a separate set of processes (GCS, raylet, workers). A custom resource ``fold_slot``
on the two worker nodes stands in for their GPUs, and ``cpu_stage`` on the head for a CPU node
group: the run declares them (``ray.fold_resources``, ``ray.cpu_stage_resources``), so folding
happens on the worker nodes and writing on the head. The cluster lives under its own
``RAY_TMPDIR``, so it never touches the test session's local Ray, and is torn down by killing the
processes of that directory only.
"""

from __future__ import annotations

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
from tests.test_end_to_end import SAMPLE, tiny_config

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def _kill_matching(pattern: str, sig: int = signal.SIGKILL) -> int:
    n = 0
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmd:
            try:
                os.kill(int(pid_dir.name), sig)
                n += 1
            except ProcessLookupError:
                pass
    return n


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="fa-ray-"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled"}
    port = _free_port()
    common = ["--disable-usage-stats", "--object-store-memory", str(200 * 1024 * 1024)]
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
                    "--resources", '{"cpu_stage": 2}', *common], env=env, check=True, capture_output=True)
    manager_ports = []
    for _ in range(2):
        mp = _free_port()
        manager_ports.append(mp)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                        "--node-manager-port", str(mp), "--resources", '{"fold_slot": 1}', *common],
                       env=env, check=True, capture_output=True)
    try:
        yield f"127.0.0.1:{port}", env, manager_ports, tmp
    finally:
        _kill_matching(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def _config(tmp: Path) -> Path:
    return tiny_config(tmp, 600, ray={"fold_actors": 2, "fold_cpus": 0.5, "fold_resources": {"fold_slot": 0.5},
                                      "cpu_stage_resources": {"cpu_stage": 1}, "torch_threads": 1})


def _entries(atlas: Path) -> list[tuple[str, str]]:
    return duckdb.connect().execute(
        f"SELECT accession, status FROM read_parquet('{atlas}/entries/*.parquet')").fetchall()


def _fasta(tmp: Path, name: str, start: int, stop: int) -> Path:
    path = tmp / name
    path.write_text("".join(">" + r for r in SAMPLE.read_text().split(">")[1:][start:stop]))
    return path


def test_run_across_nodes_then_survive_a_worker_node_killed(cluster, tmp_path):
    address, env, manager_ports, _ = cluster
    cfg = _config(tmp_path)
    atlas = tmp_path / "atlas"

    # 1. a run across the three nodes completes
    first = _fasta(tmp_path, "a.fasta", 0, 8)
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(first), "--atlas", str(atlas), "--address",
                    address, "--config", str(cfg), "--no-progress"], env=env, check=True, capture_output=True,
                   timeout=900)
    accepted = ingest_many([str(first)]).accepted
    assert sorted(a for a, _ in _entries(atlas)) == sorted(r.accession for r in accepted)

    # 2. a second input; one worker node (its raylet and every worker under it) is killed mid-run
    second = _fasta(tmp_path, "b.fasta", 8, 22)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(second), "--atlas", str(atlas),
                             "--address", address, "--config", str(cfg), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    n_before = len(_entries(atlas))
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(_entries(atlas)) == n_before:
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before the node could be killed"
    killed = _kill_matching(f"--node_manager_port={manager_ports[1]}")
    assert killed >= 1, "no raylet found for the worker node"
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    accepted += ingest_many([str(second)]).accepted
    rows = _entries(atlas)
    assert sorted(a for a, _ in rows) == sorted(r.accession for r in accepted)  # every entry exactly once
    assert all(status == "predicted" for _, status in rows)
