"""The streamed ingest and plan (pipeline/spill.py, pipeline/plan.py) decide what the in-memory logic decides.

The reference is the planner as it was before it streamed: ingest into lists (the line-by-line
duplicate tally), sets of the atlas's keys, a dict of records by sequence, ``cut_units``. The input
is the plan benchmark's generator (UniProt-style headers, real length distribution, 10 % duplicate
sequences, duplicate accessions, rejects, half of it already in the atlas).
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import pipeline.plan as plan_mod
from benchmarks.plan_scale import MODEL, generate
from pipeline.config import PlanConfig
from pipeline.ingest import IngestPolicy, ingest_many
from pipeline.plan import UNIT_GROUP_ROWS, atlas_state, cut_units, plan_run, reject_key
from pipeline.spill import ingest_to_parquet
from storage.atlas import Atlas


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("plan") / "bench"
    generate(work, 3_000, seed=5, dup_accession_fraction=0.01)
    return work


def reference(fasta: Path, atlas: Atlas, cfg: PlanConfig, policy: IngestPolicy) -> dict:
    result = ingest_many([str(fasta)], policy)
    entry_keys, predicted, reject_keys = atlas_state(atlas, MODEL)
    done = links = 0
    to_predict = defaultdict(list)
    for rec in result.accepted:
        if (rec.accession, rec.sha256) in entry_keys:
            done += 1
        elif rec.sha256 in predicted:
            links += 1
        else:
            to_predict[rec.sha256].append(rec)
    units = cut_units(to_predict, MODEL, cfg)
    return {"read": result.n_read, "rejected": result.reject_counts(), "done": done, "links": links,
            "new_rejects": sum(reject_key(r) not in reject_keys for r in result.rejected),
            "units": [(u.unit_id, u.sequences, [(r.accession, r.record_index, r.line, r.notes) for r in u.records])
                      for u in units]}


@pytest.mark.parametrize("policy", [IngestPolicy(), IngestPolicy(duplicate_accessions="keep")], ids=["reject", "keep"])
def test_streamed_plan_equals_the_in_memory_plan(generated: Path, tmp_path: Path, policy: IngestPolicy,
                                                monkeypatch) -> None:
    cfg = PlanConfig(unit_max_residues=4000, unit_max_sequences=10)
    atlas = Atlas(generated / "atlas")
    fasta = generated / "input.fasta"
    expected = reference(fasta, atlas, cfg, policy)
    # two processes over byte ranges of ~100 kB, so range bases and cross-range duplicates are exercised
    spill = ingest_to_parquet([str(fasta)], policy, tmp_path / "ingest", workers=2, split_bytes=1,
                              range_bytes=100_000, batch_rows=500)
    assert len(list((tmp_path / "ingest" / "accepted").glob("*.parquet"))) > 3
    assert spill.n_read == expected["read"] == 3_000
    assert spill.rejected_by_reason == expected["rejected"]
    if policy.duplicate_accessions == "reject":
        assert expected["rejected"]["duplicate_accession"] > 5
    monkeypatch.setattr(plan_mod, "PARALLEL_RECORDS", 1)  # payloads built by two worker processes
    plan = plan_run(spill, atlas, MODEL, cfg, tmp_path / "plan", batch_rows=300, workers=2)
    assert (plan.already_done, plan.linked, plan.new_rejects) == (expected["done"], expected["links"],
                                                                 expected["new_rejects"])
    assert expected["done"] > 1000 and expected["links"] > 50
    got = [(u.unit_id, u.sequences, [(r.accession, r.record_index, r.line, r.notes) for r in u.records])
           for u in plan.iter_units()]
    assert got == expected["units"]
    assert plan.units == len(got) and plan.sequences_to_predict == sum(len(u[1]) for u in got)


def test_plan_reads_and_writes_in_bounded_batches(generated: Path, tmp_path: Path, monkeypatch) -> None:
    """No step holds more than a batch of records: every conversion of Parquet rows to records is at
    most ``batch_rows`` plus one unit, every written row group at most ``batch_rows`` (units:
    UNIT_GROUP_ROWS) long."""
    seen: list[int] = []
    real = plan_mod.build_units

    def spy(table, *args):
        seen.append(table.num_rows)
        return real(table, *args)

    monkeypatch.setattr(plan_mod, "build_units", spy)
    spill = ingest_to_parquet([str(generated / "input.fasta")], IngestPolicy(), tmp_path / "ingest", workers=1,
                              batch_rows=400)
    for f in (tmp_path / "ingest" / "accepted").glob("*.parquet"):
        md = pq.ParquetFile(f).metadata
        assert max(md.row_group(i).num_rows for i in range(md.num_row_groups)) <= 400
    plan = plan_run(spill, Atlas(generated / "atlas"), MODEL, PlanConfig(), tmp_path / "plan", batch_rows=250,
                    workers=1)
    biggest = max(len(u.records) for u in plan.iter_units())  # a unit cut by a batch end joins the next batch
    assert seen and max(seen) <= 250 + biggest and sum(seen) >= plan.sequences_to_predict
    for f in plan.units_files.values():
        md = pq.ParquetFile(f).metadata
        assert max(md.row_group(i).num_rows for i in range(md.num_row_groups)) <= UNIT_GROUP_ROWS
    links = [len(records) for _, records, _, _ in plan.iter_entry_batches("link", batch_rows=100)]
    assert links and max(links) <= 100 and sum(links) == plan.linked
    # the driver's view of the units: ids and counts only; payloads load by id
    some = list(plan.unit_counts)[:3]
    loaded = plan.load_units(some)
    assert [u.unit_id for u in loaded] == sorted(some)
    assert all(plan.unit_counts[u.unit_id] == (len(u.sequences), u.residues) for u in loaded)
    assert pickle.loads(pickle.dumps(loaded[0])) == loaded[0]


def test_fragment_fields_survive_the_spill_and_the_units_file(tmp_path: Path):
    """Regression (merge of the streamed planner with OOM re-routing): ``whole_sha256`` and
    ``oom_split`` travel through the Parquet spill and the pickled units, so fragment entries keep
    ``fragment_of_sha256`` and ``fold_route = oom_fragment`` (what ``resume_fragmented`` reads)."""
    from pipeline.oom_route import oom_fragments
    from pipeline.plan import make_plan
    from tests.test_end_to_end import SAMPLE

    policy = IngestPolicy(max_length=10_000, fragment_above=300, fragment_window=200, fragment_step=100)
    whole = next(r for r in ingest_many([SAMPLE]).accepted if r.length > 200)
    frags = oom_fragments(whole, policy)
    assert len(frags) > 1
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    plan = make_plan(frags, [], atlas, MODEL, PlanConfig())
    got = {r.sha256: r for u in plan.units for r in pickle.loads(pickle.dumps(u)).records}
    assert got == {f.sha256: f for f in frags}
    assert all(r.whole_sha256 == whole.sha256 and r.oom_split for r in got.values())
    # ingest's own fragments carry their whole sequence's hash too
    fasta = tmp_path / "long.fasta"
    fasta.write_text(f">{whole.header}\n{whole.sequence}\n")
    spill = ingest_to_parquet([fasta], policy.model_copy(update={"fragment_above": 200}), tmp_path / "spill")
    sp = plan_run(spill, atlas, MODEL, PlanConfig(), tmp_path / "plan")
    recs = [r for u in sp.iter_units() for r in u.records]
    assert len(recs) > 1 and all(r.whole_sha256 == whole.sha256 and not r.oom_split for r in recs)


def test_unit_payloads_unpickle_into_the_units_of_their_records(tmp_path: Path) -> None:
    """``build_units`` pickles a unit as its rows (Arrow IPC): the payload unpickles into the
    WorkUnit built from AcceptedRecords (sequences in row order, MSA stats, fragment fields); a unit
    that straddles ``long_above`` is split by ``route_long`` as before."""
    import numpy as np
    import pyarrow as pa

    from pipeline.ingest import lite_from_record
    from pipeline.msa_stage import MSAStat
    from pipeline.plan import WorkUnit, build_units, route_long
    from pipeline.spill import accepted_batch

    recs = sorted((r for r in ingest_many([str(Path("tests/data/uniprot/sample.fasta"))]).accepted),
                  key=lambda r: (r.length, r.sha256))[:12]
    recs = [recs[0], recs[0], *recs[1:]]  # a sequence with two records (rows adjacent)
    rows = [(*lite_from_record(r), 0, "ab" * 32 if k == 3 else None, k == 3, -1, -1, 0) for k, r in enumerate(recs)]
    table = pa.Table.from_batches([accepted_batch(rows, recs[0].source)])
    keys = [f"k{k}" if k % 4 == 1 else None for k in range(len(recs))]
    table = (table.append_column("msa_key", pa.array(keys, pa.string()))
             .append_column("msa_depth", pa.array([7 if k else None for k in keys], pa.int64()))
             .append_column("msa_neff", pa.array([1.5 if k else None for k in keys], pa.float64()))
             .append_column("unit_no", pa.array(np.repeat([0, 1, 2], [3, 5, len(recs) - 8]))))
    ids = {0: "u0", 1: "u1", 2: "u2"}
    above = recs[5].length  # unit 1 straddles it
    assert recs[4].length <= above < recs[7].length
    got = [(kind, uid, pickle.loads(payload), n_seq, n_rec, res)
           for kind, uid, payload, n_seq, n_rec, res in build_units(table, ids, MODEL, above)]
    expected = []
    for no, (a, b) in enumerate([(0, 3), (3, 8), (8, len(recs))]):
        members = [r if k != 3 else r.__class__(**{**{f: getattr(r, f) for f in r.__dataclass_fields__},
                                                  "whole_sha256": "ab" * 32, "oom_split": True})
                   for k, r in enumerate(recs[a:b], a)]
        seqs = list(dict.fromkeys(r.sequence for r in members))
        cached = {r.sha256: MSAStat(keys[k], 7, 1.5) for k, r in enumerate(members, a) if keys[k]}
        unit = WorkUnit(ids[no], MODEL, tuple(seqs), tuple(members),
                        tuple((s, cached[s]) for s in dict.fromkeys(r.sha256 for r in members) if s in cached))
        for kind, part in zip(("normal", "long"), route_long([unit], above), strict=True):
            expected += [(kind, u.unit_id, u, len(u.sequences), len(u.records), u.residues) for u in part]
    assert got == expected
    assert [g[0] for g in got] == ["normal", "normal", "long", "long"]
