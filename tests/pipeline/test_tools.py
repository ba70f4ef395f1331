"""Tests for pipeline.tools: the one wrapper around external programs, and scratch space."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys

import pytest

from pipeline.errors import FoldAtlasError
from pipeline.tools import SCRATCH_ENV, ToolError, ToolNotFound, run_tool, scratch_dir, tool_version

PY = sys.executable


def test_run_tool_returns_output_and_logs_the_exact_command(caplog):
    args = [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)", "a b"]
    with caplog.at_level(logging.INFO, logger="pipeline.tools"):
        proc = run_tool(args)
    assert proc.returncode == 0
    assert proc.stdout == "out\n" and proc.stderr == "err\n"
    assert any(shlex.join(args) in r.getMessage() for r in caplog.records)


def test_failure_raises_tool_error_with_the_stderr_tail():
    script = "import sys\nfor i in range(100): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(ToolError) as info:
        run_tool([PY, "-c", script], tool_name="demo")
    err = info.value
    assert isinstance(err, FoldAtlasError)
    assert err.tool == "demo" and err.returncode == 3
    tail = err.stderr_tail.splitlines()
    assert len(tail) == 40 and tail[0] == "line 60" and tail[-1] == "line 99"
    assert "line 99" in str(err) and "exited with status 3" in str(err)
    assert "hint:" in str(err)
    assert err.command.startswith(shlex.quote(PY))


def test_failure_without_stderr_reports_stdout():
    with pytest.raises(ToolError) as info:
        run_tool([PY, "-c", "print('only stdout'); raise SystemExit(1)"])
    assert info.value.stderr_tail == "only stdout"


def test_timeout_raises_tool_error():
    with pytest.raises(ToolError) as info:
        run_tool([PY, "-c", "import time; time.sleep(30)"], timeout=0.5, tool_name="sleeper")
    assert info.value.returncode is None
    assert "timed out after 0.5 s" in str(info.value)


def test_missing_program_raises_tool_not_found_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing is found
    with pytest.raises(ToolNotFound) as info:
        run_tool(["mmseqs", "version"])
    assert info.value.tool == "mmseqs"
    assert "apt-get install mmseqs2" in str(info.value)
    assert "hmmer" in str(info.value)
    with pytest.raises(ToolNotFound):
        run_tool(["no-such-program-foldatlas"])


@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs not installed")
def test_tool_version_of_mmseqs():
    direct = subprocess.run(["mmseqs", "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert tool_version("mmseqs") == direct
    assert direct  # e.g. 14-7e284+ds-1+b2


def test_scratch_dir_uses_env_and_is_always_removed(tmp_path, monkeypatch):
    root = tmp_path / "scratch"
    monkeypatch.setenv(SCRATCH_ENV, str(root))
    with scratch_dir("unit-") as d:
        assert d.parent == root and d.name.startswith("unit-")
        (d / "sub").mkdir()
        (d / "sub" / "f").write_text("x")
    assert not d.exists()
    with pytest.raises(RuntimeError), scratch_dir() as d2:
        (d2 / "f").write_text("x")
        raise RuntimeError("boom")
    assert not d2.exists()
    assert list(root.iterdir()) == []


def test_scratch_dir_defaults_to_the_temp_dir(monkeypatch):
    import tempfile
    from pathlib import Path

    monkeypatch.delenv(SCRATCH_ENV, raising=False)
    with scratch_dir() as d:
        assert d.parent == Path(tempfile.gettempdir())
    assert not d.exists()
