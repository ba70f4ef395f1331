"""The atlas store on a local directory, and its publish protocol.

Layout (docs/output.md is the full contract)::

    <atlas>/atlas.json                     format version, creation time
    <atlas>/<table>/schema.parquet         zero-row file per table, so globs always match
    <atlas>/<table>/<shard>.parquet        immutable shards, deterministic names
    <atlas>/mmcif/<shard>.tar              mmCIF + PAE JSON shards (gzipped members)
    <atlas>/_runs/<run_id>/                config.json, summary.json, plddt_histogram.png,
                                           published.jsonl (one line per published shard)
    <atlas>/_staging/<run_id>/             work in progress; never read by queries
    <atlas>/_lock                          held by the one run writing the atlas (flock locally,
                                           a lease object on S3)

Publish protocol: workers write a shard's files under ``_staging``; the driver moves each file
into place with ``os.replace`` (atomic on POSIX within one filesystem) in the order mmCIF tar,
msas, structures, failures, entries, and appends the unit to ``published.jsonl``. A reader globbing
``<table>/*.parquet`` therefore sees whole shards only; a retried unit publishes under the same
name, replacing an identical file, so rows are never duplicated. Staging is outside every glob.

The same protocol holds on S3 (``--atlas s3://bucket/prefix``, :mod:`storage.store`): workers write
a unit's files to node-local scratch and upload them under ``_staging/<run_id>/``; the driver
publishes each one with a server-side copy to its final key (an S3 object appears whole or not at
all) and deletes the staged copy; ``published.jsonl`` becomes one object per unit under
``_runs/<run_id>/published/``. S3 has no file locks: the writer lock is a ``_lock`` object created
with a conditional PUT (``If-None-Match: *``) and kept alive by a heartbeat; a lock whose holder
died (same host, process gone) or whose heartbeat is older than :data:`S3_LOCK_LEASE_S` is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import AtlasError
from storage.schema import TABLES
from storage.store import LocalStore, S3Store, Store, open_store

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PUBLISH_ORDER = ("mmcif", "msas", "structures", "failures", "entries", "rejects")
S3_LOCK_LEASE_S = 180.0  # a lock whose heartbeat is older than this is stale
S3_LOCK_HEARTBEAT_S = 30.0


def write_parquet(table: pa.Table, path: Path, provenance: dict[str, Any] | None = None) -> None:
    """Write one shard: zstd, statistics on, provenance JSON in the file's key-value metadata."""
    meta = dict(table.schema.metadata or {})
    if provenance:
        meta[b"foldatlas.provenance"] = json.dumps(provenance, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=10_000, write_statistics=True)


def parquet_bytes(table: pa.Table, provenance: dict[str, Any] | None = None) -> bytes:
    """A shard as bytes (same options as :func:`write_parquet`), for stores without local paths."""
    sink = pa.BufferOutputStream()
    meta = dict(table.schema.metadata or {})
    if provenance:
        meta[b"foldatlas.provenance"] = json.dumps(provenance, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), sink, compression="zstd", row_group_size=10_000,
                   write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Atlas:
    """An atlas: a local directory or an ``s3://bucket/prefix`` (see :mod:`storage.store`)."""

    def __init__(self, root: str | os.PathLike[str] | Store) -> None:
        self.store: Store = open_store(root)
        self.uri: str = self.store.uri
        self._lock_fh: IO[str] | None = None

    @property
    def is_local(self) -> bool:
        return self.store.is_local

    @property
    def root(self) -> Path:
        """The local directory (local atlases only; use :attr:`uri` and :attr:`store` generally)."""
        if not isinstance(self.store, LocalStore):
            raise AtlasError(f"{self.uri} is not a local directory")
        return self.store.root

    # ---- layout -------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def glob(self, table: str) -> str:
        """The ``read_parquet`` pattern of a table: an ``s3://`` URI, or locally the table's current
        generation with the symlink resolved once (``storage/layout.py``, ``foldatlas compact``)."""
        if not self.is_local:
            return f"{self.store.url(table)}/*.parquet"
        from storage.layout import table_glob

        return table_glob(self.root, table)

    def duckdb(self) -> Any:
        """A new DuckDB connection that can read this atlas's globs (S3 registered when needed)."""
        return self.store.duckdb()

    @property
    def runs_dir(self) -> Path:
        return self.root / "_runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def staging_rel(self, run_id: str) -> str:
        return f"_staging/{run_id}"

    def staging_dir(self, run_id: str) -> Path:
        """Where this node writes a run's staged files: inside the atlas locally, node-local scratch for S3."""
        if self.is_local:
            return self.root / self.staging_rel(run_id)
        return Path(tempfile.gettempdir()) / "foldatlas-staging" / run_id

    def exists(self) -> bool:
        return self.store.exists("atlas.json")

    def require(self) -> None:
        if not self.exists():
            raise AtlasError(f"{self.uri} is not a FoldAtlas atlas (no atlas.json)",
                             hint="Create one with `foldatlas run INPUT --atlas DIR_OR_S3_URI`.")

    def init(self) -> None:
        """Create the layout (idempotent)."""
        if self.is_local:
            from storage.layout import init_table

            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "mmcif").mkdir(exist_ok=True)
            self.runs_dir.mkdir(exist_ok=True)
            for name in TABLES:
                init_table(self.root, name)
        for name, schema in TABLES.items():
            marker = f"{name}/schema.parquet"
            if not self.store.exists(marker):
                self.store.write_bytes(marker, parquet_bytes(schema.empty_table()))
        if not self.exists():
            self.store.write_text("atlas.json", json.dumps(
                {"format": "foldatlas", "format_version": FORMAT_VERSION,
                 "created_at": datetime.now(UTC).isoformat()}, indent=2))

    # ---- locking and staging ------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive writer lock; a dead holder's lock is released (kill -9 included)."""
        if isinstance(self.store, S3Store):
            with _s3_lock(self.store):
                yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / "_lock", "a+")  # noqa: SIM115 - held for the context's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            fh.close()
            raise AtlasError(f"Another run is writing {self.root}",
                             hint="Wait for it to finish; a crashed run releases the lock by itself.") from e
        self._lock_fh = fh
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            self._lock_fh = None

    def clean_staging(self) -> int:
        """Remove leftovers of dead runs (call with the lock held). Returns runs removed."""
        if not self.is_local:
            runs = {e.path.split("/")[1] for e in self.store.list("_staging") if e.path.count("/") >= 2}
            self.store.delete_prefix("_staging")
            local = Path(tempfile.gettempdir()) / "foldatlas-staging"
            for run in runs:
                shutil.rmtree(local / run, ignore_errors=True)
            return len(runs)
        staging = self.root / "_staging"
        if not staging.exists():
            return 0
        n = 0
        for d in list(staging.iterdir()):
            n += 1 if _remove_dead_run_dir(d) else 0
        return n

    def upload_staged(self, run_id: str, local_paths: dict[str, str]) -> dict[str, str]:
        """Make a worker's staged files visible to the driver: their paths relative to the store.

        Locally the staging directory is inside the atlas, so nothing moves; on S3 each file is
        uploaded under ``_staging/<run_id>/`` and the local copy removed.
        """
        base = self.staging_dir(run_id)
        out = {}
        for table, p in local_paths.items():
            rel = f"{self.staging_rel(run_id)}/{Path(p).relative_to(base).as_posix()}"
            if not self.is_local:
                self.store.put_file(p, rel)
                Path(p).unlink()
            out[table] = rel
        return out

    # ---- publishing ---------------------------------------------------------------------
    def publish_file(self, staged: Path, table: str, name: str) -> str:
        """Atomically publish a local staged file as ``<atlas>/<table>/<name>``; returns its relative path."""
        final = f"{table}/{name}"
        if self.is_local:
            self.store.move(Path(staged).relative_to(self.root).as_posix(), final)
        else:
            self.store.put_file(staged, final)
            Path(staged).unlink()
        return final

    def publish_unit(self, run_id: str, unit_id: str, staged: dict[str, str], counts: dict[str, int]) -> None:
        """Publish a work unit's staged files (paths relative to the store) in PUBLISH_ORDER and record it."""
        for table in PUBLISH_ORDER:
            if table in staged:
                rel = staged[table]
                self.store.move(rel, f"{table}/{rel.rsplit('/', 1)[-1]}")
        line = {"unit_id": unit_id, "files": {t: p.rsplit("/", 1)[-1] for t, p in staged.items()},
                "counts": counts, "published_at": datetime.now(UTC).isoformat()}
        self.append_run_log(run_id, "published.jsonl", line)

    def append_run_log(self, run_id: str, name: str, record: dict[str, Any]) -> None:
        """Append one JSON line locally; on S3 (no appends) one object per record under ``<name stem>/``."""
        if not self.is_local:
            stem = name.rsplit(".", 1)[0]
            key = record.get("unit_id") or uuid.uuid4().hex
            self.store.write_text(f"_runs/{run_id}/{stem}/{key}.json", json.dumps(record, sort_keys=True))
            return
        d = self.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / name, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_run_file(self, run_id: str, name: str, data: bytes | str) -> str:
        rel = f"_runs/{run_id}/{name}"
        self.store.write_bytes(rel, data.encode() if isinstance(data, str) else data)
        return self.store.url(rel)


@contextmanager
def _s3_lock(store: S3Store, lease_s: float = S3_LOCK_LEASE_S) -> Iterator[None]:
    """The single-writer lock of an S3 atlas: a ``_lock`` object created with a conditional PUT."""
    from botocore.exceptions import ClientError

    owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
    key = store.key("_lock")

    def body() -> bytes:
        return json.dumps({**owner, "heartbeat": time.time()}).encode()

    for _attempt in range(2):
        try:
            store.client.put_object(Bucket=store.bucket, Key=key, Body=body(), IfNoneMatch="*")
            break
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            try:
                held = json.loads(store.read_bytes("_lock"))
            except (FileNotFoundError, ValueError):
                held = {}
            age = time.time() - float(held.get("heartbeat", 0))
            dead = held.get("host") == owner["host"] and not _pid_alive(int(held.get("pid", -1)))
            if not (dead or age > lease_s):
                raise AtlasError(
                    f"Another run is writing {store.uri} (host {held.get('host')}, pid {held.get('pid')}, "
                    f"heartbeat {age:.0f} s ago)",
                    hint=f"Wait for it to finish; a lock without heartbeat for {lease_s:.0f} s is taken over.") from e
            log.warning("taking over the stale lock of %s (holder %s pid %s, heartbeat %.0f s ago)",
                        store.uri, held.get("host"), held.get("pid"), age)
            store.delete("_lock")
    else:
        raise AtlasError(f"Could not take the writer lock of {store.uri}", hint="Retry; another run raced for it.")

    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(S3_LOCK_HEARTBEAT_S):
            try:
                store.client.put_object(Bucket=store.bucket, Key=key, Body=body())
            except Exception as e:  # keep beating: the next beat may succeed
                log.warning("lock heartbeat failed: %s", e)

    thread = threading.Thread(target=heartbeat, name="foldatlas-s3-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        store.delete("_lock")


def _remove_dead_run_dir(d: Path, attempts: int = 5) -> bool:
    """Remove a dead run's staging directory, even while its last workers still write into it.

    A killed driver's actors can outlive it by a few seconds (the lock died with the driver), and
    a file they create during ``rmtree`` makes it fail with "Directory not empty". So the directory
    is first renamed aside (the workers' later writes to the old path then fail or land in a fresh
    directory, which the next clean-up removes; nothing in staging is ever published without the
    driver), then removed, retrying while files keep appearing. Returns False when the directory
    vanished meanwhile; raises only if it still cannot be removed after ``attempts`` tries."""
    if d.name.startswith(".removing-"):
        target = d
    else:
        target = d.with_name(f".removing-{d.name}-{uuid.uuid4().hex[:8]}")
        try:
            d.rename(target)
        except FileNotFoundError:
            return False
    for i in range(attempts):
        try:
            shutil.rmtree(target)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    return True
