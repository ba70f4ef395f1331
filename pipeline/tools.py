"""External programs: the one module that starts them.

Every external program FoldAtlas runs (today only ``mmseqs``) goes through :func:`run_tool`, which

* finds the executable on ``PATH`` first and raises :class:`ToolNotFound` with an install hint,
* logs the exact command line (``shlex.join``) at INFO before it starts,
* captures stdout and stderr, and on a non-zero exit or a timeout raises :class:`ToolError` with
  the tool's last ~40 lines of stderr (stdout when stderr is empty),

and :func:`scratch_dir` gives node-local scratch space (``$FOLDATLAS_SCRATCH``, else the system
temporary directory) that is removed when the block ends, on success or failure. Programs with
in-process Python bindings (HMMER through pyhmmer) do not come through here.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import FoldAtlasError

logger = logging.getLogger(__name__)

__all__ = [
    "SCRATCH_ENV",
    "STDERR_TAIL_LINES",
    "ToolError",
    "ToolNotFound",
    "run_tool",
    "scratch_dir",
    "tool_version",
]

#: Environment variable naming a node-local scratch directory (fast local disk on cluster nodes).
SCRATCH_ENV = "FOLDATLAS_SCRATCH"
#: How many lines of a failed tool's stderr the error keeps.
STDERR_TAIL_LINES = 40

_INSTALL_HINTS: dict[str, str] = {
    "mmseqs": (
        "install MMseqs2 (Debian/Ubuntu: `apt-get install mmseqs2`; conda: `conda install -c bioconda "
        "mmseqs2`) and put `mmseqs` on PATH, or use the built-in HMMER backend (pyhmmer): "
        "`foldatlas msa-db build --tool hmmer`"
    ),
    "jackhmmer": "install HMMER (`apt-get install hmmer` or `conda install -c bioconda hmmer`)",
}

#: Arguments that print a version, per program (default ``--version``).
_VERSION_ARGS: dict[str, tuple[str, ...]] = {"mmseqs": ("version",)}


class ToolError(FoldAtlasError):
    """An external program failed: non-zero exit, timeout, or it could not be started.

    Attributes:
        tool: program name (``mmseqs``).
        returncode: exit status; ``None`` for a timeout or a program that never started.
        stderr_tail: the last lines of its stderr (or stdout when stderr was empty).
        command: the exact command line, shell-quoted.
    """

    hint = (
        "read the tool's message above (the command line is logged at INFO by pipeline.tools). "
        "Out-of-memory or full-disk failures can be retried with fewer threads or more scratch space "
        f"(${SCRATCH_ENV})"
    )

    def __init__(
        self,
        message: str,
        *,
        tool: str,
        returncode: int | None,
        stderr_tail: str = "",
        command: str = "",
        hint: str = "",
    ) -> None:
        self.tool = tool
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.command = command
        body = message
        if stderr_tail:
            body += f"\n--- {tool} output (last lines) ---\n{stderr_tail}\n---"
        super().__init__(body, hint=hint)


class ToolNotFound(FoldAtlasError):
    """An external program is not installed or not on ``PATH``."""

    def __init__(self, tool: str, *, hint: str = "") -> None:
        self.tool = tool
        super().__init__(
            f"{tool!r} was not found on PATH",
            hint=hint or _INSTALL_HINTS.get(tool, f"install {tool} and put it on PATH"),
        )


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_tool(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    tool_name: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one external program to completion and return its captured output.

    Args:
        args: the program and its arguments (no shell). ``args[0]`` is looked up on ``PATH``.
        cwd: working directory.
        timeout: seconds before the program is killed (``None``: no limit).
        tool_name: name used in logs and errors (default: the program's file name).

    Raises:
        ToolNotFound: the program is not on ``PATH``.
        ToolError: it exited non-zero, timed out, or could not be started.
    """
    if not args:
        raise ValueError("run_tool needs at least the program name")
    argv = [os.fspath(a) for a in args]
    tool = tool_name or Path(argv[0]).name
    exe = shutil.which(argv[0])
    if exe is None:
        raise ToolNotFound(tool, hint=_INSTALL_HINTS.get(Path(argv[0]).name, ""))
    command = shlex.join(argv)
    logger.info("running %s", command)
    try:
        proc = subprocess.run(
            [exe, *argv[1:]], cwd=cwd, capture_output=True, text=True, errors="replace",
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stderr or e.stdout or ""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise ToolError(
            f"{tool} timed out after {timeout:g} s: {command}", tool=tool, returncode=None,
            stderr_tail=_tail(text), command=command,
            hint="raise the timeout, or split the work into smaller units",
        ) from e
    except OSError as e:
        raise ToolError(f"{tool} could not be started: {e}: {command}", tool=tool, returncode=None,
                        command=command) from e
    if proc.returncode != 0:
        tail = _tail(proc.stderr) or _tail(proc.stdout)
        raise ToolError(f"{tool} exited with status {proc.returncode}: {command}", tool=tool,
                        returncode=proc.returncode, stderr_tail=tail, command=command)
    logger.debug("%s finished; stderr tail:\n%s", tool, _tail(proc.stderr, 5))
    return proc


def tool_version(exe: str) -> str:
    """The version string a program prints (first non-empty output line), e.g. ``14-7e284+ds-1+b2``.

    ``mmseqs`` is asked with ``mmseqs version``; other programs with ``--version``.

    Raises:
        ToolNotFound, ToolError: as :func:`run_tool`.
    """
    name = Path(exe).name
    proc = run_tool([exe, *_VERSION_ARGS.get(name, ("--version",))], timeout=60, tool_name=name)
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        if line.strip():
            return line.strip()
    raise ToolError(f"{name} printed no version", tool=name, returncode=proc.returncode)


def scratch_root() -> Path:
    """Where scratch directories go: ``$FOLDATLAS_SCRATCH`` (created if missing) or the temp dir."""
    env = os.environ.get(SCRATCH_ENV)
    if env:
        root = Path(env)
        root.mkdir(parents=True, exist_ok=True)
        return root
    return Path(tempfile.gettempdir())


@contextmanager
def scratch_dir(prefix: str = "foldatlas-") -> Iterator[Path]:
    """A fresh directory on node-local scratch, removed with everything in it when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            logger.warning("could not remove scratch directory %s", path)
