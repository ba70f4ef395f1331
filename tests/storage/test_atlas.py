"""Atlas layout and publish protocol on a local directory."""

from __future__ import annotations

import duckdb
import pytest

from pipeline.errors import AtlasError
from storage.atlas import Atlas, write_parquet
from storage.query import connect, view_sql
from storage.schema import TABLES


def test_empty_atlas_is_queryable_by_plain_duckdb(tmp_path):
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    con = duckdb.connect()
    for table, schema in TABLES.items():
        rel = con.sql(f"SELECT * FROM read_parquet('{tmp_path}/atlas/{table}/*.parquet')")
        assert rel.columns == schema.names
        assert rel.fetchall() == []


def test_views_and_schema_metadata(tmp_path):
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    con = connect(atlas.root)
    cols = [r[0] for r in con.execute("DESCRIBE entries").fetchall()]
    assert cols[:2] == ["allVersions", "entryId"] and "globalMetricValue" in cols and "run_id" in cols
    assert "read_parquet" in view_sql(atlas.root)


def test_lock_is_exclusive(tmp_path):
    atlas = Atlas(tmp_path / "atlas")
    with atlas.locked(), pytest.raises(AtlasError, match="Another run"), Atlas(tmp_path / "atlas").locked():
        pass
    with atlas.locked():  # released
        pass


def test_publish_is_a_rename_and_replaces_same_name(tmp_path):
    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    staged = atlas.staging_dir("r1") / "structures" / "u1.parquet"
    table = TABLES["rejects"].empty_table()
    write_parquet(table, staged, {"run_id": "r1"})
    final = atlas.root / atlas.publish_file(staged, "structures", "u1.parquet")
    assert final.exists() and not staged.exists()
    write_parquet(table, staged, {"run_id": "r2"})  # a retried unit publishes the same name again
    atlas.publish_file(staged, "structures", "u1.parquet")
    assert sorted(p.name for p in atlas.table_dir("structures").iterdir()) == ["schema.parquet", "u1.parquet"]
    assert atlas.clean_staging() == 1 and not atlas.staging_dir("r1").exists()


def test_atlas_locations(tmp_path):
    s3 = Atlas("s3://bucket/some/atlas/")
    assert s3.uri == "s3://bucket/some/atlas" and not s3.is_local
    assert s3.glob("entries") == "s3://bucket/some/atlas/entries/*.parquet"
    with pytest.raises(AtlasError, match="not a local directory"):
        _ = s3.root
    with pytest.raises(AtlasError, match="no bucket"):
        Atlas("s3:///atlas")
    with pytest.raises(AtlasError, match="unsupported location"):
        Atlas("gs://bucket/atlas")
    assert Atlas(tmp_path / "a").is_local


def test_clean_staging_while_a_dead_runs_worker_still_writes(tmp_path):
    """A killed driver's write actor can outlive it and keep creating files in its staging
    directory; the next run's clean-up must neither fail nor leave the directory behind."""
    import threading

    atlas = Atlas(tmp_path / "atlas")
    atlas.init()
    run_dir = atlas.staging_dir("dead")
    stop = threading.Event()
    written = []

    def zombie_writer() -> None:
        i = 0
        while not stop.is_set():
            d = run_dir / "structures" / f"u{i % 7}"
            try:
                d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i}.parquet").write_bytes(b"x" * 64)
                written.append(i)
            except OSError:
                pass  # its directory was renamed away or removed under it: what a zombie sees
            i += 1

    for i in range(200):
        (run_dir / "entries").mkdir(parents=True, exist_ok=True)
        (run_dir / "entries" / f"e{i}.parquet").write_bytes(b"y")
    t = threading.Thread(target=zombie_writer)
    t.start()
    try:
        for _ in range(20):
            atlas.clean_staging()  # the old plain rmtree raised "Directory not empty" here
    finally:
        stop.set()
        t.join()
    assert written, "the writer never ran"
    atlas.clean_staging()
    assert not list((atlas.root / "_staging").iterdir())
