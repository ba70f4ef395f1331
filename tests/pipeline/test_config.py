"""Run configuration: the documented example loads; precedence; unknown keys are errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_documented_example_loads(tmp_path):
    example = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "run.toml"
    path.write_text(example)
    cfg = load_config(path)
    assert cfg.model.weights == "/models/esmfold_v1" and cfg.ingest.nonstandard.U == "map"
    assert cfg.confidence.tiers[0].name == "high" and cfg.ray.write_cpus == 0.5
    assert cfg.is_reference_proteome is True


def test_flags_override_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "esmfold"\nweights = "/a"\n[plan]\nunit_max_residues = 100\n')
    cfg = load_config(path, {"model": {"name": "esmfold-tiny", "weights": None}, "ray": {"address": None}})
    assert cfg.model.name == "esmfold-tiny" and cfg.model.weights == "/a" and cfg.plan.unit_max_residues == 100
    assert cfg.ray.address is None


def test_defaults_are_afdb_and_esm_atlas_rules():
    cfg = load_config()
    assert (cfg.ingest.min_length, cfg.ingest.max_length) == (16, 2700)
    high = cfg.confidence.tiers[0]
    assert (high.min_mean_plddt, high.min_ptm) == (70, 0.7)
    assert cfg.model.name == "esmfold"


@pytest.mark.parametrize("text, message", [
    ("[model]\nnmae = 'x'\n", "nmae"),
    ("[plan]\nunit_max_residues = 0\n", "unit_max_residues"),
    ("[model\n", "not valid TOML"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_ray_client_address_is_accepted_and_runs_the_driver_on_the_cluster():
    """`--address ray://HOST:10001` used to be refused (Ray Data cannot run in a Ray Client process);
    now the CLI runs the driver on the cluster (pipeline/remote.py, tests/test_ray_client.py)."""
    from pipeline.remote import is_client_address

    cfg = load_config(None, {"ray": {"address": "ray://head:10001"}})
    assert cfg.ray.address == "ray://head:10001" and is_client_address(cfg.ray.address)
    assert cfg.ray.client_ship_max_mb == 256
    for address in ("auto", "10.0.0.5:6379", None):
        assert not is_client_address(load_config(None, {"ray": {"address": address}}).ray.address)
