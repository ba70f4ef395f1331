"""Shared fixtures: paths to test data, one tiny ESMFold per session, one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_backend():
    from model.esmfold import ESMFoldBackend, ESMFoldSettings

    return ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 cores: stages use fractional CPUs)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
