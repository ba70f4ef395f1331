"""Structure shards: an uncompressed POSIX tar of individually compressed members.

A shard holds one work unit's published files: since atlas format 2, one compact structure record
per structure (``<entry>-model_v1.fac``, :mod:`storage.compact`, stored as it is: it is compressed
already); gzipped files (``*.gz``, e.g. ``<entry>-model_v1.cif.gz``) remain supported. The tar itself is NOT compressed, so each
member's bytes sit contiguously at a known offset: :func:`write_mmcif_shard` returns a
:class:`ShardMember` index (offset of the member's data inside the tar, its stored = compressed
size, sha256 of the stored bytes) and :func:`read_shard_member` reads ONE member by seeking to that
range, without reading the rest of the shard (on S3 that is one ranged GET). The same file is a
plain tar for bulk users: ``tar -xf shard.tar`` then ``gunzip``, or :func:`iter_shard`.

Shards are deterministic for the same members: PAX (POSIX.1-2001) format, which for short ASCII
names is byte-identical to ustar; mtime 0, uid/gid 0, no user/group names, mode 0644; members
compressed here use gzip with mtime 0 and no file name.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

__all__ = [
    "RECORD_SUFFIX",
    "ShardMember",
    "iter_shard",
    "read_shard_index",
    "read_shard_member",
    "read_shard_range",
    "write_mmcif_shard",
]

_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = tarfile.BLOCKSIZE  # 512


@dataclass(frozen=True)
class ShardMember:
    """Where one member's bytes are in a shard.

    Attributes:
        name: member name inside the tar (ends with ``.gz``).
        offset: byte offset of the member's data (after its tar header) from the start of the tar.
        size: number of stored (gzip-compressed) bytes.
        sha256: hex SHA-256 of the stored (compressed) bytes, to verify a ranged read.
    """

    name: str
    offset: int
    size: int
    sha256: str


#: Compact structure records (:mod:`storage.compact`) are compressed already: stored as they are.
RECORD_SUFFIX = ".fac"


def _stored_bytes(name: str, data: bytes) -> bytes:
    """Gzip ``data`` unless it already is a gzip stream (which is then checked to decompress)."""
    if name.endswith(RECORD_SUFFIX):
        return data
    if not name.endswith(".gz"):
        raise ValueError(f"shard member names end with .gz (gzip files) or {RECORD_SUFFIX} (compact "
                         f"records), got {name!r}")
    if data[:2] != _GZIP_MAGIC:
        return gzip.compress(data, compresslevel=6, mtime=0)
    try:
        gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"member {name!r} starts like gzip but does not decompress: {e}") from e
    return data


def write_mmcif_shard(
    path: str | os.PathLike[str], members: Iterable[tuple[str, bytes]]
) -> list[ShardMember]:
    """Write a shard tar at ``path`` and return the member index, in member order.

    Args:
        path: the tar file to create (its parent directory is created; an existing file is replaced).
        members: ``(name, data)`` pairs. Names must end with ``.gz`` and be unique; ``data`` is
            either the uncompressed file (mmCIF or JSON text bytes), compressed here, or an
            already gzip-compressed stream, stored as is.

    Raises:
        ValueError: a duplicate or invalid name, or corrupt gzip data.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    index: list[ShardMember] = []
    seen: set[str] = set()
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            if name in seen:
                raise ValueError(f"duplicate shard member {name!r}")
            if not name or name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"shard member names must be relative paths without '..', got {name!r}")
            seen.add(name)
            stored = _stored_bytes(name, data)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(stored), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, BytesIO(stored))
            # tar.offset is now past the member's data, padded to whole 512-byte blocks.
            padded = -(-len(stored) // _BLOCK) * _BLOCK
            offset = tar.offset - padded
            index.append(ShardMember(name, offset, len(stored), hashlib.sha256(stored).hexdigest()))
    logger.debug("wrote shard %s: %d members, %d bytes", target, len(index), target.stat().st_size)
    return index


def read_shard_member(
    source: str | os.PathLike[str] | BinaryIO, offset: int, size: int, *, sha256: str | None = None
) -> bytes:
    """Read one member's stored bytes at ``offset``/``size`` and return them decompressed.

    Only that byte range is read. ``source`` is a path or a seekable binary file object.

    Raises:
        ValueError: the range is past the end of the file, the checksum differs, or the bytes
            are not a gzip stream (wrong offset or size).
    """
    stored = read_shard_range(source, offset, size, sha256=sha256)
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"bytes at offset {offset} (size {size}) are not a gzip member: {e}") from e


def read_shard_range(
    source: str | os.PathLike[str] | BinaryIO, offset: int, size: int, *, sha256: str | None = None
) -> bytes:
    """Read one member's stored bytes at ``offset``/``size`` as they are (compact records).

    Raises:
        ValueError: the range is past the end of the file or the checksum differs.
    """
    if offset < 0 or size < 0:
        raise ValueError(f"offset and size must be >= 0, got {offset}, {size}")
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            fh.seek(offset)
            stored = fh.read(size)
    else:
        source.seek(offset)
        stored = source.read(size)
    if len(stored) != size:
        raise ValueError(f"shard is too short: wanted {size} bytes at offset {offset}, got {len(stored)}")
    if sha256 is not None and hashlib.sha256(stored).hexdigest() != sha256:
        raise ValueError(f"member at offset {offset} fails its sha256 check; the shard or its index is wrong")
    return stored


def read_shard_index(path: str | os.PathLike[str]) -> list[ShardMember]:
    """Rebuild the member index from the tar headers (reads every member to hash it)."""
    return [ShardMember(info.name, info.offset_data, info.size, hashlib.sha256(stored).hexdigest())
            for info, stored in _stored_members(path, "r:")]


def _stored_members(path: str | os.PathLike[str], mode: str) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """Regular members of a shard with their stored (compressed) bytes, in order."""
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info in tar:
            fh = tar.extractfile(info) if info.isfile() else None
            if fh is not None:
                yield info, fh.read()


def iter_shard(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, decompressed bytes)`` for every member, in order, streaming the tar.

    Compact records (``.fac``) are yielded as stored; :func:`storage.structure_record.read_record`
    decodes them.
    """
    for info, stored in _stored_members(path, "r|"):
        yield info.name, stored if info.name.endswith(RECORD_SUFFIX) else gzip.decompress(stored)
