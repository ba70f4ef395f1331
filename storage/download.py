"""Download a release from its manifest: parallel, resumable, every file checked against SHA-256.

``MANIFEST_URI`` is a local path, an ``s3://`` URI or an ``http(s)://`` URL of a release's
``manifest.json``; files are fetched relative to the manifest's location. A file already in the
target directory with the manifest's size and SHA-256 is skipped. A file is fetched into
``<name>.part`` and renamed to its final name only after its SHA-256 matched; an interrupted
HTTP transfer resumes from the ``.part`` size with a ``Range`` request (local and S3 sources
refetch the file whole). A checksum mismatch deletes the ``.part`` and is reported with the
file's name.

``where`` filters by a DuckDB predicate on the release's ``metadata.parquet``: the metadata files
are fetched first, then only the shards holding at least one matching entry (shard-granular: a
shard is fetched whole, with the other entries it holds).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.errors import AtlasError, ReleaseError
from storage.release import MANIFEST, METADATA, FileRecord, Manifest, sha256_file
from storage.store import open_store

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
HTTP_TIMEOUT = 60


class Source(Protocol):
    """Where the release's files are: fetch one into a local ``.part`` file."""

    def read_manifest(self) -> bytes: ...

    def fetch(self, rel: str, part: Path) -> None: ...


@dataclass(frozen=True)
class StoreSource:
    """A local directory or ``s3://`` prefix (through :mod:`storage.store`); no partial resume."""

    root: str

    def read_manifest(self) -> bytes:
        store = open_store(self.root)
        if not store.exists(MANIFEST):
            raise ReleaseError(f"{store.url(MANIFEST)} does not exist",
                               hint="Give the manifest.json of a release written by `foldatlas export`.")
        return store.read_bytes(MANIFEST)

    def fetch(self, rel: str, part: Path) -> None:
        store = open_store(self.root)
        try:
            with store.open_read(rel) as src, open(part, "wb") as dst:  # refetch whole: no Range here
                shutil.copyfileobj(src, dst, _CHUNK)
        except (OSError, AtlasError) as e:
            raise ReleaseError(f"{rel}: cannot fetch {store.url(rel)}: {e}",
                               hint="Check that the release is complete (foldatlas validate) and readable.") from e


@dataclass(frozen=True)
class HttpSource:
    """An ``http(s)://`` base URL; resumes a ``.part`` with an HTTP ``Range`` request."""

    base: str  # ends with '/'
    manifest_url: str

    def read_manifest(self) -> bytes:
        try:
            with urllib.request.urlopen(self.manifest_url, timeout=HTTP_TIMEOUT) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, OSError) as e:
            raise ReleaseError(f"cannot read {self.manifest_url}: {e}",
                               hint="Check the URL and the network.") from e

    def fetch(self, rel: str, part: Path) -> None:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(self.base + urllib.request.pathname2url(rel))
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                resumed = have and resp.status == 206
                if have and not resumed:
                    log.info("%s: server ignored Range, fetching it whole", rel)
                with open(part, "ab" if resumed else "wb") as dst:
                    shutil.copyfileobj(resp, dst, _CHUNK)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the .part is already whole (or longer): let the checksum decide
                return
            raise ReleaseError(f"GET {req.full_url} failed: HTTP {e.code}", hint="Check the release URL.") from e
        except (urllib.error.URLError, OSError) as e:
            raise ReleaseError(f"GET {req.full_url} failed: {e}",
                               hint="Run the same command again to resume.") from e


def source_for(manifest_uri: str) -> Source:
    """The source of a release from its manifest's location (a release root also works)."""
    if not manifest_uri.rstrip("/").endswith(MANIFEST):
        manifest_uri = manifest_uri.rstrip("/") + "/" + MANIFEST
    if manifest_uri.startswith(("http://", "https://")):
        return HttpSource(manifest_uri.rsplit("/", 1)[0] + "/", manifest_uri)
    if manifest_uri.startswith("s3://"):
        return StoreSource(manifest_uri.rsplit("/", 1)[0])
    return StoreSource(str(Path(manifest_uri).expanduser().resolve().parent))


@dataclass(frozen=True)
class DownloadResult:
    fetched: list[str]
    skipped: list[str]
    selected: int  # files selected by --where (all files without it)
    manifest: Manifest


def _complete(target: Path, rec: FileRecord) -> bool:
    return target.is_file() and target.stat().st_size == rec.size and sha256_file(target)[0] == rec.sha256


def _get(source: Source, rec: FileRecord, out: Path, on_fetch: Callable[[str], None] | None) -> bool:
    """Fetch one file unless already complete; True when fetched. Raises on a checksum mismatch."""
    target = out / rec.path
    if _complete(target, rec):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if on_fetch:
        on_fetch(rec.path)
    source.fetch(rec.path, part)
    digest, size = sha256_file(part)
    if size != rec.size or digest != rec.sha256:
        part.unlink(missing_ok=True)
        raise ReleaseError(f"{rec.path}: checksum mismatch (got {size} bytes, sha256 {digest[:16]}..., "
                           f"manifest says {rec.size} bytes, {rec.sha256[:16]}...)",
                           hint="The source file is corrupt or was changed after export; the bad copy was "
                                "deleted. Re-export or report it to the publisher.")
    os.replace(part, target)
    return True


def download_release(manifest_uri: str, out_dir: str | Path, *, where: str | None = None, jobs: int = 4,
                     on_fetch: Callable[[str], None] | None = None) -> DownloadResult:
    """Fetch the release's files into ``out_dir`` (see the module docstring)."""
    source = source_for(manifest_uri)
    raw = source.read_manifest()
    manifest = Manifest.from_json(raw, manifest_uri)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    side = [f for f in manifest.files if f.kind != "shard"]
    shards = [f for f in manifest.files if f.kind == "shard"]
    fetched: list[str] = []
    skipped: list[str] = []

    def run(files: list[FileRecord]) -> None:
        """Fetch in parallel; the first error stops what has not started (a re-run resumes)."""
        stop = threading.Event()

        def one(rec: FileRecord) -> bool | None:
            if stop.is_set():
                return None
            try:
                return _get(source, rec, out, on_fetch)
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="download") as pool:
            futures = {pool.submit(one, f): f for f in files}
            for fut in as_completed(futures):
                done = fut.result()
                if done is not None:
                    (fetched if done else skipped).append(futures[fut].path)

    if where:
        run(side)
        wanted = shards_matching(out / METADATA, where)
        shards = [f for f in shards if f.path in wanted]
    files = shards if where else side + shards
    run(files)
    (out / MANIFEST).write_bytes(raw)
    return DownloadResult(sorted(fetched), sorted(skipped), len(side) + len(shards), manifest)


def shards_matching(metadata: Path, where: str) -> set[str]:
    """Release shards holding at least one metadata row matching the predicate."""
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(f"SELECT DISTINCT release_shard FROM read_parquet('{metadata}') WHERE ({where})")
        return {r[0] for r in rows.fetchall()}
    except duckdb.Error as e:
        raise ReleaseError(f"--where {where!r} is not a valid predicate on the release metadata: {e}",
                           hint="Write a DuckDB boolean expression over metadata.parquet columns (the entries "
                                "columns), e.g. \"taxId = 9606\".") from e
    finally:
        con.close()
