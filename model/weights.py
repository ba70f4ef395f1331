"""Locating model weights: a local Hugging Face-format directory or an ``s3://`` prefix.

The checksum of a weights directory is the SHA-256 over its files in sorted relative-path order,
each contributing ``<relative path>\\0<size>\\0<bytes>``; it is recorded in every artifact and
compared with ``expected_sha256`` when the operator gives one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import WeightsError

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
# Files a Hugging Face model directory holds that matter for loading.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")

HOW_TO_GET_WEIGHTS = (
    "ESMFold needs the facebook/esmfold_v1 weights in Hugging Face format (config.json plus "
    "model.safetensors or pytorch_model.bin, about 8.5 GB). On a machine with internet access run "
    "`huggingface-cli download facebook/esmfold_v1 --local-dir /models/esmfold_v1`, copy the "
    "directory to the workers (or `aws s3 sync` it to s3://bucket/models/esmfold_v1/), and pass "
    "`--weights /models/esmfold_v1` or `--weights s3://bucket/models/esmfold_v1`. "
    "For a demo without weights use `--model esmfold-tiny` (random weights, not real predictions)."
)


def weight_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    return files


def directory_sha256(directory: Path) -> str:
    """SHA-256 over the weight files of ``directory`` (see module docstring)."""
    h = hashlib.sha256()
    files = weight_files(directory)
    if not files:
        raise WeightsError(f"No weight files in {directory}", hint=HOW_TO_GET_WEIGHTS)
    for path in files:
        rel = path.relative_to(directory).as_posix()
        h.update(rel.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _cache_root() -> Path:
    return Path(os.environ.get("FOLDATLAS_CACHE", Path.home() / ".cache" / "foldatlas")) / "weights"


def download_s3_prefix(uri: str, dest: Path | None = None) -> Path:
    """Copy every object under an ``s3://bucket/prefix`` into a local directory (cached by size)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    dest = dest or _cache_root() / bucket / prefix.rstrip("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    s3 = boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")
    n = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                target = dest / rel
                if target.exists() and target.stat().st_size == obj["Size"]:
                    n += 1
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")
                log.info("downloading s3://%s/%s -> %s", bucket, obj["Key"], target)
                s3.download_file(bucket, obj["Key"], str(tmp))
                tmp.replace(target)
                n += 1
    except (BotoCoreError, ClientError) as e:
        raise WeightsError(f"Could not download weights from {uri}: {e}", hint=HOW_TO_GET_WEIGHTS) from e
    if n == 0:
        raise WeightsError(f"No objects under {uri}", hint=HOW_TO_GET_WEIGHTS)
    return dest


def resolve_weights(location: str, expected_sha256: str | None = None) -> tuple[Path, str]:
    """Return a local directory holding the weights and their SHA-256; verify when expected."""
    if location.startswith("s3://"):
        path = download_s3_prefix(location)
    else:
        path = Path(location).expanduser()
        if not path.is_dir():
            raise WeightsError(f"Weights directory {path} does not exist", hint=HOW_TO_GET_WEIGHTS)
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path} has no config.json: not a Hugging Face model directory", hint=HOW_TO_GET_WEIGHTS)
    digest = directory_sha256(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise WeightsError(
            f"Weights checksum mismatch for {location}: got {digest}, expected {expected_sha256}",
            hint="Re-download the weights, or drop --weights-sha256 if the new weights are intended.",
        )
    return path, digest
