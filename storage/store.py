"""Where atlas and release files live: a local directory or an ``s3://bucket/prefix``.

:class:`Store` is the one place that knows the difference. Paths given to its methods are
relative to the store's root, with ``/`` separators. Everything above it (the atlas, export,
download, validate) is written once against this interface.

Local stores write through a temporary file and ``os.replace`` (atomic on POSIX), with fsync.

S3 stores use boto3 for writes (``PutObject`` for small bodies, managed multipart uploads for
files above 64 MiB) and deletes, and pyarrow's S3 filesystem for reading Parquet and for DuckDB
(registered with :meth:`Store.register_duckdb`, so plain ``read_parquet('s3://...')`` works
without DuckDB's httpfs extension). An S3 object appears whole or not at all, so a single PUT or a
completed multipart upload is the atomic publish step; a server-side ``CopyObject`` from a staging
key is too.

Credentials come from the standard AWS chain (environment, shared config/credentials files,
instance or pod roles). The endpoint of an S3-compatible store (MinIO, Ceph, moto) comes from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, the variables boto3 itself reads. Calls are retried
with backoff (botocore's ``adaptive`` mode, 10 attempts; pyarrow's standard strategy likewise).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import AtlasError

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 64 * 1024 * 1024
S3_MAX_ATTEMPTS = 10


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")`` (no trailing slash)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise AtlasError(f"{uri}: no bucket name", hint="Write s3://BUCKET/PREFIX.")
    return bucket, key.strip("/")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def aws_env() -> dict[str, str]:
    """This process's ``AWS_*`` settings (endpoint, region, credentials, profile), for Ray workers.

    Workers of a Ray instance started before these were set (or on other nodes) do not inherit them;
    the stages pass them in ``runtime_env``. Unset variables are not passed, so instance roles and
    IRSA on the workers keep working.
    """
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def s3_client() -> Any:
    """A boto3 S3 client: standard credential chain, endpoint override, retries with backoff."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "adaptive"}, max_pool_connections=32)
    endpoint = s3_endpoint()
    return boto3.client("s3", endpoint_url=endpoint, config=cfg) if endpoint else boto3.client("s3", config=cfg)


def arrow_s3_filesystem() -> Any:
    """pyarrow's S3 filesystem with the same endpoint, credentials and region as :func:`s3_client`."""
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)}
    endpoint = s3_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:  # otherwise the AWS SDK's own default chain (config files, roles)
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def duckdb_s3_filesystem() -> Any:
    """An fsspec filesystem for the ``s3`` protocol over pyarrow's S3 client, for DuckDB."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class _S3(ArrowFSWrapper):  # DuckDB routes paths by the filesystem's protocol names
        protocol = ("s3",)

    return _S3(arrow_s3_filesystem())


@dataclass(frozen=True)
class Entry:
    """One listed file: path relative to the store root, size in bytes."""

    path: str
    size: int


class Store(ABC):
    """A root location for files: local directory or S3 prefix. Create with :func:`open_store`."""

    uri: str

    # ---- to implement -----------------------------------------------------------------
    @property
    @abstractmethod
    def is_local(self) -> bool: ...

    @abstractmethod
    def url(self, rel: str = "") -> str:
        """Absolute location of ``rel``: a filesystem path or an ``s3://`` URI."""

    @abstractmethod
    def exists(self, rel: str) -> bool:
        ...

    @abstractmethod
    def size(self, rel: str) -> int:
        ...

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        ...

    @abstractmethod
    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        ...

    @abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically (readers see the old file, or none, or the new one)."""

    @abstractmethod
    def put_file(self, local: str | Path, rel: str) -> None:
        """Copy a local file into the store atomically (large files: multipart upload on S3)."""

    @abstractmethod
    def get_file(self, rel: str, local: str | Path) -> None:
        """Copy a file out of the store to a local path (written via a temporary file)."""

    @abstractmethod
    def list(self, prefix: str = "", suffix: str = "") -> list[Entry]:
        """Files under ``prefix`` (recursively), sorted by path."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        ...

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Publish ``src`` as ``dst`` atomically and remove ``src`` (rename; server-side copy on S3)."""

    @abstractmethod
    def open_read(self, rel: str) -> BinaryIO:
        """A seekable binary file for streaming reads."""

    def register_duckdb(self, con: Any) -> None:  # local paths need nothing registered
        """Make :meth:`url` paths readable by ``read_parquet`` on this DuckDB connection."""
        return None

    # ---- shared -----------------------------------------------------------------------
    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def child(self, rel: str) -> Store:
        return open_store(self.url(rel))

    def duckdb(self) -> Any:
        """A new in-memory DuckDB connection able to read this store."""
        import duckdb

        con = duckdb.connect()
        self.register_duckdb(con)
        return con

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    @property
    def is_local(self) -> bool:
        return True

    def path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def url(self, rel: str = "") -> str:
        return str(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def size(self, rel: str) -> int:
        return self.path(rel).stat().st_size

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        with open(self.path(rel), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def _atomic(self, rel: str) -> tuple[Path, Path]:
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final, final.parent / f".{final.name}.{os.getpid()}.tmp"

    def write_bytes(self, rel: str, data: bytes) -> None:
        final, tmp = self._atomic(rel)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def put_file(self, local: str | Path, rel: str) -> None:
        final, tmp = self._atomic(rel)
        shutil.copyfile(local, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def get_file(self, rel: str, local: str | Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".{local.name}.part"
        shutil.copyfile(self.path(rel), tmp)
        os.replace(tmp, local)

    def list(self, prefix: str = "", suffix: str = "") -> list[Entry]:
        base = self.path(prefix)
        if base.is_file():
            return [Entry(prefix, base.stat().st_size)] if base.name.endswith(suffix) else []
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.is_file() and p.name.endswith(suffix) and not p.name.startswith("."):
                out.append(Entry(p.relative_to(self.root).as_posix(), p.stat().st_size))
        return sorted(out, key=lambda e: e.path)

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        p = self.path(prefix)
        if not p.exists():
            return 0
        n = sum(1 for q in p.rglob("*") if q.is_file()) if p.is_dir() else 1
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        return n

    def move(self, src: str, dst: str) -> None:
        s, d = self.path(src), self.path(dst)
        d.parent.mkdir(parents=True, exist_ok=True)
        with open(s, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(s, d)
        fsync_dir(d.parent)

    def open_read(self, rel: str) -> BinaryIO:
        return open(self.path(rel), "rb")


class S3Store(Store):
    def __init__(self, uri: str) -> None:
        self.bucket, self.prefix = split_s3(uri)
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def is_local(self) -> bool:
        return False

    @cached_property
    def client(self) -> Any:
        return s3_client()

    @cached_property
    def arrow_fs(self) -> Any:
        return arrow_s3_filesystem()

    def __getstate__(self) -> dict[str, Any]:  # clients are rebuilt in each process (Ray workers)
        return {"bucket": self.bucket, "prefix": self.prefix, "uri": self.uri}

    def key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix and rel else (self.prefix or rel)

    def url(self, rel: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(rel)}".rstrip("/")

    def _err(self, e: Exception, what: str) -> AtlasError:
        return AtlasError(f"S3 {what} failed for {self.uri}: {e}",
                          hint="Check the bucket, credentials (AWS_* variables or ~/.aws) and "
                               "AWS_ENDPOINT_URL for S3-compatible stores.")

    def _head(self, rel: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key(rel)))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._err(e, f"HEAD {rel}") from e

    def exists(self, rel: str) -> bool:
        return self._head(rel) is not None

    def size(self, rel: str) -> int:
        head = self._head(rel)
        if head is None:
            raise FileNotFoundError(self.url(rel))
        return int(head["ContentLength"])

    def read_bytes(self, rel: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(self.url(rel)) from e
            raise self._err(e, f"GET {rel}") from e

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        resp = self.client.get_object(Bucket=self.bucket, Key=self.key(rel),
                                      Range=f"bytes={offset}-{offset + length - 1}")
        return bytes(resp["Body"].read())

    def write_bytes(self, rel: str, data: bytes) -> None:
        if len(data) > MULTIPART_THRESHOLD:
            with tempfile.NamedTemporaryFile() as tmp:
                tmp.write(data)
                tmp.flush()
                self.put_file(tmp.name, rel)
            return
        self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
                              max_concurrency=4)

    def put_file(self, local: str | Path, rel: str) -> None:
        self.client.upload_file(str(local), self.bucket, self.key(rel), Config=self._transfer_config())

    def get_file(self, rel: str, local: str | Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".{local.name}.part"
        self.client.download_file(self.bucket, self.key(rel), str(tmp), Config=self._transfer_config())
        os.replace(tmp, local)

    def _iter(self, prefix: str) -> Iterator[dict[str, Any]]:
        key = self.key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
            yield from page.get("Contents", [])

    def list(self, prefix: str = "", suffix: str = "") -> list[Entry]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        out = []
        base = self.key(prefix)
        for obj in self._iter(prefix):
            k = obj["Key"]
            if k != base and prefix and not k.startswith(base.rstrip("/") + "/"):
                continue  # "entries" must not match "entries_old/..."
            name = k.rsplit("/", 1)[-1]
            if k.endswith(suffix) and not name.startswith("."):
                out.append(Entry(k[cut:], int(obj["Size"])))
        return sorted(out, key=lambda e: e.path)

    def delete(self, rel: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.key(e.path) for e in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        return len(keys)

    def move(self, src: str, dst: str) -> None:
        self.client.copy({"Bucket": self.bucket, "Key": self.key(src)}, self.bucket, self.key(dst),
                         Config=self._transfer_config())
        self.delete(src)

    def open_read(self, rel: str) -> BinaryIO:
        return self.arrow_fs.open_input_file(f"{self.bucket}/{self.key(rel)}")

    def register_duckdb(self, con: Any) -> None:
        con.register_filesystem(duckdb_s3_filesystem())


def open_store(location: str | os.PathLike[str] | Store) -> Store:
    """The store at ``location``: an ``s3://bucket/prefix`` URI or a local path."""
    if isinstance(location, Store):
        return location
    s = str(location)
    if is_s3(s):
        return S3Store(s)
    if "://" in s:
        raise AtlasError(f"{s}: unsupported location", hint="Use a local path or s3://bucket/prefix.")
    return LocalStore(s)
