"""The storage benchmark's --smoke mode runs end to end on real AFDB entries and writes a sane JSON."""

from __future__ import annotations

import json
from pathlib import Path


def test_storage_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks import storage_size

    out = tmp_path / "smoke.json"
    assert storage_size.main(["--smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] is True and res["settings"]["mode"] == "smoke"
    assert sorted(e["accession"] for e in res["entries"]) == ["O05023", "P00221"]
    for e in res["entries"]:
        assert e["record_bytes"] == sum(e["record_parts"].values())
        assert e["total_bytes"] > e["record_bytes"] > 0 and e["parquet_bytes"] > 0
        assert 0 < e["total_vs_afdb"] < 1  # smaller than AFDB's gzipped files, whatever the target
        # inside a compacted file a row costs something, and less than in a five-row file
        assert 0 < e["parquet_bytes_at_scale"] < e["parquet_bytes"]
        assert e["total_bytes_at_scale"] == e["record_bytes"] + e["tar_overhead_bytes"] + e["parquet_bytes_at_scale"]
        assert 10 < e["coord_plddt_bytes_per_residue"] < 100 and 0 < e["pae_bytes_per_residue2"] < 1
        # the stored coordinate coding beats the alternatives it was chosen over
        coords = e["options"]["coordinates_bytes_per_residue"]
        stored = next(v for k, v in coords.items() if "stored" in k)
        assert stored < min(v for k, v in coords.items() if "stored" not in k)
        pae = e["options"]["pae_bytes_per_residue2"]
        assert next(v for k, v in pae.items() if "stored" in k) < pae["raw"]
        assert coords["delta_bonded_reference"] < min(coords["absolute"], coords["delta_file_order"])
    assert set(res["targets"]) == {"coord_plddt_bytes_per_residue", "pae_bytes_per_residue2", "total_vs_afdb"}
