"""The MSA search benchmark's --smoke mode runs end to end and writes a complete, sane JSON.

Only test data are read (tests/data/msa); needs ``mmseqs`` and ``jackhmmer`` on PATH.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mmseqs") is None or shutil.which("jackhmmer") is None,
                       reason="needs mmseqs (MMseqs2) and jackhmmer (HMMER) on PATH"),
]


def test_msa_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks import msa_search

    work = tmp_path / "work"
    out = tmp_path / "smoke.json"
    try:
        msa_search.main(["--smoke", "--workdir", str(work), "--out", str(out)])
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the precomputed index alone is ~0.9 GB
    res = json.loads(out.read_text())

    assert res["complete"] is True
    assert res["settings"]["mode"] == "smoke"
    for key in ("machine", "settings", "queries", "database", "params", "timings", "ratios", "targets",
                "agreement", "loadavg"):
        assert key in res, key
    assert "/work/shared" not in json.dumps(res["settings"])
    assert res["machine"]["nproc"] >= 1 and res["machine"]["mmseqs"] and res["machine"]["hmmer"]

    db = res["database"]
    assert db["sequences"] == 2000 and db["residues"] > 2000 * 10 and db["parents"] == 1000
    assert len(db["fasta_sha256"]) == 64 and db["indexed"] is True

    q = res["queries"]
    assert q["count"] == 5 and len(q["accessions"]) == 5 and len(q["jackhmmer_subset"]) == 2
    assert set(q["jackhmmer_subset"]) <= set(q["accessions"])

    t = res["timings"]
    a, b, c = t["a_stage"], t["b_floor"], t["c_jackhmmer"]
    assert len(a["runs"]) == 1 and len(b["runs"]) == 2  # b a b
    assert a["units"] >= 2 and len(a["per_unit_first_run"]) == a["units"]
    assert sum(u["queries"] for u in a["per_unit_first_run"]) == 5
    run = a["runs"][0]
    assert run["total"]["wall_s"] > 0 and run["per_unit_sum_wall_s"] <= run["total"]["wall_s"] + 1e-6
    assert {"mmseqs createdb", "mmseqs search", "mmseqs result2msa"} <= set(run["steps_s"])
    assert any(" search " in cmd and "--num-iterations 3" in cmd for cmd in a["commands_first_unit"])
    assert a["depth"]["queries_with_hits"] >= 1 and a["neff"]["max"] >= 1
    assert b["wall_s_mean"] > 0
    assert [cmd.split()[1] for cmd in b["runs"][0]["commands"]] == ["createdb", "search", "result2msa"]
    assert c["queries"] == 2 and len(c["per_query"]) == 2 and c["wall_per_query_s"]["mean"] > 0
    assert "--F1 0.0005 --F2 0.00005 --F3 0.0000005 --incE 0.0001 -E 0.0001" in c["command_first_query"]
    assert c["scaled_to_all_queries_wall_s"] == pytest.approx(c["wall_per_query_s"]["mean"] * 5, rel=0.01)
    assert t["c_jackhmmer_other_queries"]["queries"] == 3
    assert t["c_jackhmmer_all_queries_measured_wall_s"] > 0
    modules = t["b_diagnostic_v3"]["search_modules_s"]
    assert "iteration 1 prefilter" in modules and "iteration 3 align" in modules
    assert t["hit_sets_identical_across_repeats"] is True
    lf = t["b_floor_longest_first"]  # (b'): the floor with the stage's query order, same hits
    assert len(lf["runs"]) == 1 and lf["hits_equal_b"] is True

    r = res["ratios"]
    for key in ("a_over_b_wall", "a_over_b_cpu", "c_over_a_wall", "c_over_a_cpu", "a_over_b_longest_first_wall"):
        assert r[key] > 0, key
    assert isinstance(res["targets"]["a_over_b_met"], bool) and isinstance(res["targets"]["c_over_a_met"], bool)

    # The smoke queries come from the database's parents: both tools find their mutated copies.
    ac = res["agreement"]["a_vs_c_jackhmmer_subset"]
    assert ac["queries"] == 2 and ac["hits"]["c"] > 0 and ac["hits"]["a"] > 0
    assert 0 < ac["recall_of_c_by_a"] <= 1 and 0 < ac["jaccard"] <= 1
    assert len(ac["per_query"]) == 2
    full = res["agreement"]["a_vs_c_all_queries"]
    assert full["queries"] == 5 and full["hits"]["shared"] >= ac["hits"]["shared"]
    fam = res["agreement"]["families_c_vs_a"]
    assert fam["members_of_c_families"] >= fam["found_by_c"] > 0 and fam["found_by_a"] > 0
    ab = res["agreement"]["a_vs_b_all_queries"]
    assert ab["queries"] == 5 and ab["hits"]["a"] > 0
    # The stage and the hand run are the same search: same hits.
    assert ab["recall_of_b_by_a"] == 1.0 and ab["recall_of_a_by_b"] == 1.0


def test_msa_benchmark_smoke_clustered(tmp_path: Path) -> None:
    """``--cluster-min-seq-id``: (a) and (b) search the clustered database the same way (same hits),
    and ``--also-unclustered`` times the stage on all sequences once, in the same run."""
    from benchmarks import msa_search

    work = tmp_path / "work"
    out = tmp_path / "smoke.json"
    try:
        msa_search.main(["--smoke", "--workdir", str(work), "--out", str(out), "--cluster-min-seq-id", "0.3",
                         "--also-unclustered", "--no-index", "--no-jackhmmer-all"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = json.loads(out.read_text())
    assert res["complete"] is True
    clu = res["database"]["clustering"]
    assert clu["method"] == "cluster" and clu["min_seq_id"] == 0.3 and 0 < clu["clusters"] < 2000
    b_cmds = [cmd.split()[1] for cmd in res["timings"]["b_floor"]["runs"][0]["commands"]]
    assert b_cmds == ["createdb", "search", "expandaln", "align", "result2msa"]
    assert {"mmseqs expandaln", "mmseqs align"} <= set(res["timings"]["a_stage"]["runs"][0]["steps_s"])
    ab = res["agreement"]["a_vs_b_all_queries"]
    assert ab["hits"]["a"] > 0 and ab["recall_of_b_by_a"] == 1.0 and ab["recall_of_a_by_b"] == 1.0
    flat = res["timings"]["a_stage_unclustered"]
    assert flat["total"]["wall_s"] > 0 and flat["database"]["db_id"] != res["database"]["db_id"]
    assert res["ratios"]["a_unclustered_over_a_wall"] > 0
    both = res["agreement"]["a_unclustered_vs_a"]
    assert both["hits"]["a_unclustered"] > 0 and both["hits"]["shared"] > 0
