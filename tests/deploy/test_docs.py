"""The operator docs point at files that exist and name the Ray version the images pin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "operations.md", ROOT / "deploy" / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_deploy_paths_exist(doc: Path) -> None:
    text = doc.read_text()
    links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in m]
    paths = set(re.findall(r"\bdeploy/[\w./-]+\.(?:yaml|toml|md|sh)\b|\bdeploy/Dockerfile\b", text))
    missing = [p for p in links if not (doc.parent / p).exists()] + [p for p in paths if not (ROOT / p).exists()]
    assert links and paths and missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_ray_version_in_docs_is_the_pinned_one(doc: Path) -> None:
    import ray

    versions = set(re.findall(r"ray\[[a-z,]+\]==([\d.]+)|\bRay (\d+\.\d+\.\d+)", doc.read_text()))
    found = {v for pair in versions for v in pair if v}
    assert found == {ray.__version__}
