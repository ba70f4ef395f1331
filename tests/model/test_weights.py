"""Weights from an s3:// prefix, through a real S3 server (moto_server on 127.0.0.1)."""

from __future__ import annotations

import boto3
import numpy as np
import pytest

from model.esmfold import ESMFoldBackend, ESMFoldSettings
from model.weights import directory_sha256, resolve_weights
from pipeline.errors import WeightsError

pytestmark = pytest.mark.s3


def test_esmfold_loads_weights_from_s3(s3_server, tmp_path, tiny_backend, monkeypatch):
    local = tmp_path / "saved"
    tiny_backend.model.save_pretrained(local)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="models")
    for f in local.iterdir():
        s3.upload_file(str(f), "models", f"esmfold-test/{f.name}")
    monkeypatch.setenv("FOLDATLAS_CACHE", str(tmp_path / "cache"))
    backend = ESMFoldBackend(ESMFoldSettings(name="esmfold", weights="s3://models/esmfold-test",
                                             weights_sha256=directory_sha256(local)))
    assert backend.info.weights_sha256 == directory_sha256(local)
    seq = "MAATTTTMMGMATTFVPKPQ"
    np.testing.assert_allclose(backend.predict([seq])[0].plddt, tiny_backend.predict([seq])[0].plddt, atol=1e-4)
    # a second resolve uses the cache (same sizes) and gives the same checksum
    assert resolve_weights("s3://models/esmfold-test")[1] == directory_sha256(local)


def test_missing_s3_prefix_is_a_clear_error(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDATLAS_CACHE", str(tmp_path / "cache"))
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="empty")
    with pytest.raises(WeightsError, match="No objects under s3://empty/nothing"):
        resolve_weights("s3://empty/nothing")
    with pytest.raises(WeightsError, match="Could not download"):
        resolve_weights("s3://no-such-bucket/x")
