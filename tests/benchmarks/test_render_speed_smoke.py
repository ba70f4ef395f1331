"""The rendering benchmark's --smoke mode runs on real AFDB entries and writes a sane JSON."""

from __future__ import annotations

import json
from pathlib import Path


def test_render_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks import render_speed

    out = tmp_path / "smoke.json"
    assert render_speed.main(["--smoke", "--out", str(out)]) == 0  # also checks fast == gemmi-only text
    res = json.loads(out.read_text())
    assert sorted(e["accession"] for e in res["entries"]) == ["O05023", "P00221"]
    for e in res["entries"]:
        assert e["atoms"] > e["residues"] > 100 and e["mmcif_bytes"] > 50 * e["atoms"]
        assert all(e[k] > 0 for k in ("decode_ms", "render_ms", "get_ms", "render_gemmi_ms"))
