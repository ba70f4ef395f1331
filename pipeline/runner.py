"""The proteome run: ingest -> plan -> (Ray Data: fold -> write) -> publish, with progress.

The driver (this module) ingests and plans, publishes rejects and link entries itself, then
streams work units through a Ray Data job (a fold actor pool, GPU actors when GPUs exist, and a
write actor pool) and publishes each unit's staged shards as its manifest arrives. Killing the
driver at any moment leaves a consistent atlas; the same command resumes (see
:mod:`storage.atlas` for the protocol and :mod:`pipeline.plan` for what is skipped).

Ingest and plan stream (:mod:`pipeline.spill`, :mod:`pipeline.plan`): records live in Parquet
under the run's scratch directory ``<staging>/_plan/`` (a local atlas: inside
``<atlas>/_staging/<run_id>/``, which every node of a cluster sees when the atlas is on a shared
filesystem; an S3 atlas: the driver's temp directory, and the units files are uploaded to the
atlas's ``_staging/<run_id>/_plan/`` for the workers). The Ray Data job starts from one small row
per unit (its id and where its payload lies in the units Parquet) and loads each payload in a
first actor stage (MSA or fold), one unit per block, so the driver never holds the records and a
crash costs one unit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig, dump_config
from pipeline.fold import FoldSettings
from pipeline.ingest import AcceptedRecord
from pipeline.msa_stage import MSASpec, make_spec
from pipeline.oom_route import OOMLedger, PoolRoute, resume_fragmented
from pipeline.plan import StreamPlan, WorkUnit, unit_id_for, units_plan
from pipeline.plan import route_long as route_long  # re-exported (tests, tools)
from pipeline.summary import RunSummary, plddt_histogram_png, render_text
from pipeline.write import WriteContext, entry_rows_for_links
from storage.atlas import Atlas
from storage.layout import write_shard
from storage.schema import REJECTS_SCHEMA
from storage.store import aws_env

log = logging.getLogger(__name__)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("foldatlas")
    except PackageNotFoundError:
        return "0+unknown"


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _model_settings(cfg: RunConfig, chunk_size: int | None = None) -> Any:
    from model.esmfold import ESMFoldSettings

    m = cfg.model
    from model.fastpath import FastPathSettings

    return ESMFoldSettings(name=m.name, weights=m.weights, weights_sha256=m.weights_sha256, device=m.device,
                           precision=m.precision, num_recycles=m.num_recycles, chunk_size=chunk_size or m.chunk_size,
                           fast=FastPathSettings() if m.fast_path else None)


def _check_model_inputs(cfg: RunConfig) -> None:
    """Fail before any work when the model cannot be loaded (missing weights)."""
    from model.weights import HOW_TO_GET_WEIGHTS
    from pipeline.errors import WeightsError

    if cfg.model.name == "esmfold" and not cfg.model.weights:
        raise WeightsError("--model esmfold needs its weights (--weights PATH or s3://...)", hint=HOW_TO_GET_WEIGHTS)
    if cfg.model.weights and not cfg.model.weights.startswith("s3://") and not Path(cfg.model.weights).is_dir():
        raise WeightsError(f"weights directory {cfg.model.weights} does not exist", hint=HOW_TO_GET_WEIGHTS)


def _rejects_table(batch: Any, run_id: str) -> Any:
    """A ``rejects`` shard from a batch of the plan's new rejects (``pipeline.spill.REJECTED_SCHEMA``)."""
    import pyarrow as pa

    now = datetime.now(UTC)
    rows = [{
        "reject_key": r["reject_key"], "reason": r["code"], "detail": r["detail"], "accession": r["accession"],
        "header": r["header"], "raw_sequence": r["raw_sequence"], "source_file": Path(r["source"]).name,
        "source_record_index": r["record_index"], "source_line": r["line"], "run_id": run_id, "created_at": now,
    } for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def _content_name(prefix: str, keys: Sequence[str]) -> str:
    h = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:20]
    return f"{prefix}-{h}.parquet"


def _ray_init(cfg: RunConfig) -> bool:
    """Start or join Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True, "configure_logging": True}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, **kwargs)
        return True
    for attempt in range(1, 4):
        try:
            ray.init(**kwargs)
            return True
        except Exception as e:  # Ray gives its raylet a fixed 30 s to register; a loaded host can miss it
            if "timed out during startup" not in str(e) or attempt == 3:
                raise
            log.warning("local Ray did not start in time (attempt %d of 3, host load %.1f); starting it again",
                        attempt, os.getloadavg()[0])
            ray.shutdown()
    return True


def unit_refs(path: Path, atlas: Atlas, run_id: str) -> list[dict[str, Any]]:
    """One small row per unit of a units Parquet file: its id and the row group holding its payload.

    For an S3 atlas the file is uploaded under ``_staging/<run_id>/_plan/<plan dir>/`` first (removed
    with the run's staging), so Ray workers on any node can read it; a local atlas's scratch is inside it."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    source = str(path)
    if not atlas.is_local:
        rel = f"{atlas.staging_rel(run_id)}/_plan/{path.parent.name}/{path.name}"
        atlas.store.put_file(path, rel)
        source = atlas.store.url(rel)
    return [{"unit_id": uid, "source": source, "row_group": rg}
            for rg in range(pf.num_row_groups) for uid in pf.read_row_group(rg, columns=["unit_id"]).column(0).to_pylist()]


def _stream_units(parts: Sequence[tuple[list[dict[str, Any]], bool]], cfg: RunConfig, ctx: WriteContext,
                  tracker: Any = None, isolate: bool = False, route: PoolRoute | None = None) -> Any:
    """The Ray Data job over ``(unit refs, is long)`` parts; yields one manifest dict per finished unit.

    A unit whose worker process dies is retried on a restarted actor up to ``ray.max_task_retries``
    times; after that Ray Data drops its block (``max_errored_blocks = -1``) and the stream goes on,
    so one poisoned input never stalls or aborts the run: the caller sees the unit missing.
    ``isolate`` gives each actor one unit at a time, so a crash takes no queued unit's attempt with it.
    ``route``: the pools' ``fold_route`` labels and out-of-memory hand-back (pipeline.oom_route).
    """
    import numpy as np
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.stages import FoldActor, WriteActor

    dctx = DataContext.get_current()
    dctx.enable_progress_bars = False  # FoldAtlas shows its own progress (sequences, rate, ETA)
    dctx.print_on_execution_start = False
    dctx.issue_detectors_config.detectors = []  # their advice targets generic pipelines, not this one
    dctx.max_errored_blocks = -1  # a unit that exhausted its retries is dropped; the driver accounts for it
    # Actors restart without limit (Ray Data's default); a unit's task is retried max_task_retries
    # times, then dropped and accounted for by the driver. Ray 2.60 deprecates passing such options
    # through **ray_remote_args and has no named parameter for max_task_retries yet, hence the
    # upper bound on ray in pyproject.toml until one exists.
    retry: dict[str, Any] = {"max_restarts": -1, "max_task_retries": cfg.ray.max_task_retries}
    # S3 endpoint and credentials for workers that did not inherit them; fault-injection drills
    env = {**aws_env(), **{k: v for k, v in os.environ.items() if k.startswith("FOLDATLAS_FAULT_")}}
    if env:
        retry["runtime_env"] = {"env_vars": env}  # a named parameter of map_batches
    in_flight = 1 if isolate else None
    gpus = cfg.ray.fold_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    # CPU inference: the write stage is mostly idle, so torch gets the node's cores by default (the
    # fold actor divides the cores of the node it lands on by fold_actors when this is None)
    threads = cfg.ray.torch_threads
    long_cfg = cfg.long_sequences
    route = route or PoolRoute()  # route.all_long is the caller's: it decides which part is long
    pools = []  # (unit refs, fold settings, model settings, actors, memory reserved per actor, route, defer OOM)
    for part, is_long in parts:
        if not part:
            continue
        if is_long:
            memory = int(long_cfg.memory_gb * 2**30) if long_cfg.memory_gb else None
            pools.append((part, FoldSettings(long_cfg.max_tokens_per_batch, cfg.plan.max_batch_size),
                          _model_settings(cfg, long_cfg.chunk_size), long_cfg.actors, memory, route.long,
                          route.defer_long))
        else:
            pools.append((part, FoldSettings(cfg.plan.max_tokens_per_batch, cfg.plan.max_batch_size),
                          _model_settings(cfg), cfg.ray.fold_actors, None, route.normal, route.defer_normal))
    folded = []
    for part, fold_settings, model_settings, actors, memory, label, defer in pools:
        # one block per unit (a worker crash then costs one unit); the first actor stage loads the
        # payload from the units file (pipeline.stages.unit_payloads), so no extra operator competes
        # for the pools' CPUs
        ds: Any = ray.data.from_items(part, override_num_blocks=max(1, len(part)))
        if ctx.msa is not None:
            from pipeline.stages import MSAActor

            ds = ds.map_batches(MSAActor, batch_size=cfg.msa.units_per_search, batch_format="numpy",
                                fn_constructor_kwargs={"spec": ctx.msa, "tracker": tracker},
                                compute=ActorPoolStrategy(size=cfg.msa.actors, max_tasks_in_flight_per_actor=in_flight),
                                num_cpus=cfg.msa.cpus, resources=cfg.ray.cpu_stage_resources or None, **retry)
        folded.append(ds.map_batches(
            FoldActor, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"model_settings": model_settings, "fold_settings": fold_settings,
                                   "torch_threads": threads, "atlas_root": ctx.atlas, "tracker": tracker,
                                   "actors_per_node": cfg.ray.fold_actors, "route": label, "defer_oom": defer},
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=in_flight),
            num_cpus=cfg.ray.fold_cpus, num_gpus=gpus, memory=memory, resources=cfg.ray.fold_resources or None,
            **retry,
        ))
    if not folded:
        return
    ds = folded[0] if len(folded) == 1 else folded[0].union(*folded[1:])
    ds = ds.map_batches(
        WriteActor, batch_size=1, batch_format="numpy", fn_constructor_kwargs={"ctx": ctx, "tracker": tracker},
        compute=ActorPoolStrategy(size=cfg.ray.write_actors, max_tasks_in_flight_per_actor=in_flight),
        num_cpus=cfg.ray.write_cpus, resources=cfg.ray.cpu_stage_resources or None, **retry,
    )
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for text in np.asarray(batch["manifest"]):
            yield json.loads(text)


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class RateEta(ProgressColumn):
        """Average rate since the start and the ETA it implies (units finish in bursts)."""

        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0.0
            if not task.completed or not elapsed:
                return Text("- seq/h  ETA -")
            rate = task.completed / elapsed
            eta = (task.total - task.completed) / rate if task.total else 0.0
            h, rem = divmod(int(eta), 3600)
            return Text(f"{rate * 3600:,.0f} seq/h  ETA {h}:{rem // 60:02d}:{rem % 60:02d}")

    return Progress(TextColumn("[bold]{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    RateEta(), disable=not enabled, refresh_per_second=2)


def run(inputs: Sequence[str | Path], atlas_root: str | Path, cfg: RunConfig, *, progress: bool = True,
        echo: Any = None, input_names: Sequence[str] | None = None) -> RunSummary:
    """Run the whole pipeline; returns the summary (also saved under ``_runs/<run_id>/``).
    ``input_names``: the inputs as the summary names them (a remote run's shipped copies: their origin)."""
    t0 = time.perf_counter()
    _check_model_inputs(cfg)
    atlas = Atlas(atlas_root)
    run_id = new_run_id()
    summary = RunSummary(run_id=run_id, atlas=atlas.uri, model=cfg.model.name,
                         inputs=list(input_names or [str(p) for p in inputs]), model_trained=cfg.model.name != "esmfold-tiny")
    msa_spec: MSASpec | None = make_spec(cfg.msa) if cfg.msa.tool != "none" else None
    with atlas.locked():
        atlas.init()
        if n := atlas.clean_staging():
            log.info("removed %d staging directories left by interrupted runs", n)
        provenance = {"foldatlas_version": package_version(), "git_commit": git_commit(), "run_id": run_id,
                      "config_hash": cfg.config_hash(), "model": cfg.model.name,
                      "started_at": datetime.now(UTC).isoformat()}
        atlas.write_run_file(run_id, "config.json", dump_config(cfg))
        atlas.write_run_file(run_id, "provenance.json", json.dumps(provenance, indent=2))

        from pipeline.plan import plan_run
        from pipeline.spill import ingest_to_parquet

        scratch = atlas.staging_dir(run_id) / "_plan"  # outside every table glob; removed with staging
        spill = ingest_to_parquet([str(p) for p in inputs], cfg.ingest, scratch / "ingest",
                                  workers=cfg.plan.ingest_workers, memory_limit=cfg.plan.memory_limit)
        summary.read, summary.rejected, summary.accepted = spill.n_read, spill.rejected, spill.accepted
        summary.fragments, summary.rejected_by_reason = spill.fragments, dict(spill.rejected_by_reason)
        # records an earlier run split into fragments after running out of memory: their fragments
        resume_fragmented(spill, atlas, cfg.model.name, cfg.ingest, memory_limit=cfg.plan.memory_limit)
        plan = plan_run(spill, atlas, cfg.model.name, cfg.plan, scratch / "plan", msa=msa_spec,
                        reuse_models=cfg.plan.reuse_models, long_above=cfg.long_sequences.chunked_above,
                        memory_limit=cfg.plan.memory_limit)
        summary.already_in_atlas, summary.new_rejects = plan.already_done, plan.new_rejects
        summary.units_planned, summary.sequences_planned = plan.units, plan.sequences_to_predict

        staging = atlas.staging_dir(run_id)
        staging.mkdir(parents=True, exist_ok=True)
        if msa_spec is not None:
            provenance.update(msa_db_id=msa_spec.db_id, msa_db_name=msa_spec.db_name, msa_tool=msa_spec.tool,
                              msa_tool_version=msa_spec.tool_version, msa_params=msa_spec.params_key)
        ctx = WriteContext(staging=str(staging), atlas=atlas.uri, run_id=run_id, policy=cfg.confidence,
                           provenance=provenance,
                           is_reference_proteome=cfg.is_reference_proteome, msa=msa_spec)
        for batch in plan.iter_new_rejects():  # bounded batches, one shard each
            name = _content_name("rejects", batch.column("reject_key").to_pylist())
            write_shard("rejects", _rejects_table(batch, run_id), staging / name, provenance)
            atlas.publish_file(staging / name, "rejects", name)
        _publish_entries(plan, ctx, atlas, summary)
        if plan.units:
            _run_units(plan, cfg, ctx, atlas, summary, progress)
        summary.total_seconds = time.perf_counter() - t0
        _save_summary(atlas, summary)
        atlas.clean_staging()
        if not atlas.is_local:
            shutil.rmtree(staging, ignore_errors=True)
    if echo:
        echo(render_text(summary))
    return summary


def _publish_entries(plan: StreamPlan, ctx: WriteContext, atlas: Atlas, summary: RunSummary) -> None:
    """Link entries (this model predicted the sequence earlier) and reuse entries (an imported
    structure, pipeline.reuse), in bounded batches of the plan's files, one shard each."""
    for kind in ("link", "reuse"):
        for model, records, structures, msa in plan.iter_entry_batches(kind):
            table = entry_rows_for_links(records, structures, model, ctx, msa)
            suffix = f":{model}" if kind == "reuse" else ""
            name = _content_name(kind, [f"{r.accession}:{r.sha256}{suffix}" for r in records])
            write_shard("entries", table, Path(ctx.staging) / name, ctx.provenance)
            atlas.publish_file(Path(ctx.staging) / name, "entries", name)
            summary.linked += len(records)
            summary.entries_written += len(records)


def _run_units(plan: StreamPlan, cfg: RunConfig, ctx: WriteContext, atlas: Atlas, summary: RunSummary,
               progress: bool) -> None:
    import threading

    import ray

    from pipeline.progress import progress_line, remote_tracker, stage_summary, timeline_point

    started = _ray_init(cfg)
    tiers: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    t_fold = time.perf_counter()
    summary.units_planned, summary.units_long = plan.units, plan.units_long
    stages = (("msa",) if ctx.msa is not None else ()) + ("fold", "write", "publish")
    tracker = remote_tracker(stages)
    total = plan.sequences_to_predict
    planned = {s: total for s in stages}  # grows when out-of-memory passes fold sequences again
    timeline: list[dict[str, Any]] = []
    last: dict[str, Any] = {}  # the latest tracker snapshot
    logged = [0.0]  # tracker time of the last progress log line
    stop = threading.Event()
    try:
        with _progress(progress) as bar:
            tasks = {s: bar.add_task(s, total=total) for s in stages}

            def sample(timeout: float) -> dict[str, Any] | None:
                """One reading of the tracker into the bars and the timeline; None if it failed."""
                try:
                    snap: dict[str, Any] = ray.get(tracker.snapshot.remote(), timeout=timeout)
                except Exception as e:  # progress is for reporting: losing it must never stop the run
                    log.debug("progress sample failed: %s", e)
                    return None
                last.update(snap)
                totals = dict(planned)  # the driver may grow it meanwhile
                timeline.append(timeline_point(snap, stages, totals))
                for st, task in tasks.items():
                    bar.update(task, completed=snap["stages"][st]["sequences"], total=totals[st])
                return snap

            def poll() -> None:  # per-stage bars and the timeline, from the tracker's counts
                while True:
                    snap = sample(30)
                    if snap and not progress and snap["t"] - logged[0] >= cfg.ray.progress_log_s:
                        logged[0] = snap["t"]  # no terminal (Ray job, CI, nohup): a log line instead
                        log.info("progress %s", progress_line(snap, stages, dict(planned)))
                    if stop.wait(cfg.ray.progress_interval_s):
                        return

            poller = threading.Thread(target=poll, name="foldatlas-progress", daemon=True)
            poller.start()
            sink = _PassSink(cfg, ctx, atlas, tracker, summary, tiers, failed, plan.root.parent, planned)
            # out of memory in the normal pool goes on to the chunked pool or fragments when configured
            fragments_on = cfg.ingest.fragment_above is not None
            first = PoolRoute(defer_normal=cfg.long_sequences.chunked_above is not None or fragments_on,
                              defer_long=fragments_on)
            deferred, records = _fold_pass(plan, first, sink)
            if deferred:
                ledger = OOMLedger()
                ledger.add(deferred, records)
                _reroute_oom(ledger, sink, ctx.msa)
            stop.set()
            poller.join(timeout=60)
            if sample(60) is None:
                log.warning("could not read the final stage counts; the summary has the last sample")
    finally:
        stop.set()
        summary.fold_wall_seconds = time.perf_counter() - t_fold
        summary.tiers, summary.failed_by_reason = dict(tiers), dict(failed)
        summary.timeline = timeline
        if last:
            actors = {"msa": cfg.msa.actors, "fold": cfg.ray.fold_actors, "write": cfg.ray.write_actors, "publish": 1}
            summary.stages = stage_summary(last, actors, summary.fold_wall_seconds, planned)
        if started:
            ray.shutdown()


def _publish(atlas: Atlas, ctx: WriteContext, manifest: dict[str, Any], unit: tuple[int, int], tracker: Any,
             summary: RunSummary, tiers: Counter[str], failed: Counter[str]) -> None:
    """Publish one unit's staged shards and add its counts to the summary (``unit``: sequences, residues)."""
    t_pub = time.perf_counter()
    atlas.publish_unit(ctx.run_id, manifest["unit_id"], manifest["staged"], manifest["counts"])
    deferred = manifest.get("deferred") or {}  # handed back after running out of memory: published later
    tracker.record.remote("publish", unit[0] - len(deferred), unit[1], time.perf_counter() - t_pub)
    c = manifest["counts"]
    summary.units_published += 1
    summary.predicted += c["structures"]
    summary.failed += c["failures"]
    summary.entries_written += c["entries"]
    summary.structures_published += c["published_structures"]
    summary.residues_predicted += manifest["residues"]
    summary.model_seconds += manifest["model_seconds"]
    summary.mean_plddts += manifest["mean_plddts"]
    if manifest["model_trained"] is not None:
        summary.model_trained = manifest["model_trained"]
    summary.msa_searched += manifest["msa_searched"]
    summary.msa_cached += manifest["msa_cached"]
    summary.msa_failed += manifest["msa_failed"]
    for t, n in manifest.get("tiers", {}).items():
        tiers[t] += n
    for r, n in manifest.get("failure_reasons", {}).items():
        failed[r] += n


@dataclass
class _PassSink:
    """Where a fold pass publishes: the run's config, context, atlas, progress tracker and tallies,
    and the run's scratch directory (``<staging>/_plan``) for the units files of later passes."""

    cfg: RunConfig
    ctx: WriteContext
    atlas: Atlas
    tracker: Any
    summary: RunSummary
    tiers: Counter[str]
    failed: Counter[str]
    scratch: Path
    planned: dict[str, int]  # sequences per stage for the progress bars (pipeline.progress.grow_planned)

    def publish(self, manifest: dict[str, Any], unit: tuple[int, int]) -> None:
        _publish(self.atlas, self.ctx, manifest, unit, self.tracker, self.summary, self.tiers, self.failed)


def _fold_pass(plan: StreamPlan, route: PoolRoute, sink: _PassSink
               ) -> tuple[dict[str, tuple[str, str]], dict[str, list[AcceptedRecord]]]:
    """Stream the units of ``plan`` (its units files) through the fold pools and publish each as it
    finishes; the driver holds unit ids and counts, the payloads are read by the Ray workers.

    A unit whose worker dies on every retry is tried again with each sequence alone (payloads read
    back from the units files; lost units are few), then written as ``worker_crashed`` failure rows.
    Returns the sequences the pools handed back after running out of memory (``route.defer_*``):
    sha256 -> (fold_route label of their pool, error message), and their records, read back from
    the units that handed them back.
    """
    cfg, atlas, run_id = sink.cfg, sink.atlas, sink.ctx.run_id

    def refs(p: StreamPlan) -> list[tuple[list[dict[str, Any]], bool]]:
        return [(unit_refs(p.units_files[k], atlas, run_id), k == "long") for k in ("normal", "long")
                if k in p.units_files]

    parts = refs(plan)
    long_ids = {r["unit_id"] for part, is_long in parts if is_long for r in part}  # their pool's label

    def label(unit_id: str) -> str:
        return route.long if unit_id in long_ids else route.normal

    counts = plan.unit_counts  # unit id -> (sequences, residues)
    pending = [r["unit_id"] for part, _ in parts for r in part]
    sources = [plan]  # where the payloads of this pass's units lie
    deferred: dict[str, tuple[str, str]] = {}
    handed_back: set[str] = set()  # units that handed sequences back
    for attempt in (1, 2):
        done: set[str] = set()
        for manifest in _stream_units(parts, cfg, sink.ctx, sink.tracker, isolate=attempt > 1, route=route):
            uid = manifest["unit_id"]
            sink.publish(manifest, counts[uid])
            if manifest["deferred"]:
                deferred.update({sha: (label(uid), msg) for sha, msg in manifest["deferred"].items()})
                handed_back.add(uid)
            done.add(uid)
        pending = [u for u in pending if u not in done]  # lost
        if not pending:
            break
        log.warning("%d unit(s) lost their worker %d times (pass %d): %s", len(pending),
                    cfg.ray.max_task_retries + 1, attempt, ", ".join(pending[:5]))
        if attempt == 2:
            break
        # pass 2: every sequence of a lost unit alone, so one poisoned input takes nobody with it
        # (singles go to the pool of their unit)
        loaded = plan.load_units(pending)
        retry = units_plan({k: [single for u in loaded if (u.unit_id in long_ids) == (k == "long")
                                for single in split_unit(u)] for k in ("normal", "long")},
                           plan.model, plan.root.parent / f"{plan.root.name}-retry")
        parts, counts = refs(retry), retry.unit_counts
        long_ids |= {r["unit_id"] for part, is_long in parts if is_long for r in part}
        pending = [r["unit_id"] for part, _ in parts for r in part]
        sources.append(retry)
    if pending:  # crashed alone on every attempt: failure rows, never a silent skip
        for unit in sources[-1].load_units(pending):
            sink.publish(_crash_failures(unit, cfg, sink.ctx, atlas, label(unit.unit_id)), counts[unit.unit_id])
    records: dict[str, list[AcceptedRecord]] = {}
    if handed_back:
        units = {u.unit_id: u for src in sources for u in src.load_units(handed_back)}
        for r in (r for u in units.values() for r in u.records if r.sha256 in deferred):
            records.setdefault(r.sha256, []).append(r)
    return deferred, records


def _reroute_oom(ledger: OOMLedger, sink: _PassSink, msa_spec: MSASpec | None) -> None:
    """After the first pass: sequences that ran out of memory go to the chunked long pool, then into
    fragments, then become ``oom`` failure rows, as far as the configuration allows (pipeline.oom_route).
    Each pass streams from units files under the run's scratch directory, as the first does."""
    from pipeline.oom_route import can_chunk, failure_message, oom_fragments, reroute_units, why_not_fragments
    from pipeline.plan import cached_msas, plan_run, spill_records
    from pipeline.progress import grow_planned

    cfg, summary = sink.cfg, sink.summary
    summary.oom_rerouted = len(ledger.pending)
    fragments_on = cfg.ingest.fragment_above is not None
    to_chunk = {s: q for s, q in ledger.pending.items() if can_chunk(q, cfg.long_sequences.chunked_above)}
    if to_chunk:
        log.warning("%d sequence(s) ran out of memory in the normal pool; folding them in the chunked long pool",
                    len(to_chunk))
        known = cached_msas(sink.atlas, msa_spec, to_chunk) if msa_spec is not None else None
        units = reroute_units(to_chunk, cfg.model.name, cfg.plan, "oom-chunked", known)
        summary.units_planned += len(units)
        summary.units_long += len(units)
        chunked = units_plan({"long": units}, cfg.model.name, sink.scratch / "oom-chunked")  # all to the long pool
        grow_planned(sink.planned, folded_again=len(to_chunk), published=0)  # handed back: not published yet
        again, _ = _fold_pass(chunked, PoolRoute(long="oom_chunked", defer_long=fragments_on, all_long=True), sink)
        ledger.add(again, {})
        ledger.settle([s for s in to_chunk if s not in again], "chunked")
    split = {s: q for s, q in ledger.pending.items() if why_not_fragments(q, cfg.ingest) is None}
    if split:
        records = [f for q in split.values() for rec in q.records for f in oom_fragments(rec, cfg.ingest)]
        log.warning("%d sequence(s) ran out of memory whole; folding them as %d fragments", len(split), len(records))
        ledger.fragments = len(records)
        # the fragments are planned as a run's records are: link, reuse, units files
        spill = spill_records(records, [], sink.scratch / "oom-fragments-ingest")
        fplan = plan_run(spill, sink.atlas, cfg.model.name, cfg.plan, sink.scratch / "oom-fragments", msa=msa_spec,
                         reuse_models=cfg.plan.reuse_models, long_above=cfg.long_sequences.chunked_above,
                         memory_limit=cfg.plan.memory_limit)
        _publish_entries(fplan, sink.ctx, sink.atlas, summary)
        summary.units_planned += fplan.units
        grow_planned(sink.planned, folded_again=fplan.sequences_to_predict,
                     published=fplan.sequences_to_predict - len(split))
        if fplan.units:
            _fold_pass(fplan, PoolRoute(normal="oom_fragment", long="oom_fragment"), sink)
        ledger.settle(list(split), "fragments")
    for label in sorted({q.route for q in ledger.pending.values()}):
        group = {s: q for s, q in ledger.pending.items() if q.route == label}
        messages = {q.sequence: failure_message(q, why_not_fragments(q, cfg.ingest) or "") for q in group.values()}
        for unit in reroute_units(group, cfg.model.name, cfg.plan, "oom-failed"):
            summary.units_planned += 1
            sink.publish(_stage_failures(unit, "oom", messages, cfg, sink.ctx, sink.atlas, label),
                         (len(unit.sequences), unit.residues))
        ledger.settle(list(group), "failed")
    summary.oom_routes, summary.oom_fragments = dict(ledger.routes), ledger.fragments


def split_unit(unit: WorkUnit) -> list[WorkUnit]:
    """One work unit per sequence (records and cached MSA stats follow their sequence)."""
    if len(unit.sequences) == 1:
        return [unit]
    cached = dict(unit.msa_cached)
    out = []
    for seq in unit.sequences:
        recs = tuple(r for r in unit.records if r.sequence == seq)
        sha = recs[0].sha256
        out.append(WorkUnit(unit_id_for(unit.model, [sha]), unit.model, (seq,), recs,
                            ((sha, cached[sha]),) if sha in cached else ()))
    return out


def _crash_failures(unit: WorkUnit, cfg: RunConfig, ctx: WriteContext, atlas: Atlas,
                    route: str | None = None) -> dict[str, Any]:
    """Stage ``worker_crashed`` failure rows for a unit that killed its worker on every attempt."""
    attempts = cfg.ray.max_task_retries + 1
    msg = (f"the worker process died on each of {attempts} attempts in a batch and {attempts} alone "
           "(segfault, kill or host out-of-memory); see the Ray worker logs")
    return _stage_failures(unit, "worker_crashed", dict.fromkeys(unit.sequences, msg), cfg, ctx, atlas, route)


def _stage_failures(unit: WorkUnit, reason: str, messages: dict[str, str], cfg: RunConfig, ctx: WriteContext,
                    atlas: Atlas, route: str | None) -> dict[str, Any]:
    """Failure rows written by the driver (no model call): one per sequence, ``messages`` by sequence."""
    import dataclasses

    from model.base import ModelInfo, PredictionFailure
    from pipeline.write import write_unit

    info = ModelInfo(name=cfg.model.name, version="none (no prediction)", weights_sha256="",
                     trained=cfg.model.name != "esmfold-tiny")
    outcomes: list[Any] = [PredictionFailure(s, reason, messages[s], 1) for s in unit.sequences]
    manifest = write_unit(unit, outcomes, info, {}, ctx, route=route)
    manifest.staged = atlas.upload_staged(ctx.run_id, manifest.staged)
    return dataclasses.asdict(manifest)


def _save_summary(atlas: Atlas, summary: RunSummary) -> None:
    atlas.write_run_file(summary.run_id, "summary.json", summary.to_json())
    title = f"{summary.model} run {summary.run_id}: {len(summary.mean_plddts)} new structures"
    if summary.model_trained is False:
        title += " (UNTRAINED model)"
    atlas.write_run_file(summary.run_id, "plddt_histogram.png", plddt_histogram_png(summary.mean_plddts, title))
    from pipeline.report import build_report

    atlas.write_run_file(summary.run_id, "report.html", build_report(atlas, summary.run_id, json.loads(summary.to_json())))
