"""The atlas store on a local directory, and its publish protocol.

Layout (docs/output.md is the full contract)::

    <atlas>/atlas.json                     format version, creation time
    <atlas>/<table>/schema.parquet         zero-row file per table, so globs always match
    <atlas>/<table>/<shard>.parquet        immutable shards, deterministic names
    <atlas>/mmcif/<shard>.tar              mmCIF + PAE JSON shards (gzipped members)
    <atlas>/_runs/<run_id>/                config.json, summary.json, plddt_histogram.png,
                                           published.jsonl (one line per published shard)
    <atlas>/_staging/<run_id>/             work in progress; never read by queries
    <atlas>/_lock                          held (flock) by the one run writing the atlas

Publish protocol: workers write a shard's files under ``_staging``; the driver moves each file
into place with ``os.replace`` (atomic on POSIX within one filesystem) in the order mmCIF tar,
msas, structures, failures, entries, and appends the unit to ``published.jsonl``. A reader globbing
``<table>/*.parquet`` therefore sees whole shards only; a retried unit publishes under the same
name, replacing an identical file, so rows are never duplicated. Staging is outside every glob.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import AtlasError
from storage.schema import TABLES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PUBLISH_ORDER = ("mmcif", "msas", "structures", "failures", "entries", "rejects")


def write_parquet(table: pa.Table, path: Path, provenance: dict[str, Any] | None = None) -> None:
    """Write one shard: zstd, statistics on, provenance JSON in the file's key-value metadata."""
    meta = dict(table.schema.metadata or {})
    if provenance:
        meta[b"foldatlas.provenance"] = json.dumps(provenance, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=10_000, write_statistics=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Atlas:
    """A local atlas directory."""

    def __init__(self, root: str | Path) -> None:
        if str(root).startswith("s3://"):
            raise AtlasError(
                f"{root}: S3 atlases are not supported by this version",
                hint="Use a local or shared-filesystem directory for --atlas.",
            )
        self.root = Path(root).expanduser().resolve()
        self._lock_fh: IO[str] | None = None

    # ---- layout -------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def glob(self, table: str) -> str:
        # layout: the table's current generation, symlink resolved once (storage/layout.py)
        from storage.layout import table_glob

        return table_glob(self.root, table)

    @property
    def runs_dir(self) -> Path:
        return self.root / "_runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def staging_dir(self, run_id: str) -> Path:
        return self.root / "_staging" / run_id

    def exists(self) -> bool:
        return (self.root / "atlas.json").is_file()

    def require(self) -> None:
        if not self.exists():
            raise AtlasError(f"{self.root} is not a FoldAtlas atlas (no atlas.json)",
                             hint="Create one with `foldatlas run INPUT --atlas DIR`.")

    def init(self) -> None:
        """Create the layout (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, schema in TABLES.items():
            d = self.table_dir(name)
            d.mkdir(exist_ok=True)
            marker = d / "schema.parquet"
            if not marker.exists():
                tmp = d.parent / f".{name}.schema.parquet.tmp"
                write_parquet(schema.empty_table(), tmp)
                os.replace(tmp, marker)
        (self.root / "mmcif").mkdir(exist_ok=True)
        self.runs_dir.mkdir(exist_ok=True)
        meta = self.root / "atlas.json"
        if not meta.exists():
            tmp = self.root / ".atlas.json.tmp"
            tmp.write_text(json.dumps({"format": "foldatlas", "format_version": FORMAT_VERSION,
                                       "created_at": datetime.now(UTC).isoformat()}, indent=2))
            os.replace(tmp, meta)

    # ---- locking and staging ------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive writer lock; released by the OS if the process dies (kill -9 included)."""
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
        """Remove leftovers of dead runs (call with the lock held). Returns dirs removed."""
        staging = self.root / "_staging"
        if not staging.exists():
            return 0
        n = 0
        for d in staging.iterdir():
            shutil.rmtree(d, ignore_errors=False)
            n += 1
        return n

    # ---- publishing ---------------------------------------------------------------------
    def publish_file(self, staged: Path, table: str, name: str) -> Path:
        """Atomically move a staged file to ``<atlas>/<table>/<name>``."""
        final = self.table_dir(table) / name
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, final)
        _fsync_dir(final.parent)
        return final

    def publish_unit(self, run_id: str, unit_id: str, staged: dict[str, str], counts: dict[str, int]) -> None:
        """Publish a work unit's staged files in PUBLISH_ORDER and record it."""
        for table in PUBLISH_ORDER:
            if table in staged:
                src = Path(staged[table])
                self.publish_file(src, table, src.name)
        line = {"unit_id": unit_id, "files": {t: Path(p).name for t, p in staged.items()},
                "counts": counts, "published_at": datetime.now(UTC).isoformat()}
        self.append_run_log(run_id, "published.jsonl", line)

    def append_run_log(self, run_id: str, name: str, record: dict[str, Any]) -> None:
        d = self.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / name, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_run_file(self, run_id: str, name: str, data: bytes | str) -> Path:
        d = self.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        path = d / name
        tmp = d / f".{name}.tmp"
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
        return path
