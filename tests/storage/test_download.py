"""`foldatlas download`: S3 and HTTP sources, resume after an interruption, checksums, --where.

Which files were fetched is observed through the ``on_fetch`` hook, the HTTP server's request
log and file inodes/mtimes, never through timing.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import urllib.parse
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import ReleaseError
from storage import download as dl
from storage.download import download_release
from storage.release import ExportOptions, export_release
from storage.validate import validate

pytestmark = pytest.mark.slow


def listed(release: Path) -> dict[str, dict]:
    return {f["path"]: f for f in json.loads((release / "manifest.json").read_text())["files"]}


def assert_complete(out: Path, release: Path) -> None:
    for path, f in listed(release).items():
        data = (out / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"], path
    assert not list(out.rglob("*.part"))


def test_export_download_validate_on_s3(release_atlas, s3_server, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="releases")
    uri = "s3://releases/atlas/2026_12"
    # Ray tasks upload the shards: they get the S3 endpoint and credentials through runtime_env
    result = export_release(str(release_atlas), uri, ExportOptions(by="taxon", engine="ray", release="2026_12"))
    assert result.engine == "ray"
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_server)
            .list_objects_v2(Bucket="releases", Prefix="atlas/2026_12/")["Contents"]}
    assert keys == {f"atlas/2026_12/{f.path}" for f in result.manifest.files} | {"atlas/2026_12/manifest.json"}
    assert validate(uri).ok
    out = tmp_path / "got"
    got = download_release(f"{uri}/manifest.json", out, jobs=4)
    assert sorted(got.fetched) == sorted(f.path for f in result.manifest.files) and got.skipped == []
    assert validate(str(out)).problems == []
    again = download_release(f"{uri}/manifest.json", out, jobs=4)
    assert again.fetched == [] and len(again.skipped) == len(result.manifest.files)
    runner = CliRunner()
    cli = runner.invoke(app, ["validate", uri, "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)["ok"] is True


def test_interrupted_download_resumes_without_refetching(release, tmp_path, monkeypatch):
    out = tmp_path / "out"
    order = list(listed(release))
    real_fetch = dl.StoreSource.fetch
    calls: list[str] = []

    def flaky(self, rel, part):
        calls.append(rel)
        if len(calls) == 3:  # the connection drops half-way through the third file
            part.write_bytes((release / rel).read_bytes()[:100])
            raise ReleaseError(f"{rel}: connection reset")
        real_fetch(self, rel, part)

    monkeypatch.setattr(dl.StoreSource, "fetch", flaky)
    with pytest.raises(ReleaseError, match="connection reset"):
        download_release(str(release / "manifest.json"), out, jobs=1)
    done = {p: (out / p).stat() for p in calls[:2]}
    assert len(calls) == 3 and not (out / calls[2]).exists() and all((out / p).is_file() for p in calls[:2])
    monkeypatch.setattr(dl.StoreSource, "fetch", real_fetch)
    fetched: list[str] = []
    result = download_release(str(release / "manifest.json"), out, jobs=2, on_fetch=fetched.append)
    assert sorted(fetched) == sorted(set(order) - set(calls[:2])) == result.fetched  # complete ones skipped
    assert sorted(result.skipped) == sorted(calls[:2])
    for p, st in done.items():
        assert ((out / p).stat().st_ino, (out / p).stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert_complete(out, release)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files of ``root`` with single-range ``Range: bytes=N-`` support; logs requests."""

    root: Path
    log: list[tuple[str, str | None]]

    def do_GET(self) -> None:
        rel = urllib.parse.unquote(self.path.lstrip("/"))
        self.log.append((rel, self.headers.get("Range")))
        path = self.root / rel
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_release(release):
    handler = type("H", (_RangeHandler,), {"root": release.parent, "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{release.name}/manifest.json", handler.log
    server.shutdown()
    server.server_close()


def test_http_download_resumes_part_file_with_range(release, http_release, tmp_path):
    url, log = http_release
    out = tmp_path / "out"
    out.mkdir()
    files = listed(release)
    shard = next(p for p, f in files.items() if f["kind"] == "shard")
    half = files[shard]["size"] // 2
    (out / f"{shard}.part").write_bytes((release / shard).read_bytes()[:half])
    shutil.copy(release / "accession_ids.csv", out / "accession_ids.csv")  # already complete
    result = download_release(url, out, jobs=3)
    requested = dict(log)
    assert requested[f"{release.name}/{shard}"] == f"bytes={half}-"
    assert f"{release.name}/accession_ids.csv" not in requested and result.skipped == ["accession_ids.csv"]
    assert all(rng is None for rel, rng in log if not rel.endswith((shard, "manifest.json")))
    assert_complete(out, release)


def test_checksum_mismatch_names_the_file_and_leaves_no_bad_copy(release, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(release, src)
    shard = next(p for p, f in listed(src).items() if f["kind"] == "shard")
    data = bytearray((src / shard).read_bytes())
    data[700] ^= 0xFF
    (src / shard).write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(ReleaseError, match=f"{shard}: checksum mismatch"):
        download_release(str(src / "manifest.json"), out, jobs=1)
    assert not (out / shard).exists() and not (out / f"{shard}.part").exists()
    cli = CliRunner().invoke(app, ["download", str(src / "manifest.json"), "--to", str(tmp_path / "o2")])
    assert cli.exit_code == 2 and shard in cli.output


def test_where_downloads_only_matching_shards(release, tmp_path):
    out = tmp_path / "out"
    result = download_release(str(release / "manifest.json"), out, where="taxId = 9031")
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert len(shards) == 1
    import tarfile

    with tarfile.open(out / shards[0]) as tar:
        assert "FA-A0A1D5P1X9-F1-model_v1.cif.gz" in tar.getnames()
    side = {p for p, f in listed(release).items() if f["kind"] != "shard"}
    assert set(result.fetched) == side | set(shards)
    n = duckdb.sql(f"SELECT count(DISTINCT release_shard) FROM read_parquet('{release}/metadata.parquet')").fetchall()
    assert n[0][0] > 1  # the filter really left shards out
    bad = CliRunner().invoke(app, ["download", str(release / "manifest.json"), "--to", str(tmp_path / "b"),
                                   "--where", "nosuchcolumn = 1"])
    assert bad.exit_code == 2 and "not a valid predicate" in bad.output
