"""Out of memory takes the long-sequence path: normal pool -> chunked long pool -> fragments -> failure.

The out-of-memory errors are injected with ``FOLDATLAS_FAULT_OOM_SHA256`` (pipeline/oom_route.py):
the tiny model raises ``torch.OutOfMemoryError`` for a poisoned sequence unless the trunk chunk
size in effect is at most the given limit (``SHA:32``) or always (``SHA``). Everything else is the
real pipeline on the session's local Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import torch

from model.base import Prediction, PredictionFailure
from pipeline.config import load_config
from pipeline.fold import Folder, FoldSettings
from pipeline.ingest import IngestPolicy, ingest_many
from pipeline.oom_route import (
    OOM_ENV,
    InjectedOOMBackend,
    OOMSequence,
    failure_message,
    oom_fragments,
    take_oom,
    why_not_fragments,
)
from pipeline.plan import WorkUnit, unit_id_for
from pipeline.runner import run
from tests.test_end_to_end import SAMPLE, tiny_config

RECORDS = ingest_many([SAMPLE]).accepted[:5]  # 255, 243, 214, 333, 162 residues


def _by_length(n: int):
    return next(r for r in RECORDS if r.length == n)


def test_injected_oom_depends_on_the_trunk_chunk_size(tiny_backend):
    poisoned, healthy = _by_length(243), _by_length(214)
    backend = InjectedOOMBackend(tiny_backend, {poisoned.sha256: 32})
    assert tiny_backend.chunk_size == 64
    with pytest.raises(torch.OutOfMemoryError):
        backend.predict([healthy.sequence, poisoned.sequence])
    assert len(backend.predict([healthy.sequence])) == 1
    try:
        tiny_backend.set_chunk_size(16)
        assert backend.predict([poisoned.sequence])[0].sequence == poisoned.sequence
    finally:
        tiny_backend.set_chunk_size(None)


def test_folder_isolates_the_oom_sequence_and_take_oom_hands_it_back(tiny_backend):
    poisoned, healthy = _by_length(243), _by_length(214)
    folder = Folder(InjectedOOMBackend(tiny_backend, {poisoned.sha256: None}), FoldSettings(max_tokens_per_batch=600))
    outcomes = folder.fold([healthy.sequence, poisoned.sequence])
    assert isinstance(outcomes[0], Prediction)
    assert isinstance(outcomes[1], PredictionFailure) and outcomes[1].reason == "oom"
    assert "injected" in outcomes[1].message
    unit = WorkUnit(unit_id_for("m", [healthy.sha256, poisoned.sha256]), "m",
                    (healthy.sequence, poisoned.sequence), (healthy, poisoned))
    kept, kept_outcomes, deferred = take_oom(unit, outcomes)
    assert kept.unit_id == unit.unit_id and kept.sequences == (healthy.sequence,) and kept.records == (healthy,)
    assert kept_outcomes == [outcomes[0]] and list(deferred) == [poisoned.sha256]


def test_fragment_eligibility_and_failure_message():
    policy = IngestPolicy(max_length=10_000, fragment_above=300, fragment_window=200, fragment_step=100)
    long, short = OOMSequence([_by_length(255)], ["chunked"], "boom"), OOMSequence([_by_length(162)], ["normal"], "x")
    assert why_not_fragments(long, policy) is None
    assert "not above ingest.fragment_window 200" in (why_not_fragments(short, policy) or "")
    assert "no fragment policy" in (why_not_fragments(long, IngestPolicy()) or "")
    frags = oom_fragments(_by_length(255), policy)  # 255 <= fragment_above: ingest would not split it
    assert [(f.fragment, f.start, f.length) for f in frags] == [(1, 1, 200), (2, 56, 200)]
    assert all(f.whole_sha256 == _by_length(255).sha256 for f in frags)
    assert "already a fragment" in (why_not_fragments(OOMSequence([frags[0]], ["normal"], ""), policy) or "")
    short.pools.append("oom_chunked")
    msg = failure_message(short, "reason")
    assert "in the normal pool and then in the chunked long pool" in msg and msg.endswith("Last error: x")


def _entries(atlas: Path) -> dict[str, tuple]:
    rows = duckdb.connect().execute(
        "SELECT entryId, accession, status, failure_reason, fold_route, fragment_of_sha256, uniprotStart, uniprotEnd "
        f"FROM read_parquet('{atlas}/entries/*.parquet', union_by_name=true)").fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "an entry was published twice"
    return {r[0]: r[1:] for r in rows}


def _drop_units_of(atlas: Path, shas: set[str]) -> int:
    """Remove the published shards of the units holding these sequences: a driver that died before
    publishing them (units are published one at a time, each atomically)."""
    units = {u for (u,) in duckdb.connect().execute(
        f"SELECT DISTINCT unit_id FROM read_parquet('{atlas}/structures/*.parquet') WHERE sequence_sha256 IN "
        f"({', '.join(repr(s) for s in shas)})").fetchall()}
    for unit in units:
        for path in (atlas / "entries" / f"{unit}.parquet", atlas / "structures" / f"{unit}.parquet",
                     atlas / "mmcif" / f"{unit}.tar"):
            path.unlink()
    return len(units)


@pytest.mark.slow
def test_oom_reroutes_to_the_chunked_pool_then_fragments_then_failure(tmp_path: Path, ray_session, monkeypatch):
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(">" + r for r in SAMPLE.read_text().split(">")[1:6]))
    long_oom, chunk_ok, short_oom = _by_length(255), _by_length(243), _by_length(162)
    monkeypatch.setenv(OOM_ENV, f"{long_oom.sha256},{chunk_ok.sha256}:32,{short_oom.sha256}")
    cfg = load_config(tiny_config(
        tmp_path, 250,  # one sequence per unit: each fragment publishes on its own
        ingest={"max_length": 10000, "fragment_above": 300, "fragment_window": 200, "fragment_step": 100},
        long_sequences={"chunked_above": 250, "chunk_size": 16, "max_tokens_per_batch": 600}))
    atlas = tmp_path / "atlas"
    summary = run([fasta], atlas, cfg, progress=False)

    assert summary.oom_rerouted == 3
    assert summary.oom_routes == {"chunked": 1, "fragments": 1, "failed": 1} and summary.oom_fragments == 2
    assert summary.failed_by_reason == {"oom": 1} and summary.units_published == summary.units_planned
    entries = _entries(atlas)
    acc = {r.length: r.accession for r in RECORDS}
    assert entries[f"FA-{acc[243]}-F1"][1:4] == ("predicted", None, "oom_chunked")
    assert entries[f"FA-{acc[162]}-F1"][1:4] == ("failed", "oom", "oom_chunked")
    assert entries[f"FA-{acc[214]}-F1"][1:4] == ("predicted", None, "normal")
    # the long sequence ran out of memory in the chunked pool (where its length put it): fragments,
    # windows and step from the fragment policy, as ingest makes them
    assert {k: v for k, v in entries.items() if v[0] == acc[255]} == {
        f"FA-{acc[255]}-F1": (acc[255], "predicted", None, "oom_fragment", long_oom.sha256, 1, 200),
        f"FA-{acc[255]}-F2": (acc[255], "predicted", None, "oom_fragment", long_oom.sha256, 56, 255)}
    assert sorted(k for k, v in entries.items() if v[0] == acc[333]) == [f"FA-{acc[333]}-F{i}" for i in (1, 2, 3)]
    assert len(entries) == 8  # every record in exactly one state
    failures = duckdb.connect().execute(
        f"SELECT sequence_sha256, reason, fold_route, message FROM read_parquet('{atlas}/failures/*.parquet')").fetchall()
    assert [f[:3] for f in failures] == [(short_oom.sha256, "oom", "oom_chunked")]
    assert "normal pool and then in the chunked long pool" in failures[0][3]
    assert "162 is not above ingest.fragment_window 200" in failures[0][3]
    saved = json.loads((atlas / "_runs" / summary.run_id / "summary.json").read_text())
    assert saved["oom_routes"] == summary.oom_routes
    # progress: the later passes grew what each stage had to do, so every bar ends full, not past it.
    # 7 planned (4 + 3 ingest fragments); 3 handed back; fold: 7 + 2 chunked + 2 fragments; publish:
    # 4 + 1 (chunked) + 2 (fragments of one sequence) + 1 (the oom failure row)
    assert {s: (st["sequences"], st["planned"]) for s, st in summary.stages.items()} == {
        "fold": (11, 11), "write": (11, 11), "publish": (8, 8)}
    last = summary.timeline[-1]
    assert last["done"] == {"fold": 11, "write": 11, "publish": 8} and set(last["queue"].values()) == {0}

    # the driver died after publishing the first fragment of the long sequence, before the second
    # (simulated by removing the second's unit); without the fault the rerun must still fold only
    # that fragment, not the whole sequence
    monkeypatch.delenv(OOM_ENV)
    frag2 = next(f for f in oom_fragments(long_oom, cfg.ingest) if f.fragment == 2)
    assert _drop_units_of(atlas, {frag2.sha256}) == 1
    again = run([fasta], atlas, cfg, progress=False)
    assert again.sequences_planned == 1 and again.predicted == 1 and again.oom_rerouted == 0
    assert _entries(atlas) == entries

    # the driver died after the first pass, before any fragment was published: the whole sequence is
    # planned again and, running out of memory again, split again
    monkeypatch.setenv(OOM_ENV, long_oom.sha256)
    frag1 = next(f for f in oom_fragments(long_oom, cfg.ingest) if f.fragment == 1)
    assert _drop_units_of(atlas, {frag1.sha256, frag2.sha256}) == 2
    third = run([fasta], atlas, cfg, progress=False)
    assert third.sequences_planned == 1 and third.oom_routes == {"fragments": 1} and third.predicted == 2
    assert _entries(atlas) == entries
    final = run([fasta], atlas, cfg, progress=False)
    assert final.sequences_planned == 0 and final.entries_written == 0


@pytest.mark.slow
def test_oom_without_a_long_pool_or_fragments_is_a_failure_row(tmp_path: Path, ray_session, monkeypatch):
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(">" + r for r in SAMPLE.read_text().split(">")[1:3]))  # 255, 243 aa
    poisoned = _by_length(243)
    monkeypatch.setenv(OOM_ENV, f"{poisoned.sha256}:32")  # a chunked pool would have saved it
    atlas = tmp_path / "atlas"
    summary = run([fasta], atlas, load_config(tiny_config(tmp_path, 8000)), progress=False)
    assert summary.oom_rerouted == 0 and summary.failed_by_reason == {"oom": 1} and summary.predicted == 1
    entries = _entries(atlas)
    assert entries[f"FA-{poisoned.accession}-F1"][1:4] == ("failed", "oom", "normal")
