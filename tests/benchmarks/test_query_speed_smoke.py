"""The query benchmark's --smoke mode generates a tiny synthetic atlas and writes a complete JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from storage.schema import ENTRIES_SCHEMA, STRUCTURES_SCHEMA


def test_query_speed_smoke(tmp_path: Path) -> None:
    from benchmarks import query_speed

    data, out = tmp_path / "data", tmp_path / "smoke.json"
    query_speed.main(["--smoke", "--data", str(data), "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["complete"] is True and res["settings"]["mode"] == "smoke"

    gen = res["data"]
    assert gen["entries"] == 4000 and gen["layout_files"] == {"entries": 3, "structures": 3}
    assert gen["naive_files_per_table"] == 10 and gen["real_tar_shards"] >= 1
    # both layouts hold the schema's columns; the chosen one is sorted by key
    entries = sorted((data / "layout" / "entries").glob("c-*.parquet"))
    assert pq.read_schema(entries[0]).names == ENTRIES_SCHEMA.names
    acc = [a for f in entries for a in pq.read_table(f, columns=["accession"])["accession"].to_pylist()]
    assert acc == sorted(acc) and len(acc) == 4000 and acc[0].startswith("A0A") and len(acc[0]) == 10
    structures = sorted((data / "layout" / "structures").glob("c-*.parquet"))
    assert pq.read_schema(structures[0]).names == STRUCTURES_SCHEMA.names

    for layout in ("layout", "naive", "naive_half"):
        r = res[layout]
        assert r["lookup_accession"]["rows_found"] == r["lookup_accession"]["n"], layout
        assert r["lookup_structure_sha"]["rows_found"] == r["lookup_structure_sha"]["n"], layout
        assert r["get_warm"]["mmcif_bytes_median"] > 10_000 and r["aggregate_histogram"]["groups"] > 10
    for layout in ("layout", "naive"):  # the fast path finds what the SQL finds
        r = res[layout]
        for q in ("lookup_accession", "lookup_structure_sha", "lookup_entries_sha", "lookup_projected"):
            assert r[f"fast_{q}"]["rows_found"] == r[q]["rows_found"] == r[q]["n"], (layout, q)
        assert r["get"]["mmcif_bytes_median"] == r["get_fetch_entry_old"]["mmcif_bytes_median"] > 10_000
        assert r["ratios_old_over_new"]["get"] > 0
    assert res["layout"]["rows"] == {"entries": 4000, "structures": 4000}
    assert res["layout"]["get"]["n"] == 8
    assert res["naive_half"]["files"]["entries"] < res["naive"]["files"]["entries"]
    assert res["naive_extrapolated_to_full_size"]["files_per_table"] == 40
    comp = res["compaction_of_naive"]
    assert {t["table"] for t in comp["tables"]} == {"entries", "structures"}
    assert comp["after"]["rows"] == res["naive"]["rows"]
    assert comp["after"]["lookup_accession"]["rows_found"] == comp["after"]["lookup_accession"]["n"]
    assert comp["after"]["fast_lookup_accession"]["rows_found"] == comp["after"]["lookup_accession"]["n"]
    assert set(res["targets"]) == {"fast_lookup_accession", "fast_lookup_structure_sha", "get", "aggregate_histogram"}
    assert res["cold_get"]["get_cold_new"]["n"] == 1 and res["cold_get"]["ratio_old_over_new"] > 0
    for table in ("entries", "structures"):
        sizes = res["row_groups"][table]["sizes"]
        assert set(sizes) == {"256", "1024"} and sizes["256"]["row_groups"] == 6
        for n in sizes.values():
            assert n["fast_lookup"]["rows_found"] == n["duckdb_lookup_metadata_cache"]["rows_found"] == 8
