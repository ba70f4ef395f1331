"""storage.lookup: cached point lookups must return exactly the rows DuckDB's glob query returns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks.make_synthetic_atlas import Universe, entries_chunk
from storage import lookup as lk
from storage.atlas import Atlas, write_parquet
from storage.entry import find_entries
from storage.layout import LAYOUTS, TableLayout, compact, table_dir, write_shard, write_sorted_files


@pytest.fixture(autouse=True)
def _small_row_groups(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Row groups of 16 entries, so a few hundred rows give many file and row-group boundaries."""
    lay = LAYOUTS["entries"]
    monkeypatch.setitem(LAYOUTS, "entries", TableLayout(lay.sort_by, lay.bloom, 16))
    lk.clear_caches()
    yield
    lk.clear_caches()


def _universe(n: int) -> Universe:
    return Universe(n, seed=11, length_pool=np.array([30, 80, 200]), unit_size=40)


def _entries(u: Universe, idx: np.ndarray, seed: int = 0) -> pa.Table:
    return entries_chunk(u, idx, np.random.default_rng(seed))


_CON: list[Any] = []


def _truth(root: Path, column: str, value: Any, model: str | None = None) -> list[dict[str, Any]]:
    """What DuckDB's plain glob query returns (the semantics the fast path must keep)."""
    if not _CON:
        _CON.append(duckdb.connect())
    glob = f"{table_dir(root, 'entries')}/*.parquet"
    where = f'"{column}" = $v' + (" AND model = $m" if model else "")
    got = _CON[0].sql(f"SELECT * FROM read_parquet('{glob}', union_by_name = true) WHERE {where}",
                      params={"v": value, **({"m": model} if model else {})}).to_arrow_table()
    return _rows(lk.conform("entries", got))


def _rows(t: pa.Table) -> list[dict[str, Any]]:
    return sorted(t.to_pylist(), key=repr)


def _compacted_atlas(tmp_path: Path, n: int, target_rows: int) -> tuple[Path, pa.Table]:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    u = _universe(n)
    rows = _entries(u, np.arange(n))
    sorted_rows = rows.sort_by([("accession", "ascending"), ("model", "ascending")])
    out = atlas.root / "_tables" / "entries" / "g000001"
    out.mkdir(parents=True)
    os.link(atlas.root / "entries" / "schema.parquet", out / "schema.parquet")
    write_sorted_files("entries", iter(sorted_rows.to_batches(max_chunksize=50)), out, "c-000001-", target_rows)
    from storage.layout import switch_generation

    switch_generation(atlas.root, "entries", out)
    return atlas.root, sorted_rows


def test_xxh64_and_bloom_probe_agree_with_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lk.xxh64(b"") == 0xEF46DB3751D8E999 and lk.xxh64(b"abc") == 0x44BC2CF5AD770999
    lay = LAYOUTS["entries"]
    monkeypatch.setitem(LAYOUTS, "entries", TableLayout(lay.sort_by, lay.bloom, 1000))  # filters of many blocks
    u = _universe(2000)
    path = tmp_path / "e.parquet"
    write_shard("entries", _entries(u, np.arange(2000)), path)
    meta = lk.FileMeta(str(path), pq.read_metadata(path))
    index = lk.TableIndex("entries", str(tmp_path), (0, 0), (meta,))
    con = duckdb.connect()
    probe = "SELECT row_group_id, bloom_filter_excludes FROM parquet_bloom_probe(?, ?, ?)"
    shas = pq.read_table(path, columns=["sequence_sha256"])["sequence_sha256"].to_pylist()
    absent = [f"{i:064x}" for i in range(0, 2**256, 2**248)] + ["A0A", "", "zzz"]
    for column, values in (("sequence_sha256", shas[::37] + absent), ("entryId", ["FA-x", "FA-A0A0"])):
        for v in values:
            ours = {g for _, g in index.candidates(column, v) or []}
            excluded = dict(con.execute(probe, [str(path), column, v]).fetchall())
            stats = {g for g, r in enumerate(meta.ranges(column)) if r is not None and r[0] <= v <= r[1]}
            assert ours == {g for g in stats if not excluded[g]}, (column, v)
    con.close()


def test_every_key_at_file_and_row_group_boundaries_matches_duckdb(tmp_path: Path) -> None:
    root, rows = _compacted_atlas(tmp_path, 230, target_rows=70)  # 4 files, row groups of 16 (last ones short)
    files = sorted((root / "entries").glob("c-*.parquet"))
    assert len(files) == 4 and pq.read_metadata(files[0]).num_row_groups == 5
    accessions = rows["accession"].to_pylist()
    everything = _truth(root, "model", "esmfold")  # all rows, as DuckDB reads them
    assert len(everything) == 230
    for acc in accessions:  # every key: first/last of every row group and every file included
        got = lk.lookup(root, "entries", "accession", acc)
        assert got.num_rows == 1 and _rows(got) == [r for r in everything if r["accession"] == acc], acc
    for i in range(0, 230, 23):
        for column in ("entryId", "sequence_sha256"):
            v = rows[column][i].as_py()
            assert _rows(lk.lookup(root, "entries", column, v)) == _truth(root, column, v) != []
    # missing keys: before the first, after the last, between neighbours (inside a row group's range),
    # in the gap between two files' ranges
    last_of_file0 = pq.read_table(files[0], columns=["accession"])["accession"][-1].as_py()
    for missing in ("", "0", "~", accessions[5] + "0", accessions[16] + "!", last_of_file0 + "Z"):
        assert missing not in accessions
        assert lk.lookup(root, "entries", "accession", missing).num_rows == 0
    assert lk.lookup(root, "entries", "sequence_sha256", "f" * 64).num_rows == 0
    assert lk.lookup(root, "entries", "entryId", "nope").num_rows == 0
    # model filter and column selection
    acc = accessions[100]
    assert lk.lookup(root, "entries", "accession", acc, model="esmfold").num_rows == 1
    assert lk.lookup(root, "entries", "accession", acc, model="other").num_rows == 0
    sel = lk.lookup(root, "entries", "accession", acc, columns=["taxId", "accession"])
    assert sel.column_names == ["taxId", "accession"] and sel["accession"][0].as_py() == acc


def test_compaction_switch_and_new_shards_invalidate_the_cache(tmp_path: Path) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    u = _universe(400)
    by_unit = [np.flatnonzero(u.unit == k) for k in range(10)]

    def publish(unit: int) -> None:
        staged = atlas.staging_dir("r") / "entries" / f"u{unit:03d}.parquet"
        write_shard("entries", _entries(u, by_unit[unit], unit), staged)
        atlas.publish_file(staged, "entries", staged.name)

    def check(units: range) -> None:
        for k in units:
            for e in by_unit[k][::13]:
                acc = u.accessions(np.array([e]))[0].as_py()
                got = lk.lookup(atlas.root, "entries", "accession", acc)
                assert got.num_rows == 1 and _rows(got) == _truth(atlas.root, "accession", acc), (k, acc)

    for k in range(4):
        publish(k)
    check(range(4))  # uncompacted, sorted shards with bloom filters: a plain directory
    before = lk.table_index(atlas.root, "entries")
    compact(atlas.root, tables=("entries",), target_rows=60, grace_s=3600)
    after = lk.table_index(atlas.root, "entries")
    assert before is not None and after is not None and after.directory != before.directory
    check(range(4))
    publish(4)  # into the current generation, through the symlink
    check(range(5))
    compact(atlas.root, tables=("entries",), target_rows=60, full=True, grace_s=0)  # old generations deleted
    assert not Path(after.directory).exists()
    check(range(5))
    # a shard replaced in place (a retried unit): the new rows, never the cached file's
    staged = atlas.staging_dir("r") / "entries" / "u005.parquet"
    t = _entries(u, by_unit[5], 5)
    write_shard("entries", t, staged)
    atlas.publish_file(staged, "entries", staged.name)
    acc = t["accession"][0].as_py()
    assert lk.lookup(atlas.root, "entries", "accession", acc)["run_id"][0].as_py() == t["run_id"][0].as_py()
    t2 = t.set_column(t.schema.get_field_index("run_id"), "run_id", pa.array(["rerun"] * t.num_rows))
    write_shard("entries", t2, staged)
    atlas.publish_file(staged, "entries", staged.name)
    assert lk.lookup(atlas.root, "entries", "accession", acc)["run_id"].to_pylist() == ["rerun"]


def test_duplicates_across_files_come_back_and_the_newest_entry_wins(tmp_path: Path) -> None:
    root, rows = _compacted_atlas(tmp_path, 100, target_rows=40)
    acc = rows["accession"][45].as_py()
    again = rows.filter(pc.equal(rows["accession"], acc))
    newer = again.set_column(again.schema.get_field_index("created_at"), "created_at",
                             pa.array([datetime(2030, 1, 1, tzinfo=UTC)], again.schema.field("created_at").type))
    newer = newer.set_column(newer.schema.get_field_index("run_id"), "run_id", pa.array(["later"]))
    write_shard("entries", newer, root / "entries" / "zz-rerun.parquet")
    got = lk.lookup(root, "entries", "accession", acc)
    assert got.num_rows == 2 and _rows(got) == _truth(root, "accession", acc)
    found = find_entries(root, acc)
    assert len(found) == 1 and found[0]["run_id"] == "later"
    found = find_entries(root, newer["sequence_sha256"][0].as_py())
    assert len(found) == 1 and found[0]["run_id"] == "later"


def test_files_without_statistics_bloom_or_columns_fall_back_and_stay_correct(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    u = _universe(300)
    t = _entries(u, np.random.default_rng(0).permutation(300))  # unsorted, as per-unit shards of old versions
    write_parquet(t.slice(0, 100), atlas.root / "entries" / "old-a.parquet")  # statistics, no bloom filter
    pq.write_table(t.slice(100, 100), atlas.root / "entries" / "old-b.parquet", write_statistics=False)
    old_schema = t.slice(200).drop_columns(["fold_route", "fragment_of_sha256"])  # an older schema
    write_parquet(old_schema, atlas.root / "entries" / "old-c.parquet")
    for i in range(0, 300, 29):
        for column in ("accession", "sequence_sha256"):
            v = t[column][i].as_py()
            got = lk.lookup(atlas.root, "entries", column, v)
            assert got.num_rows == 1 and _rows(got) == _truth(atlas.root, column, v), (column, i)
    got = lk.lookup(atlas.root, "entries", "accession", t["accession"][250].as_py())
    assert got["fold_route"].to_pylist() == [None] and got.schema.names[:3] == t.schema.names[:3]
    assert lk.lookup(atlas.root, "entries", "fold_route", "normal").num_rows == 200  # old-c has no such column
    monkeypatch.setattr(lk, "MAX_FILES", 2)  # too many files to index: DuckDB over the glob
    lk.clear_caches()
    assert lk.table_index(atlas.root, "entries") is None
    v = t["accession"][150].as_py()
    assert _rows(lk.lookup(atlas.root, "entries", "accession", v)) == _truth(atlas.root, "accession", v)
    assert lk.lookup(atlas.root, "entries", "accession", "missing").num_rows == 0


def test_found_entry_a3m_is_looked_up_by_msa_key(tmp_path: Path) -> None:
    from pipeline.errors import AtlasError
    from storage.entry import FoundEntry
    from storage.schema import MSAS_SCHEMA

    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    keys = [f"{7 * i:064x}" for i in range(2100)]
    rows = {f.name: [None] * len(keys) for f in MSAS_SCHEMA}
    rows.update(msa_key=keys, sequence_sha256=keys, db_id=["db"] * len(keys), tool=["mmseqs2"] * len(keys),
                a3m=[f">q\nSEQ{i}\n" for i in range(len(keys))], run_id=["r"] * len(keys))
    write_shard("msas", pa.table(rows, schema=MSAS_SCHEMA), atlas.root / "msas" / "u1.parquet")
    for i in (0, 1023, 1024, len(keys) - 1):  # row-group boundaries (1,024 rows per group)
        found = FoundEntry(atlas, {"entryId": "E", "msa_key": keys[i]}, {})
        assert found.a3m() == f">q\nSEQ{i}\n"
    with pytest.raises(AtlasError, match="missing from the msas table"):
        FoundEntry(atlas, {"entryId": "E", "msa_key": "f" * 64}, {}).a3m()


def test_a_table_the_atlas_does_not_have_is_empty(tmp_path: Path) -> None:
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    table = atlas.root / "msas"  # a generation symlink since Atlas.init
    (table / "schema.parquet").unlink()
    table.unlink() if table.is_symlink() else table.rmdir()
    assert lk.lookup(atlas.root, "msas", "msa_key", "k").num_rows == 0
