"""The planning benchmark's --smoke mode (20,000 records) runs end to end and writes a sane JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_plan_scale_smoke(tmp_path: Path) -> None:
    from benchmarks import plan_scale

    out = tmp_path / "smoke.json"
    entry = plan_scale.main(["--smoke", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text())["runs"]["20000"]["n"] == 20_000
    gen, m = entry["generated"], entry["measured"]
    c = m["counts"]
    assert c["read"] == gen["records"] == 20_000
    assert c["accepted"] + sum(c["rejected_by_reason"].values()) == c["read"]
    assert c["rejected_by_reason"]["nonstandard_residue"] >= gen["with_x"]  # duplicates copy some
    # half of the records have their entry (those rejected at ingest do not count: the length pool,
    # from ../shared when present, else tests/data, sets how many); duplicates of those link; the
    # rest is predicted
    expected = gen["in_atlas"] * c["accepted"] / c["read"]
    assert abs(c["already_in_atlas"] - expected) < 0.02 * gen["records"]
    assert 0 < c["linked"] < gen["duplicate_sequences"] and c["link_rows_written"] == c["linked"]
    assert c["sequences_to_predict"] < c["accepted"] - c["already_in_atlas"] - c["linked"]  # duplicates fold once
    assert m["peak_rss_bytes"] > 0 and m["cpu_s"] > 0
    assert not (tmp_path / "work").exists()
