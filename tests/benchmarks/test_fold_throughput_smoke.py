"""The fold throughput harness runs end to end on the CPU with the tiny config (CI smoke test).

Reads only the repository's example FASTA (never ../shared); about 35 s on 2 busy cores. The GPU
figures come from ``--config full`` on a GPU machine (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
FASTA = ROOT / "examples" / "ecoli_sample.fasta"

pytestmark = pytest.mark.slow


def test_fold_throughput_smoke(tmp_path: Path) -> None:
    from benchmarks import fold_throughput

    out = tmp_path / "smoke.json"
    argv = ["--config", "tiny", "--n", "4", "--max-len", "200", "--device", "cpu", "--fasta", str(FASTA),
            "--out", str(out)]
    fold_throughput.main(argv)
    res = json.loads(out.read_text())

    assert res["schema"] == fold_throughput.SCHEMA and "/work/shared" not in json.dumps(res["argv"])
    assert res["workload"]["n"] == 4 and res["workload"]["lengths"]["max"] <= 200
    assert res["model"]["config"] == "tiny" and res["model"]["trunk_passes"] == 1
    naive, fast = res["naive"], res["fast"]["fast"]
    for mode in (naive, fast):
        assert mode["proteins"] == 4 and mode["complete"] is True
        for key in ("proteins_per_hour", "residues_per_second", "seconds_per_protein", "peak_memory_bytes",
                    "flops_per_protein_mean", "achieved_tflops", "mfu"):
            assert mode[key] > 0, key
        assert mode["residues"] == res["workload"]["lengths"]["total"]
    assert naive["batch_size"] == 1 and fast["padding_ratio"] <= 1.25
    assert fast["speedup_vs_naive"] == pytest.approx(fast["proteins_per_hour"] / naive["proteins_per_hour"])
    # fp32 on the CPU: the fast path computes the same numbers as the naive path
    diff = res["numerics"]["fast"]
    assert diff["n_sequences"] == 4 and diff["coord_max_abs_A"] < 1e-3 and diff["ptm_max_abs"] < 1e-5
    feed = res["feed_rate"]
    assert feed["available"] is True and feed["proteins"] == 4 and feed["published_structures"] == 4
    assert feed["cpu_seconds_per_protein"] > 0
    assert res["cores_per_gpu"]["write_cores_per_gpu"] == pytest.approx(
        feed["cpu_seconds_per_protein"] / fast["seconds_per_protein"])


def test_committed_cpu_smoke_result_is_labelled() -> None:
    res = json.loads((ROOT / "benchmarks" / "results" / "fold_throughput_cpu_smoke.json").read_text())
    assert res["schema"] == "foldatlas.fold_throughput/1" and res["environment"]["device"] == "cpu"
    assert "not a GPU measurement" in res["label"] and res["model"]["config"] == "tiny"
