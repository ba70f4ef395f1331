"""Tests for storage.mmcif_shard: tar of gzip members with a byte-range index.

The index is checked against the standard ``tarfile`` module's own view of the archive (and the
``tar`` command when present), and random-access reads against the input bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.mmcif_shard import (
    ShardMember,
    iter_shard,
    read_shard_index,
    read_shard_member,
    write_mmcif_shard,
)
from tests.afdb_data import AFDB, ENTRIES, METADATA, read_csv  # noqa: F401


def afdb_members() -> list[tuple[str, bytes]]:
    members = []
    for accession in ENTRIES:
        members.append(
            (f"AF-{accession}-F1-model_v4.cif.gz", (AFDB / f"AF-{accession}-F1-model_v4.cif").read_bytes())
        )
        pae = (AFDB / f"AF-{accession}-F1-predicted_aligned_error_v4.json").read_bytes()
        members.append((f"AF-{accession}-F1-predicted_aligned_error_v4.json.gz", gzip.compress(pae, mtime=0)))
    return members


def _tarfile_view(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def test_index_matches_tarfile_and_random_access(tmp_path: Path) -> None:
    members = afdb_members()
    path = tmp_path / "unit-0001.tar"
    index = write_mmcif_shard(path, members)
    assert [m.name for m in index] == [name for name, _ in members]
    assert _tarfile_view(path) == {m.name: (m.offset, m.size) for m in index}
    raw = path.read_bytes()
    for (_, data), member in zip(members, index, strict=True):
        stored = raw[member.offset : member.offset + member.size]
        assert stored[:2] == b"\x1f\x8b" and hashlib.sha256(stored).hexdigest() == member.sha256
        expected = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert read_shard_member(path, member.offset, member.size, sha256=member.sha256) == expected
        with open(path, "rb") as fh:
            assert read_shard_member(fh, member.offset, member.size) == expected
    # pre-compressed members are stored unchanged
    assert raw[index[1].offset : index[1].offset + index[1].size] == members[1][1]
    # the standard module extracts the same bytes
    with tarfile.open(path, "r:") as tar:
        for (name, _), member in zip(members, index, strict=True):
            fh = tar.extractfile(name)
            assert fh is not None
            assert gzip.decompress(fh.read()) == read_shard_member(path, member.offset, member.size)
    assert read_shard_index(path) == index
    assert [(n, d) for n, d in iter_shard(path)] == [
        (name, gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data) for name, data in members
    ]


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_tar_command_reads_the_shard(tmp_path: Path) -> None:
    members = afdb_members()
    path = tmp_path / "unit.tar"
    write_mmcif_shard(path, members)
    listing = subprocess.run(
        ["tar", "-tf", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing == [name for name, _ in members]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(path), "-C", str(out)], check=True)
    cif = gzip.decompress((out / "AF-P00221-F1-model_v4.cif.gz").read_bytes())
    assert cif == (AFDB / "AF-P00221-F1-model_v4.cif").read_bytes()


def test_shards_are_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    assert write_mmcif_shard(a, afdb_members()) == write_mmcif_shard(b, afdb_members())
    assert a.read_bytes() == b.read_bytes()


def test_long_member_names(tmp_path: Path) -> None:
    name = "FA-" + "A" * 120 + "-F1-model_v1.cif.gz"  # longer than ustar's 100-character name field
    index = write_mmcif_shard(tmp_path / "s.tar", [(name, b"data_x\n#\n")])
    assert _tarfile_view(tmp_path / "s.tar") == {name: (index[0].offset, index[0].size)}
    assert read_shard_member(tmp_path / "s.tar", index[0].offset, index[0].size) == b"data_x\n#\n"


def test_bad_input_and_bad_reads(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    with pytest.raises(ValueError, match="duplicate"):
        write_mmcif_shard(path, [("a.cif.gz", b"x"), ("a.cif.gz", b"y")])
    with pytest.raises(ValueError, match=r"\.gz"):
        write_mmcif_shard(path, [("a.cif", b"x")])
    with pytest.raises(ValueError, match="relative"):
        write_mmcif_shard(path, [("../a.cif.gz", b"x")])
    with pytest.raises(ValueError, match="does not decompress"):
        write_mmcif_shard(path, [("a.cif.gz", b"\x1f\x8b\x08garbage")])
    (member,) = write_mmcif_shard(path, [("a.cif.gz", b"data_a\n")])
    with pytest.raises(ValueError, match="sha256"):
        read_shard_member(path, member.offset, member.size, sha256="0" * 64)
    with pytest.raises(ValueError, match="not a gzip member"):
        read_shard_member(path, member.offset - 512, member.size)
    with pytest.raises(ValueError, match="too short"):
        read_shard_member(path, path.stat().st_size - 10, 100)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=3000),
            st.sampled_from([0, 1, 511, 512, 513, 1024, 10240]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.randoms(use_true_random=False),
)
def test_index_property_random_member_sizes(sizes: list[int], rng: random.Random) -> None:
    members = []
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        if data[:2] == b"\x1f\x8b":
            data = b"x" + data[1:]
        if rng.random() < 0.3:  # some members arrive already compressed, with a random level
            data = gzip.compress(data, compresslevel=rng.randint(0, 9), mtime=0)
        members.append((f"m{i:03d}-{'n' * rng.randint(0, 150)}.cif.gz", data))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tar"
        index = write_mmcif_shard(path, members)
        assert all(isinstance(m, ShardMember) for m in index)
        assert _tarfile_view(path) == {m.name: (m.offset, m.size) for m in index}
        assert all(m.offset % 512 == 0 for m in index)
        buffer = io.BytesIO(path.read_bytes())
        for (_, data), member in zip(members, index, strict=True):
            expected = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            assert read_shard_member(buffer, member.offset, member.size, sha256=member.sha256) == expected
