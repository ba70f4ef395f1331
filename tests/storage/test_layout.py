"""Write-side layout (sorted shards, bloom filters) and compaction into generations."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.make_synthetic_atlas import Universe, entries_chunk
from pipeline.errors import AtlasError
from storage.atlas import Atlas
from storage.layout import (
    LAYOUTS,
    RETIRED_MARKER,
    compact,
    drop_retired,
    table_glob,
    write_shard,
)


def _universe(n: int) -> Universe:
    return Universe(n, seed=3, length_pool=np.array([50, 120, 300, 800]), unit_size=50)


def _publish_units(atlas: Atlas, u: Universe, units: range) -> int:
    """Write and publish one entries shard per work unit (as the pipeline does); returns rows."""
    rows = 0
    for unit in units:
        idx = np.flatnonzero(u.unit == unit)
        table = entries_chunk(u, idx, np.random.default_rng(unit))
        staged = atlas.staging_dir("r") / "entries" / f"u{unit:05d}.parquet"
        write_shard("entries", table, staged, {"unit_id": f"u{unit}"})
        atlas.publish_file(staged, "entries", staged.name)
        rows += table.num_rows
    return rows


def _counts(glob: str) -> tuple[int, int]:
    con = duckdb.connect()
    try:
        n, distinct = con.execute(f"SELECT count(*), count(DISTINCT accession) FROM read_parquet('{glob}')").fetchone()
    finally:
        con.close()
    return int(n), int(distinct)


def test_shard_is_sorted_by_key_and_has_bloom_filters(tmp_path: Path) -> None:
    u = _universe(500)
    idx = np.random.default_rng(0).permutation(500)  # unsorted input
    path = tmp_path / "e.parquet"
    write_shard("entries", entries_chunk(u, idx, np.random.default_rng(1)), path, {"run_id": "r"})
    t = pq.read_table(path)
    acc = t["accession"].to_pylist()
    assert acc == sorted(acc) and len(acc) == 500
    assert b"foldatlas.provenance" in pq.read_schema(path).metadata
    con = duckdb.connect()
    sha = t["sequence_sha256"][7].as_py()
    probe = "SELECT bloom_filter_excludes FROM parquet_bloom_probe('{}', 'sequence_sha256', '{}')"
    assert con.execute(probe.format(path, sha)).fetchall() == [(False,)]
    assert con.execute(probe.format(path, "0" * 64)).fetchall() == [(True,)]
    # DuckDB skips the row group by the bloom filter (probe by a plain equality filter).
    meta = pq.ParquetFile(path).metadata
    col = meta.schema.names.index("sequence_sha256")
    assert meta.row_group(0).column(col).to_dict().get("bloom_filter_offset") is not None


def test_compaction_merges_sorts_and_switches_generation(tmp_path: Path) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    u = _universe(1100)
    rows = _publish_units(atlas, u, range(20))  # 1000 rows
    before = _counts(f"{atlas.root}/entries/*.parquet")
    assert before == (rows, rows)

    report = compact(atlas.root, tables=("entries",), target_rows=450, grace_s=3600)
    (res,) = report.tables
    assert (res.table, res.files_merged, res.rows_merged, res.generation) == ("entries", 20, rows, "g000001")
    link = atlas.root / "entries"
    assert link.is_symlink() and os.readlink(link) == "_tables/entries/g000001"
    retired = atlas.root / "_tables" / "entries" / "g000000"
    assert (retired / RETIRED_MARKER).exists() and len(list(retired.glob("u*.parquet"))) == 20
    files = sorted(link.glob("*.parquet"))
    assert [f.name for f in files] == ["c-000001-00000.parquet", "c-000001-00001.parquet",
                                       "c-000001-00002.parquet", "schema.parquet"]
    # one global sort: each file one key range, row groups of the layout's size
    prev = ""
    for f in files[:3]:
        acc = pq.read_table(f, columns=["accession"])["accession"].to_pylist()
        assert acc == sorted(acc) and acc[0] > prev
        prev = acc[-1]
    assert pq.read_schema(files[0]) == pq.read_schema(atlas.root / "entries" / "schema.parquet")
    # plain globs, recursive included, see every row once
    assert _counts(f"{atlas.root}/entries/*.parquet") == before
    assert _counts(f"{atlas.root}/entries/**/*.parquet") == before
    assert _counts(table_glob(atlas.root, "entries")) == before

    # new runs publish into the current generation through the symlink; the next compaction keeps
    # the large files (hard links) and merges only the small ones
    more = _publish_units(atlas, u, range(20, 22))
    report = compact(atlas.root, tables=("entries",), target_rows=450, grace_s=0)
    (res,) = report.tables
    assert res.files_merged == 3 and res.rows_merged == more + 100  # 2 shards + the 100-row tail file
    g2 = atlas.root / "_tables" / "entries" / "g000002"
    assert sorted(f.name for f in g2.glob("*.parquet")) == [  # the large files kept (hard links), tail merged
        "c-000001-00000.parquet", "c-000001-00001.parquet", "c-000002-00000.parquet", "schema.parquet"]
    assert _counts(f"{atlas.root}/entries/*.parquet") == (rows + more, rows + more)
    # grace 0: the retired generations are gone, the current one stays
    assert not retired.exists() and not (atlas.root / "_tables/entries/g000001").exists() and g2.is_dir()
    assert compact(atlas.root, tables=("entries",), target_rows=450).tables == ()  # nothing small left


def test_compaction_never_shows_a_reader_duplicates_or_missing_rows(tmp_path: Path) -> None:
    """Readers glob while compactions switch generations: every answer is a complete snapshot."""
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    u = _universe(2400)
    valid = {_publish_units(atlas, u, range(0, 8))}
    # the table becomes a generation symlink at its first compaction; a reader that resolved the
    # plain directory before that switch is not protected (see storage.layout.table_glob)
    compact(atlas.root, tables=("entries",), target_rows=500, grace_s=3600)
    plain = f"{atlas.root}/entries/*.parquet"
    stop = threading.Event()
    seen: dict[str, list[tuple[int, int]]] = {"plain": [], "resolved": []}
    errors: dict[str, list[str]] = {"plain": [], "resolved": []}

    def reader(kind: str) -> None:
        while not stop.is_set():
            glob = plain if kind == "plain" else table_glob(atlas.root, "entries")
            try:
                seen[kind].append(_counts(glob))
            except duckdb.Error as e:
                errors[kind].append(str(e))

    threads = [threading.Thread(target=reader, args=(k,)) for k in ("plain", "resolved")]
    for t in threads:
        t.start()
    total = next(iter(valid))
    try:
        for step in range(4):
            with atlas.locked():
                for unit in range(8 + step * 8, 16 + step * 8):  # every published unit is a state
                    total += _publish_units(atlas, u, range(unit, unit + 1))
                    valid.add(total)
            compact(atlas.root, tables=("entries",), target_rows=500, grace_s=3600)
    finally:
        stop.set()
        for t in threads:
            t.join()
    for kind in ("plain", "resolved"):
        assert seen[kind], kind
        for n, distinct in seen[kind]:
            assert n == distinct, f"{kind} reader saw duplicate rows"
            assert n in valid, f"{kind} reader saw {n} rows, not a published state {sorted(valid)}"
    # a plain glob may fail (file merged away between listing and opening), never answer wrongly
    assert all("No such file" in e or "not found" in e.lower() or "No files" in e for e in errors["plain"])
    assert errors["resolved"] == []
    assert _counts(plain) == (total, total)


def test_drop_retired_keeps_current_and_young(tmp_path: Path) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    _publish_units(atlas, _universe(300), range(6))
    compact(atlas.root, tables=("entries",), target_rows=100, grace_s=3600)
    assert drop_retired(atlas.root, "entries", 3600) == []
    assert [p.name for p in drop_retired(atlas.root, "entries", 0)] == ["g000000"]


def test_compaction_needs_the_writer_lock(tmp_path: Path) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    with atlas.locked(), pytest.raises(AtlasError, match="Another run"):
        compact(atlas.root)


def test_every_table_has_a_layout() -> None:
    from storage.schema import TABLES

    assert set(LAYOUTS) == set(TABLES)
    for name, lay in LAYOUTS.items():
        assert set(lay.sort_by) <= set(TABLES[name].names) and set(lay.bloom) <= set(TABLES[name].names)


def test_key_lookup_finds_each_key_column_and_filters_model() -> None:
    from storage.layout import key_lookup_sql

    con = duckdb.connect()
    con.execute("CREATE TABLE e AS SELECT * FROM (VALUES ('P1', 'FA-P1-F1', 'aa', 'esmfold'), "
                "('P2', 'FA-P2-F1', 'bb', 'esmfold'), ('P2', 'FA-P2-F1', 'bb', 'other')) "
                "t(accession, entryId, sequence_sha256, model)")
    sql = key_lookup_sql("e", ("accession", "entryId", "sequence_sha256"))
    for key, want in (("P1", 1), ("FA-P2-F1", 2), ("bb", 2), ("zz", 0)):
        assert len(con.execute(sql, {"key": key}).fetchall()) == want, key
    sql = key_lookup_sql("e", ("accession", "entryId", "sequence_sha256"), model=True)
    assert con.execute(sql, {"key": "P2", "model": "other"}).fetchall() == [("P2", "FA-P2-F1", "bb", "other")]


def test_generation_of_a_compaction_that_died_before_its_switch_is_dropped(tmp_path: Path) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    u = _universe(300)
    _publish_units(atlas, u, range(3))
    compact(atlas.root, tables=("entries",), target_rows=100, grace_s=3600)
    orphan = atlas.root / "_tables" / "entries" / "g000002"
    orphan.mkdir()  # built, never switched to
    (orphan / "c-000002-00000.parquet").write_bytes(b"partial")
    _publish_units(atlas, u, range(3, 6))
    report = compact(atlas.root, tables=("entries",), target_rows=100, grace_s=3600)
    assert report.tables[0].generation == "g000002"  # the orphan was removed, its number reused
    assert os.readlink(atlas.root / "entries") == "_tables/entries/g000002"
    assert pq.read_metadata(orphan / "c-000002-00000.parquet").num_rows == 100
    assert _counts(f"{atlas.root}/entries/*.parquet") == (300, 300)


def test_fetch_entry_on_a_compacted_atlas_by_every_key(tmp_path: Path) -> None:
    import json

    from benchmarks.make_synthetic_atlas import generate
    from storage.entry import fetch_entry

    generate(tmp_path / "d", entries=400, naive_entries=200, unit_size=20, target_rows=150, sample=3)
    root = tmp_path / "d" / "naive"
    compact(root, target_rows=150, grace_s=0)
    assert (root / "entries").is_symlink() and (root / "structures").is_symlink()
    keys = json.loads((tmp_path / "d" / "keys.json").read_text())
    acc, sha = keys["accessions"][0], keys["sequence_sha256"][0]
    for key in (acc, f"FA-{acc}-F1", sha):
        found = fetch_entry(root, key)
        assert found.entry["accession"] == acc and found.structure["sequence_sha256"] == sha
    assert "data_" in fetch_entry(root, acc).mmcif()[:200]


def test_table_glob_of_an_s3_atlas_is_the_plain_glob() -> None:
    assert table_glob("s3://bucket/atlas/", "entries") == "s3://bucket/atlas/entries/*.parquet"
