"""`foldatlas validate`: clean atlases and releases pass; planted corruption of each kind is caught.

Every test corrupts a private copy (of the session atlas or of a module release) and checks that
the report names the damaged file or row with the expected problem code, and that the CLI exits 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from storage.validate import validate

pytestmark = pytest.mark.slow


def codes(location: Path) -> set[tuple[str, str]]:
    return {(p.code, p.where) for p in validate(str(location)).problems}


def cli(location: Path) -> tuple[int, list[dict]]:
    out = CliRunner().invoke(app, ["validate", str(location), "--json"])
    return out.exit_code, json.loads(out.stdout)["problems"]


def shards(release: Path) -> list[str]:
    return sorted(p.name for p in release.glob("*.tar"))


@pytest.fixture
def copy(release, tmp_path) -> Path:
    dst = tmp_path / "release"
    shutil.copytree(release, dst)
    return dst


def test_clean_atlas_and_release_pass(release_atlas, release):
    for location in (release_atlas, release):
        report = validate(str(location))
        assert report.problems == [] and report.ok
        out = CliRunner().invoke(app, ["validate", str(location)])
        assert out.exit_code == 0 and out.stdout == ""
    assert validate(str(release)).checked["mmcif_members"] == 11


def test_deleted_shard(copy):
    victim = shards(copy)[1]
    (copy / victim).unlink()
    found = codes(copy)
    assert ("missing_file", victim) in found
    assert ("count_mismatch", "tar members") in found
    assert any(c == "metadata_row_without_structure" for c, _ in found)
    rc, problems = cli(copy)
    assert rc == 1 and {"code": "missing_file", "where": victim} in [
        {k: p[k] for k in ("code", "where")} for p in problems]


def test_truncated_file(copy):
    victim = shards(copy)[0]
    data = (copy / victim).read_bytes()
    (copy / victim).write_bytes(data[: len(data) // 3])
    found = codes(copy)
    assert {("size_mismatch", victim), ("checksum_mismatch", victim)} <= found
    assert any(c in ("unreadable_file", "unreadable_member") and w.startswith(victim) for c, w in found)
    assert cli(copy)[0] == 1


def test_changed_byte(copy):
    victim = "accession_ids.csv"
    data = bytearray((copy / victim).read_bytes())
    data[0] = ord("X") if data[0] != ord("X") else ord("Y")
    (copy / victim).write_bytes(bytes(data))
    assert codes(copy) == {("checksum_mismatch", victim)}
    shard = shards(copy)[0]
    data = bytearray((copy / shard).read_bytes())
    data[1000] ^= 0x01  # inside the first member's gzip stream
    (copy / shard).write_bytes(bytes(data))
    found = codes(copy)
    assert ("checksum_mismatch", shard) in found
    assert any(c in ("unreadable_member", "bad_mmcif") and w.startswith(shard) for c, w in found)


def test_extra_metadata_row_and_unlisted_file(copy):
    table = pq.read_table(copy / "metadata.parquet")
    extra = table.slice(0, 1).set_column(table.schema.get_field_index("entryId"), "entryId",
                                         pa.array(["FA-EXTRA-F1"]))
    pq.write_table(pa.concat_tables([table, extra]), copy / "metadata.parquet")
    (copy / "notes.txt").write_text("not part of the release")
    found = codes(copy)
    assert ("checksum_mismatch", "metadata.parquet") in found
    assert ("metadata_row_without_structure", "metadata.parquet FA-EXTRA-F1") in found
    assert ("count_mismatch", "metadata.parquet") in found
    assert ("accession_ids_mismatch", "accession_ids.csv FA-EXTRA-F1") in found
    assert ("unlisted_file", "notes.txt") in found


@pytest.fixture
def atlas_copy(release_atlas, tmp_path) -> Path:
    dst = tmp_path / "atlas"
    shutil.copytree(release_atlas, dst, ignore=shutil.ignore_patterns("_lock"))
    return dst


def test_atlas_extra_entry_rows(atlas_copy):
    entries = duckdb.sql(f"SELECT * FROM read_parquet('{atlas_copy}/entries/*.parquet', union_by_name=true) "
                         "WHERE accession = 'B8CSY5'").to_arrow_table()
    pq.write_table(entries, atlas_copy / "entries" / "copy-of-a-shard.parquet")  # the same row again
    orphan = entries.set_column(entries.schema.get_field_index("sequence_sha256"), "sequence_sha256",
                                pa.array(["0" * 64])).set_column(
        entries.schema.get_field_index("accession"), "accession", pa.array(["NOSTRUCT"]))
    pq.write_table(orphan, atlas_copy / "entries" / "orphan.parquet")
    found = codes(atlas_copy)
    assert ("duplicate_entry", "entries FA-B8CSY5-F1 esmfold-tiny") in found
    assert ("entry_without_structure", "entries NOSTRUCT esmfold-tiny") in found
    assert cli(atlas_copy)[0] == 1


def test_atlas_deleted_and_truncated_shards_and_unreferenced_structure(atlas_copy):
    tars = sorted((atlas_copy / "mmcif").glob("*.tar"))
    tars[0].unlink()
    data = tars[1].read_bytes()
    tars[1].write_bytes(data[: len(data) // 2])
    for p in (atlas_copy / "entries").glob("*.parquet"):  # drop B8CSY5's entry: its structure is orphaned
        t = pq.read_table(p)
        pq.write_table(t.filter(pa.compute.not_equal(t.column("accession"), "B8CSY5")), p)
    found = codes(atlas_copy)
    found_codes = [c for c, _ in found]
    assert any(c == "missing_shard" and w.startswith(f"mmcif/{tars[0].name}") for c, w in found)
    assert any(c in ("member_out_of_range", "unreadable_member") and w.startswith(f"mmcif/{tars[1].name}")
               for c, w in found)
    assert found_codes.count("unreferenced_structure") == 1
