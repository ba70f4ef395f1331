"""Decisions a Ray Client run makes before anything runs on the cluster (pipeline/remote.py).

The end-to-end runs through a real ``ray://`` connection are in tests/test_ray_client.py; on one
machine the cluster always shares this filesystem, so the refusals are tested here with the views
of the two sides written out.
"""

from __future__ import annotations

import pytest

from pipeline.errors import AtlasError, InputError
from pipeline.remote import InputFile, check_atlas_uri, client_address, describe_input, route_inputs

MIB = 2**20


def test_inputs_are_read_in_place_shipped_or_refused():
    here = [InputFile("/data/a.fasta", 10, 1), InputFile("/data/b.fasta", 10, 1), InputFile("/data/c.fasta", 10, 1)]
    there = [InputFile("/data/a.fasta", 10, 1),  # the same file: shared filesystem
             InputFile("/data/b.fasta", 10, 2),  # another file at that path: ship ours
             InputFile("/data/c.fasta", None, None)]  # absent on the cluster: ship
    assert route_inputs(here, there, MIB) == ["shared", "ship", "ship"]
    # a path only the cluster has is read there
    assert route_inputs([InputFile("/cluster/x.fa", None, None)], [InputFile("/cluster/x.fa", 5, 1)], MIB) == ["shared"]


def test_an_input_too_big_to_ship_and_not_shared_is_refused_with_the_limit():
    big = InputFile("/data/uniprot.fasta", 300 * MIB, 1)
    with pytest.raises(InputError, match=r"300\.0 MiB, over the 256 MiB limit") as e:
        route_inputs([big], [InputFile(big.path, None, None)], 256 * MIB)
    assert "ray.client_ship_max_mb" in str(e.value)
    with pytest.raises(InputError, match="neither on this machine nor on the cluster"):
        route_inputs([InputFile("/nope.fa", None, None)], [InputFile("/nope.fa", None, None)], MIB)


def test_atlas_uri_for_the_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_atlas_uri("s3://bucket/atlas") == "s3://bucket/atlas"
    assert check_atlas_uri("atlas") == str(tmp_path / "atlas")
    with pytest.raises(AtlasError, match="s3://bucket/prefix or a shared directory"):
        check_atlas_uri("gs://bucket/atlas")
    f = tmp_path / "in.fasta"
    f.write_text(">a\nMK\n")
    seen = describe_input("in.fasta")
    assert seen.path == str(f) and seen.size == 6 and seen.mtime_ns == f.stat().st_mtime_ns


def test_client_address_from_the_flag_or_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert client_address("ray://head:10001") == "ray://head:10001"
    assert client_address(None) is None and client_address("head:6379") is None
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # ray.init() would follow it into Ray Client
    assert client_address(None) == "ray://head:10001"
    assert client_address("auto") is None  # an explicit address wins
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside `ray job submit`: a normal driver
    assert client_address(None) is None
