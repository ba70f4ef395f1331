"""Write stage without Ray: one entry row per record, failure rows, shards readable, provenance."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from model.base import PredictionFailure
from pipeline.confidence import ConfidencePolicy
from pipeline.config import PlanConfig
from pipeline.plan import cut_units
from pipeline.write import WriteContext, write_unit
from storage.afdb_json import read_pae_json
from storage.mmcif_shard import read_shard_range
from storage.structure_record import read_record
from tests.pipeline.test_plan import rec


@pytest.fixture
def unit_and_outcomes(tiny_backend):
    records = [rec("P1", "MKTAYIAKQRQISFVKSHFSRQ", 0), rec("P1COPY", "MKTAYIAKQRQISFVKSHFSRQ", 1),
               rec("P2", "MAATTTTMMGMATTFVPKPQAPPGG", 2), rec("BAD", "GSHMSLFDFFKNKGSAATATDRL", 3)]
    by_sha: dict = {}
    for r in records:
        by_sha.setdefault(r.sha256, []).append(r)
    (unit,) = cut_units(by_sha, "esmfold-tiny", PlanConfig())
    outcomes = []
    for seq in unit.sequences:
        if seq.startswith("GSHM"):
            outcomes.append(PredictionFailure(seq, "oom", "CUDA out of memory", 1))
        else:
            outcomes.append(tiny_backend.predict([seq])[0])
    return unit, outcomes


def test_write_unit_rows_and_shards(tmp_path, tiny_backend, unit_and_outcomes):
    unit, outcomes = unit_and_outcomes
    ctx = WriteContext(staging=str(tmp_path), atlas=str(tmp_path), run_id="r1", policy=ConfidencePolicy(),
                       provenance={"run_id": "r1", "git_commit": "abc"})
    m = write_unit(unit, outcomes, tiny_backend.info, {}, ctx)
    assert m.counts == {"structures": 2, "failures": 1, "entries": 4, "published_structures": 2, "msas": 0}
    assert m.failure_reasons == {"oom": 1} and m.tiers == {"low": 2}
    entries = pq.read_table(m.staged["entries"]).to_pylist()
    status = {e["accession"]: (e["status"], e["failure_reason"]) for e in entries}
    assert status == {"P1": ("predicted", None), "P1COPY": ("predicted", None), "P2": ("predicted", None),
                      "BAD": ("failed", "oom")}
    failures = pq.read_table(m.staged["failures"]).to_pylist()
    assert failures[0]["accessions"] == ["BAD"] and failures[0]["message"] == "CUDA out of memory"
    structures = pq.read_table(m.staged["structures"])
    meta = json.loads(structures.schema.metadata[b"foldatlas.provenance"])
    assert meta["git_commit"] == "abc" and meta["unit_id"] == unit.unit_id
    shard = m.staged["mmcif"]
    for s in structures.to_pylist():
        assert s["model_trained"] is False and s["representative_accession"] in ("P1", "P2")
        assert s["mmcif_member"].endswith(".fac") and s["pae_member"] == s["mmcif_member"]
        record = read_record(read_shard_range(shard, s["mmcif_offset"], s["mmcif_size"]))
        cif = record.render_mmcif()
        assert cif.startswith(f"data_FA-{s['representative_accession']}-F1")
        pae = read_pae_json(record.render_pae_json())
        assert pae.pae.shape == (s["sequence_length"], s["sequence_length"])


def test_publish_policy_keeps_rows_but_not_mmcif(tmp_path, tiny_backend, unit_and_outcomes):
    unit, outcomes = unit_and_outcomes
    policy = ConfidencePolicy(publish_tiers=["high"])  # a random model never reaches "high"
    ctx = WriteContext(staging=str(tmp_path), atlas=str(tmp_path), run_id="r1", policy=policy, provenance={})
    m = write_unit(unit, outcomes, tiny_backend.info, {}, ctx)
    assert m.counts["structures"] == 2 and m.counts["published_structures"] == 0 and "mmcif" not in m.staged
    rows = pq.read_table(m.staged["structures"]).to_pylist()
    assert all(r["published"] is False and r["mmcif_shard"] is None and r["ptm"] is not None for r in rows)


def test_outcome_count_mismatch_is_an_error(tmp_path, tiny_backend, unit_and_outcomes):
    unit, outcomes = unit_and_outcomes
    ctx = WriteContext(staging=str(tmp_path), atlas=str(tmp_path), run_id="r1", policy=ConfidencePolicy(), provenance={})
    with pytest.raises(ValueError, match="outcomes for"):
        write_unit(unit, outcomes[:-1], tiny_backend.info, {}, ctx)
