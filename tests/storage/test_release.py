"""`foldatlas export`: shard naming, per-entry members, AFDB-format side files, manifest checksums.

Expected values come from the atlas's own Parquet read with plain DuckDB, from hashlib, from
gemmi and from AlphaFold DB's published file formats (tests/data/afdb_metadata), not from the
export code.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import tarfile
from pathlib import Path

import duckdb
import gemmi
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import ReleaseError
from storage.release import (
    CONFIDENCE_EDGES,
    ExportOptions,
    FileRecord,
    Manifest,
    confidence_bin,
    export_release,
    group_sql,
)
from tests.storage.conftest import SHARED

DATA = Path(__file__).resolve().parent.parent / "data"


def entries(atlas: Path, where: str = "TRUE") -> list[dict]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{atlas}/entries/*.parquet', union_by_name=true) "
                      f"WHERE {where} ORDER BY entryId").to_arrow_table().to_pylist()


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: gzip.decompress(tar.extractfile(m).read()) for m in tar if m.isfile()}


def esm_bin(x: float) -> str:
    """ESM Atlas bins.txt spelling, written out by hand: 0_.40, .40_.50, ..., .90_1."""
    table = [(0.4, "0_.40"), (0.5, ".40_.50"), (0.6, ".50_.60"), (0.7, ".60_.70"), (0.8, ".70_.80"),
             (0.9, ".80_.90")]
    return next((name for hi, name in table if x < hi), ".90_1")


@pytest.mark.parametrize(("ptm", "plddt", "name"), [
    (0.0, 0.0, "tm_0_.40_plddt_0_.40"), (0.4, 39.99, "tm_.40_.50_plddt_0_.40"),
    (0.7, 70.0, "tm_.70_.80_plddt_.70_.80"), (0.95, 100.0, "tm_.90_1_plddt_.90_1"),
    (1.0, 89.99, "tm_.90_1_plddt_.80_.90")])
def test_confidence_bins_match_esm_atlas_names(ptm, plddt, name):
    assert confidence_bin(ptm, plddt) == name
    assert CONFIDENCE_EDGES[0] == 0 and CONFIDENCE_EDGES[-1] == 1
    sql = group_sql("confidence")
    got = duckdb.sql(f"SELECT {sql} FROM (SELECT {ptm}::DOUBLE AS ptm, {plddt}::DOUBLE AS mean_plddt) m").fetchall()
    assert got[0][0] == name



@pytest.fixture(scope="module")
def by_taxon(release_atlas, tmp_path_factory):
    dest = tmp_path_factory.mktemp("rel") / "by_taxon"
    return export_release(str(release_atlas), str(dest), ExportOptions(by="taxon", engine="threads")), dest


@pytest.mark.slow
def test_by_taxon_names_members_and_manifest(release_atlas, by_taxon):
    _, dest = by_taxon
    rows = entries(release_atlas)
    expected = {f"proteome-tax_id-{r['taxId'] if r['taxId'] is not None else 0}-0_v1.tar" for r in rows}
    shards = {p.name for p in dest.glob("*.tar")}
    assert shards == expected and "proteome-tax_id-0-0_v1.tar" in shards  # contig_7 has no taxId
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*expected, "metadata.parquet", "accession_ids.csv", "sequences.fasta", "manifest.json"])
    # every file's size and SHA-256 recomputed with hashlib
    manifest = json.loads((dest / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {p.name for p in dest.iterdir()} - {"manifest.json"}
    for f in manifest["files"]:
        data = (dest / f["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
    assert manifest["counts"]["exported_entries"] == len(rows) == sum(
        f["entries"] for f in manifest["files"] if f["kind"] == "shard")
    assert manifest["counts"]["without_structure"] == 0 and manifest["where"] is None
    assert manifest["source_atlas"] == str(release_atlas) and manifest["release"] == "1"
    assert {"created_at", "foldatlas_version", "git_commit"} <= set(manifest)
    # members: AFDB names, mmCIF parses with gemmi and carries the entry's own accession
    for r in rows:
        tax = r["taxId"] if r["taxId"] is not None else 0
        members = tar_members(dest / f"proteome-tax_id-{tax}-0_v1.tar")
        eid = r["entryId"]
        assert sorted(members) == sorted([f"{eid}-model_v1.cif.gz", f"{eid}-confidence_v1.json.gz",
                                          f"{eid}-predicted_aligned_error_v1.json.gz"])
        block = gemmi.cif.read_string(members[f"{eid}-model_v1.cif.gz"].decode()).sole_block()
        assert r["accession"] in block.find_value("_ma_target_ref_db_details.db_accession")
        pae = json.loads(members[f"{eid}-predicted_aligned_error_v1.json.gz"])
        assert len(pae[0]["predicted_aligned_error"]) == r["sequence_length"]
        conf = json.loads(members[f"{eid}-confidence_v1.json.gz"])
        assert conf["residueNumber"] == list(range(1, r["sequence_length"] + 1))
    assert SHARED[0] in tar_members(dest / "proteome-tax_id-0-0_v1.tar")[f"FA-{SHARED[0]}-F1-model_v1.cif.gz"].decode()


@pytest.mark.slow
def test_accession_ids_and_sequences_follow_afdb_formats(release_atlas, by_taxon):
    _, dest = by_taxon
    sample = (DATA / "afdb_metadata" / "DERIVED_accession_ids_format_sample.csv").read_text().splitlines()
    shape = re.compile(r"^[^,]+,\d+,\d+,[A-Za-z]+-[^,]+-F1,\d+$")  # accession,first,last,entryId,version
    assert all(shape.match(line) for line in sample)
    lines = (dest / "accession_ids.csv").read_text().splitlines()
    assert all(shape.match(line) for line in lines)  # no header, same shape as AFDB's
    rows = {r["entryId"]: r for r in entries(release_atlas)}
    got = {row[3]: row for row in csv.reader(lines)}
    assert set(got) == set(rows)
    for eid, row in got.items():
        r = rows[eid]
        assert row == [r["accession"], str(r["uniprotStart"]), str(r["uniprotEnd"]), eid, str(r["latestVersion"])]
    fasta = (dest / "sequences.fasta").read_text().split(">")[1:]
    assert len(fasta) == len(rows)
    by_id = {rec.split()[0]: rec for rec in fasta}
    a = rows["FA-B8CSY5-F1"]
    header, seq = by_id["FoldAtlas:FA-B8CSY5-F1"].rstrip("\n").split("\n")
    assert seq == a["uniprotSequence"]
    assert header == ("FoldAtlas:FA-B8CSY5-F1 50S ribosomal protein L21 UA=B8CSY5 UI=RL21_SHEPW "
                      "OS=Shewanella piezotolerans (strain WP3 / JCM 13877) OX=225849 GN=rplU")
    meta = duckdb.sql(f"SELECT entryId, release_shard FROM read_parquet('{dest}/metadata.parquet')").fetchall()
    assert {e for e, _ in meta} == set(rows) and all((dest / s).is_file() for _, s in meta)


@pytest.mark.slow
def test_by_confidence_bins_shard_size_and_ray_matches_threads(release_atlas, tmp_path):
    rows = entries(release_atlas)
    bins = {f"tm_{esm_bin(r['ptm'])}_plddt_{esm_bin(r['mean_plddt'] / 100)}" for r in rows}
    threads = export_release(str(release_atlas), str(tmp_path / "t"),
                             ExportOptions(by="confidence", shard_size=3, engine="threads"))
    on_ray = export_release(str(release_atlas), str(tmp_path / "r"),
                            ExportOptions(by="confidence", shard_size=3, engine="ray"))
    assert on_ray.engine == "ray"
    names = sorted(p.name for p in (tmp_path / "t").glob("*.tar"))
    expected = []
    for b in sorted(bins):
        n = sum(1 for r in rows if f"tm_{esm_bin(r['ptm'])}_plddt_{esm_bin(r['mean_plddt'] / 100)}" == b)
        expected += [f"{b}-{i}_v1.tar" for i in range(-(-n // 3))]
    assert names == sorted(expected)
    for name in names:
        assert len([m for m in tar_members(tmp_path / "t" / name) if m.endswith("-model_v1.cif.gz")]) <= 3
    # shards are deterministic: Ray tasks and threads write the same bytes
    shards = lambda r: {f.path: f.sha256 for f in r.manifest.files if f.kind == "shard"}  # noqa: E731
    assert shards(threads) == shards(on_ray)


@pytest.mark.slow
def test_where_none_grouping_and_bad_sql(release_atlas, tmp_path):
    where = "taxId IS NULL OR taxId > 1000000"
    want = entries(release_atlas, where)
    runner = CliRunner()
    out = runner.invoke(app, ["export", str(release_atlas), "--to", str(tmp_path / "n"), "--where", where,
                              "--by", "none", "--shard-size", "4", "--engine", "threads", "--release", "2026_12"])
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "n" / "manifest.json").read_text())
    assert manifest["where"] == where and manifest["counts"]["matched_entries"] == len(want)
    assert sorted(p.name for p in (tmp_path / "n").glob("*.tar")) == [
        f"shard-{i}_v2026_12.tar" for i in range(-(-len(want) // 4))]
    ids = sorted(r[3] for r in csv.reader((tmp_path / "n" / "accession_ids.csv").open()))
    assert ids == sorted(r["entryId"] for r in want)
    bad = runner.invoke(app, ["export", str(release_atlas), "--to", str(tmp_path / "b"), "--where", "taxId = = 1"])
    assert bad.exit_code == 2 and "not a valid predicate" in bad.output
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_manifest_round_trip_ignores_unknown_keys_and_rejects_other_json(tmp_path):
    m = Manifest(release="1", source_atlas="a", where=None, by="none", shard_size=2, formats=["mmcif"],
                 created_at="2026-12-01T00:00:00+00:00", foldatlas_version="0", git_commit="x",
                 counts={"exported_entries": 0}, files=[FileRecord("x.tar", 1, "0" * 64, 0, "shard")])
    d = json.loads(m.to_json())
    d["future_key"] = 1
    d["files"][0]["mirror_url"] = "https://example.org/x.tar"
    assert Manifest.from_json(json.dumps(d)) == m
    with pytest.raises(ReleaseError, match="not a FoldAtlas release manifest"):
        Manifest.from_json('{"format": "something-else", "files": []}')
    out = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert out.exit_code == 2 and "neither atlas.json nor manifest.json" in out.output


@pytest.mark.slow
def test_msa_format_adds_each_entrys_a3m(release_atlas, tmp_path):
    export_release(str(release_atlas), str(tmp_path / "m"),
                   ExportOptions(by="none", formats=("mmcif", "msa"), engine="threads"))
    a3m = dict(duckdb.sql(
        f"SELECT e.entryId, m.a3m FROM read_parquet('{release_atlas}/entries/*.parquet', union_by_name=true) e "
        f"JOIN read_parquet('{release_atlas}/msas/*.parquet', union_by_name=true) m USING (msa_key)").fetchall())
    assert len(a3m) == len(entries(release_atlas))  # every entry of the atlas has its MSA
    members = tar_members(tmp_path / "m" / "shard-0_v1.tar")
    assert sorted(members) == sorted([f"{e}-model_v1.cif.gz" for e in a3m] + [f"{e}-msa_v1.a3m.gz" for e in a3m])
    for eid, text in a3m.items():
        assert members[f"{eid}-msa_v1.a3m.gz"].decode() == text
