"""``foldatlas run ... --address ray://HOST:10001``: the driver runs on the cluster, driven over Ray Client.

Ray Data's streaming executor cannot run in a Ray Client process (Ray 2.60: ``AttributeError:
'Worker' object has no attribute 'core_worker'`` at the first Ray Data step), so with a ``ray://``
address the CLI does not run the pipeline itself. It connects with Ray Client, starts one
:class:`RemoteDriver` actor on the cluster's head node (a normal Ray worker, where Ray Data works,
on the node where ``ray job submit`` would run the driver) and calls :func:`pipeline.runner.run`
there. The remote driver's log lines (progress every ``ray.progress_log_s``) reach the terminal
through Ray's ``log_to_driver``; its summary comes back as the call's result; Ctrl-C kills the actor,
which is the same as killing a local driver: the atlas stays consistent and the same command resumes.

What the cluster must see:

* the atlas: an ``s3://`` prefix, or a directory at the same path on this machine and the cluster
  (a shared filesystem); checked before the run by a probe file written here and looked for there;
* each input file: read in place when the head node has the same file at the same path (same size
  and modification time), otherwise shipped through Ray's object store up to
  ``ray.client_ship_max_mb`` per file (default 256 MiB), otherwise refused;
* the FoldAtlas code: installed on the cluster (same version: a mismatch is reported).

``AWS_*`` variables set here are forwarded to the remote driver (and by it to its workers), as a
local run forwards them to its workers.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import AtlasError, FoldAtlasError, InputError

log = logging.getLogger(__name__)

PROBE_PREFIX = ".foldatlas-client-probe-"


def is_client_address(address: str | None) -> bool:
    return bool(address) and str(address).startswith("ray://")


def client_address(configured: str | None) -> str | None:
    """The ``ray://`` address this run connects to: ``ray.address`` (``--address``), or else
    ``RAY_ADDRESS`` (which ``ray.init()`` would follow into Ray Client, where Ray Data fails)."""
    address = configured if configured is not None else os.environ.get("RAY_ADDRESS")
    return address if is_client_address(address) else None


@dataclass(frozen=True)
class InputFile:
    """An input as this machine sees it."""

    path: str  # absolute
    size: int | None  # None: not present here
    mtime_ns: int | None


def describe_input(path: str | Path) -> InputFile:
    p = Path(path).expanduser().absolute()
    try:
        st = p.stat()
    except OSError:
        return InputFile(str(p), None, None)
    return InputFile(str(p), st.st_size, st.st_mtime_ns)


def route_inputs(local: Sequence[InputFile], remote: Sequence[InputFile], max_bytes: int) -> list[str]:
    """Per input: ``"shared"`` (the cluster reads it in place) or ``"ship"``; raises when neither works."""
    out = []
    for here, there in zip(local, remote, strict=True):
        if there.size is not None and (here.size is None or (here.size, here.mtime_ns) == (there.size, there.mtime_ns)):
            out.append("shared")
        elif here.size is None:
            raise InputError(f"input {here.path} exists neither on this machine nor on the cluster's head node")
        elif here.size <= max_bytes:
            out.append("ship")
        else:
            raise InputError(
                f"input {here.path} is {here.size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit for "
                "shipping inputs to the cluster through Ray Client, and the cluster does not see the same file at "
                "that path",
                hint="Put it on a filesystem the cluster shares (same path), raise ray.client_ship_max_mb, or "
                     "submit the run as a Ray job (docs/operations.md).")
    return out


def check_atlas_uri(atlas: str) -> str:
    """The atlas as the cluster must name it: s3:// unchanged, a local path made absolute."""
    if atlas.startswith("s3://"):
        return atlas
    if "://" in atlas:
        raise AtlasError(f"{atlas}: a remote run's atlas must be s3://bucket/prefix or a shared directory")
    return str(Path(atlas).expanduser().absolute())


class RemoteDriver:
    """The FoldAtlas driver as a Ray actor on the cluster (see the module docstring)."""

    def __init__(self) -> None:
        handler = logging.StreamHandler()  # stderr: Ray streams it to the client (log_to_driver)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        for noisy in ("ray", "urllib3", "botocore", "filelock", "matplotlib", "transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        self.workdir: str | None = None

    def identity(self) -> dict[str, str]:
        from pipeline.runner import git_commit, package_version

        return {"foldatlas": package_version(), "git_commit": git_commit(), "host": os.uname().nodename}

    def look(self, inputs: list[str], probe: str | None) -> tuple[list[InputFile], bool]:
        """How this node sees the inputs, and whether it sees the probe file (None: no probe)."""
        return [describe_input(p) for p in inputs], probe is None or Path(probe).is_file()

    def run(self, inputs: list[str], shipped: dict[int, list[Any]], names: list[str], atlas: str,
            cfg: Any) -> Any:
        """``pipeline.runner.run`` here; ``shipped``: input index -> [object ref of its bytes]."""
        import ray

        from pipeline.runner import run

        paths = list(inputs)
        if shipped:
            self.workdir = tempfile.mkdtemp(prefix="foldatlas-shipped-")
        try:
            for i, (ref,) in shipped.items():
                assert self.workdir is not None
                # same file name: entries.source_file and reject rows keep the name given on the command line
                local = Path(self.workdir) / str(i) / Path(inputs[i]).name
                local.parent.mkdir()
                local.write_bytes(ray.get(ref))
                paths[i] = str(local)
            return run(paths, atlas, cfg, progress=False, input_names=names)
        finally:
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def run_remote(inputs: Sequence[str | Path], atlas: str, cfg: Any, *, echo: Any = None) -> Any:
    """Run the pipeline on the cluster at ``cfg.ray.address`` (``ray://``); returns the RunSummary."""
    import ray

    from pipeline.runner import git_commit, package_version
    from pipeline.summary import render_text
    from storage.store import aws_env

    atlas = check_atlas_uri(atlas)
    local = [describe_input(p) for p in inputs]
    env = aws_env()
    ray.init(address=client_address(cfg.ray.address), log_to_driver=True, logging_level=logging.WARNING,
             runtime_env={"env_vars": env} if env else None)
    driver: Any = None
    probe: Path | None = None
    made_atlas = False
    try:
        head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and
                     "node:__internal_head__" in n.get("Resources", {})), None)
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0}
        if head is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)
        driver = ray.remote(RemoteDriver).options(**options).remote()
        try:
            there = ray.get(driver.identity.remote())
        except ray.exceptions.RayActorError as e:
            raise FoldAtlasError(f"could not start the FoldAtlas driver on the cluster: {e}",
                                 hint="Install FoldAtlas (the same version) in the cluster's Python environment.") from e
        here = {"foldatlas": package_version(), "git_commit": git_commit()}
        if (there["foldatlas"], there["git_commit"]) != (here["foldatlas"], here["git_commit"]):
            log.warning("FoldAtlas on the cluster (%s, commit %s) differs from this one (%s, commit %s): the "
                        "cluster's code runs", there["foldatlas"], there["git_commit"][:12], here["foldatlas"],
                        here["git_commit"][:12])
        if not atlas.startswith("s3://"):
            root = Path(atlas)
            made_atlas = not root.exists()
            try:
                root.mkdir(parents=True, exist_ok=True)
                probe = root / f"{PROBE_PREFIX}{secrets.token_hex(8)}"
                probe.write_text("FoldAtlas checks that the cluster sees this atlas directory\n")
            except OSError as e:
                raise AtlasError(f"cannot write the atlas directory {atlas} here: {e}",
                                 hint="A run through Ray Client needs an s3:// atlas or a directory shared by this "
                                      "machine and the cluster at the same path.") from e
        remote_inputs, sees_atlas = ray.get(driver.look.remote([f.path for f in local], str(probe) if probe else None))
        if not sees_atlas:
            raise AtlasError(f"the cluster's head node ({there['host']}) does not see the atlas directory {atlas}",
                             hint="Use an s3:// atlas, or a directory on a filesystem shared by this machine and "
                                  "every node of the cluster, at the same path.")
        routes = route_inputs(local, remote_inputs, int(cfg.ray.client_ship_max_mb * 2**20))
        shipped = {i: [ray.put(Path(f.path).read_bytes())] for i, (f, r) in enumerate(zip(local, routes, strict=True))
                   if r == "ship"}
        names = [f"client:{f.path}" if r == "ship" else f.path for f, r in zip(local, routes, strict=True)]
        for i in shipped:
            log.info("shipping %s (%.1f MiB) to the cluster", local[i].path, (local[i].size or 0) / 2**20)
        if probe is not None:
            probe.unlink(missing_ok=True)
            probe = None
        ref = driver.run.remote([f.path for f in local], shipped, names, atlas, cfg)
        try:
            summary = ray.get(ref)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the driver on the cluster (the atlas stays consistent; the same "
                        "command resumes)")
            ray.kill(driver)
            driver = None
            raise
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, FoldAtlasError):
                raise e.cause from None
            raise
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
            if made_atlas:
                shutil.rmtree(probe.parent, ignore_errors=True)
        if driver is not None:
            ray.kill(driver)
        ray.shutdown()
    if echo:
        echo(render_text(summary))
    return summary
