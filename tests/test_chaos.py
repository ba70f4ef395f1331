"""Chaos: a 2,000-sequence run survives fold actors and drivers killed at random moments.

Input: 2,000 distinct windows (40-120 residues, seeded) of the 100 real E. coli proteins in
``examples/ecoli_sample.fasta``, accessions ``CHAOS00001``..., plus a few invalid records that must
end in ``rejects``. Windows keep the tiny model's CPU time to a couple of minutes; the number of
work units (small ``unit_max_residues``), not the residues, is what the kills act on.

* Fold actors: while the run goes on, a killer thread SIGKILLs a random fold-actor process
  (Ray Data's ``MapWorker(MapBatches(FoldActor))``) after a random pause, at least five times.
  Ray restarts the actor and retries the unit (``ray.max_task_retries``).
* Driver: the run is killed (the driver's whole process group, its local Ray included) twice at
  random moments and rerun each time; a third run finishes it.

Each time the final atlas holds every valid input exactly once (entries, structures), every
invalid record once in ``rejects``, and no failure row. After a driver kill, the rerun predicts only
what was not yet published (asserted from its summary), and what the kill threw away (units
written to staging but not yet published) is at most the units in flight.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from tests.test_end_to_end import tiny_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "ecoli_sample.fasta"
N_VALID = 2000
INVALID = {"CHAOSBAD1": "MKT1LLVA", "CHAOSBAD2": "MK*LLVAG", "CHAOSBAD3": ""}
UNIT_RESIDUES = 2400  # about 30 sequences per unit: ~70 units
FOLD_ACTOR_TAG = "FoldActor"


def _proteins() -> list[str]:
    seqs, cur = [], []
    for line in SOURCE.read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append("".join(cur))
            cur = []
        else:
            cur.append(line.strip())
    seqs.append("".join(cur))
    return seqs


def chaos_fasta(path: Path, n: int = N_VALID, seed: int = 2000) -> dict[str, str]:
    """Write the chaos input; returns accession -> sequence of the valid records."""
    rng = random.Random(seed)
    proteins = _proteins()
    valid: dict[str, str] = {}
    seen: set[str] = set()
    while len(valid) < n:
        p = rng.choice(proteins)
        length = rng.randint(40, min(120, len(p)))
        start = rng.randint(0, len(p) - length)
        window = p[start:start + length]
        if window in seen:
            continue
        seen.add(window)
        valid[f"CHAOS{len(valid) + 1:05d}"] = window
    lines = [f">{acc} chaos window OS=Escherichia coli (strain K12) OX=83333\n{seq}\n" for acc, seq in valid.items()]
    lines += [f">{acc} invalid on purpose\n{seq}\n" for acc, seq in INVALID.items()]
    rng.shuffle(lines)
    path.write_text("".join(lines))
    return valid


def _config(tmp: Path) -> Path:
    return tiny_config(tmp, UNIT_RESIDUES, ray={"fold_actors": 2, "torch_threads": 1, "fold_cpus": 0.5,
                                                "max_task_retries": 6})


def _cmd(fasta: Path, atlas: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", str(fasta), "--atlas", str(atlas), "--config", str(cfg),
            "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def _rows(atlas: Path, sql: str) -> list[tuple]:
    con = duckdb.connect()
    for name in ("entries", "structures", "rejects", "failures"):
        files = list((atlas / name).glob("*.parquet"))
        source = f"read_parquet('{atlas}/{name}/*.parquet', union_by_name=true)" if files else "(SELECT 1 WHERE false)"
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    return con.execute(sql).fetchall()


def assert_exactly_once(atlas: Path, valid: dict[str, str]) -> None:
    entries = _rows(atlas, "SELECT accession, status FROM entries")
    accessions = [a for a, _ in entries]
    assert len(accessions) == len(set(accessions)), "an entry was published twice"
    assert sorted(accessions) == sorted(valid), "entries differ from the valid inputs"
    assert {s for _, s in entries} == {"predicted"}
    shas = [s for (s,) in _rows(atlas, "SELECT sequence_sha256 FROM structures")]
    assert len(shas) == len(set(shas)) == len(valid), "a structure is missing or duplicated"
    rejects = sorted(a for (a,) in _rows(atlas, "SELECT accession FROM rejects"))
    assert rejects == sorted(INVALID)
    assert _rows(atlas, "SELECT count(*) FROM failures") == [(0,)]


def _fold_actor_pids(driver_pid: int) -> list[int]:
    """Fold-actor processes of the run whose driver is ``driver_pid``: its local Ray's workers are
    the driver's descendants (raylet children), so other Ray sessions on the machine are left alone."""
    try:
        procs = psutil.Process(driver_pid).children(recursive=True)
    except psutil.Error:
        return []
    pids = []
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::") and FOLD_ACTOR_TAG in cmd:
            pids.append(proc.pid)
    return pids


def _published_units(atlas: Path) -> set[str]:
    units: set[str] = set()
    for log in atlas.glob("_runs/*/published.jsonl"):
        units |= {json.loads(line)["unit_id"] for line in log.read_text().splitlines() if line.strip()}
    return units


def test_fold_actors_killed_at_random_five_times(tmp_path: Path):
    fasta = tmp_path / "chaos.fasta"
    valid = chaos_fasta(fasta)
    atlas = tmp_path / "atlas"
    log_path = tmp_path / "run.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(_cmd(fasta, atlas, _config(tmp_path)), stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True, env=_env())
    rng = random.Random(5)
    kills: list[tuple[float, int]] = []
    t0 = time.time()

    def killer() -> None:
        while proc.poll() is None and len(kills) < 8:
            time.sleep(rng.uniform(2.0, 7.0))
            pids = _fold_actor_pids(proc.pid)
            if not pids or proc.poll() is not None:
                continue
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append((time.time() - t0, pid))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        proc.wait(timeout=1500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log_file.close()
    thread.join(timeout=30)
    out = log_path.read_text(errors="replace")
    assert proc.returncode == 0, f"kills at {kills}\n" + out[:3000] + "\n...\n" + out[-3000:]
    assert len(kills) >= 5, f"only {len(kills)} fold actor kills before the run ended ({kills}); make the run longer"
    assert_exactly_once(atlas, valid)
    summary = json.loads(next((atlas / "_runs").glob("*/summary.json")).read_text())
    assert summary["predicted"] == N_VALID and summary["failed"] == 0


def test_driver_killed_twice_then_rerun(tmp_path: Path):
    fasta = tmp_path / "chaos.fasta"
    valid = chaos_fasta(fasta)
    atlas = tmp_path / "atlas"
    cmd = _cmd(fasta, atlas, _config(tmp_path))
    rng = random.Random(11)
    for kill in (1, 2):
        before = _published_units(atlas)
        structures_before = _rows(atlas, "SELECT count(*) FROM structures")[0][0] if atlas.exists() else 0
        target = rng.randint(3, 15)  # units this run publishes before it dies
        log_path = tmp_path / f"run{kill}.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=_env())
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and len(_published_units(atlas) - before) < target:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))  # a random moment between two publishes
        assert proc.poll() is None, (f"run {kill} ended (exit {proc.returncode}) before it could be killed:\n"
                                     + log_path.read_text(errors="replace")[-5000:])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        published = _published_units(atlas)
        assert len(published - before) >= target
        # work thrown away by the kill: units written to staging but not published
        lost_units = _staged_unit_ids(atlas) - published
        assert len(lost_units) <= 3, f"kill {kill}: {len(lost_units)} written units were not published: {lost_units}"
        # consistent at the moment of death: whole shards, no duplicates
        entries = [a for (a,) in _rows(atlas, "SELECT accession FROM entries")]
        assert len(entries) == len(set(entries))
        structures = _rows(atlas, "SELECT count(*) FROM structures")[0][0]
        assert structures > structures_before
    final = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1500)
    assert final.returncode == 0, final.stderr[-4000:]
    assert_exactly_once(atlas, valid)
    summaries = [json.loads(p.read_text()) for p in atlas.glob("_runs/*/summary.json")]
    assert len(summaries) == 1  # the killed runs never wrote theirs
    last = summaries[0]
    # the rerun predicted exactly what had not been published: nothing published was redone
    assert last["already_in_atlas"] + last["linked"] + last["sequences_planned"] == N_VALID
    assert last["predicted"] == last["sequences_planned"] == N_VALID - structures
    assert not list((atlas / "_staging").glob("*"))


def _staged_unit_ids(atlas: Path) -> set[str]:
    """Unit ids of the shards left in staging (file names start with the unit id).

    The planner's scratch (``_staging/<run>/_plan/``: spilled plan tables) is not a unit."""
    ids = set()
    for p in (atlas / "_staging").rglob("*"):
        if p.is_file() and "_plan" not in p.relative_to(atlas / "_staging").parts:
            ids.add(p.name.split(".")[0])
    return ids
