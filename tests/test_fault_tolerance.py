"""A poisoned input (it kills its worker process every time) ends as a failure row; the run goes on.

The crash is injected with ``FOLDATLAS_FAULT_CRASH_SHA256`` (pipeline/stages.py): the fold worker
that receives the sequence exits at once, as a segfault or kill -9 would. The run retries the unit
on restarted actors, then folds each of its sequences alone, then records ``worker_crashed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.ingest import ingest_many
from pipeline.stages import CRASH_ENV
from tests.test_end_to_end import SAMPLE, tiny_config

pytestmark = pytest.mark.slow


def test_poisoned_sequence_becomes_a_failure_row_and_the_rest_is_predicted(tmp_path: Path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(">" + r for r in SAMPLE.read_text().split(">")[1:7]))
    accepted = ingest_many([str(fasta)]).accepted
    assert len(accepted) >= 4
    poison = accepted[1]
    cfg = tiny_config(tmp_path, 100000, ray={"max_task_retries": 1})
    atlas = tmp_path / "atlas"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", CRASH_ENV: poison.sha256}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(fasta), "--atlas", str(atlas),
                          "--config", str(cfg), "--no-progress"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    con = duckdb.connect()
    entries = {r[0]: r[1:] for r in con.execute(
        f"SELECT accession, status, failure_reason FROM read_parquet('{atlas}/entries/*.parquet')").fetchall()}
    assert sorted(entries) == sorted(r.accession for r in accepted)  # every record exactly once
    assert entries[poison.accession] == ("failed", "worker_crashed")
    assert all(v == ("predicted", None) for k, v in entries.items() if k != poison.accession)
    failures = con.execute(f"SELECT sequence_sha256, reason, message FROM read_parquet('{atlas}/failures/*.parquet')"
                           ).fetchall()
    assert [(f[0], f[1]) for f in failures] == [(poison.sha256, "worker_crashed")]
    assert "2 attempts" in failures[0][2]
    summary = json.loads(next((atlas / "_runs").glob("*/summary.json")).read_text())
    assert summary["failed_by_reason"] == {"worker_crashed": 1}
    assert summary["predicted"] == len({r.sha256 for r in accepted}) - 1
