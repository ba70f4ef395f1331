"""The proteome run: ingest -> plan -> (Ray Data: fold -> write) -> publish, with progress.

The driver (this module) ingests and plans, publishes rejects and link entries itself, then
streams work units through a Ray Data job (a fold actor pool, GPU actors when GPUs exist, and a
write actor pool) and publishes each unit's staged shards as its manifest arrives. Killing the
driver at any moment leaves a consistent atlas; the same command resumes (see
:mod:`storage.atlas` for the protocol and :mod:`pipeline.plan` for what is skipped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig, dump_config
from pipeline.fold import FoldSettings
from pipeline.ingest import ingest_many
from pipeline.msa_stage import MSASpec, make_spec
from pipeline.plan import Plan, make_plan, reject_key
from pipeline.summary import RunSummary, plddt_histogram_png, render_text
from pipeline.write import WriteContext, entry_rows_for_links
from storage.atlas import Atlas, write_parquet
from storage.schema import REJECTS_SCHEMA

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


def _model_settings(cfg: RunConfig) -> Any:
    from model.esmfold import ESMFoldSettings

    m = cfg.model
    from model.fastpath import FastPathSettings

    return ESMFoldSettings(name=m.name, weights=m.weights, weights_sha256=m.weights_sha256, device=m.device,
                           precision=m.precision, num_recycles=m.num_recycles, chunk_size=m.chunk_size,
                           fast=FastPathSettings() if m.fast_path else None)


def _check_model_inputs(cfg: RunConfig) -> None:
    """Fail before any work when the model cannot be loaded (missing weights)."""
    from model.weights import HOW_TO_GET_WEIGHTS
    from pipeline.errors import WeightsError

    if cfg.model.name == "esmfold" and not cfg.model.weights:
        raise WeightsError("--model esmfold needs its weights (--weights PATH or s3://...)", hint=HOW_TO_GET_WEIGHTS)
    if cfg.model.weights and not cfg.model.weights.startswith("s3://") and not Path(cfg.model.weights).is_dir():
        raise WeightsError(f"weights directory {cfg.model.weights} does not exist", hint=HOW_TO_GET_WEIGHTS)


def _rejects_table(plan: Plan, run_id: str) -> Any:
    import pyarrow as pa

    now = datetime.now(UTC)
    rows = [{
        "reject_key": reject_key(r), "reason": r.code, "detail": r.detail, "accession": r.accession,
        "header": r.header, "raw_sequence": r.raw_sequence, "source_file": Path(r.source).name,
        "source_record_index": r.record_index, "source_line": r.line, "run_id": run_id, "created_at": now,
    } for r in plan.new_rejects]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def _content_name(prefix: str, keys: Sequence[str]) -> str:
    h = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:20]
    return f"{prefix}-{h}.parquet"


def _structure_rows(atlas: Atlas, model: str, shas: set[str]) -> dict[str, dict[str, Any]]:
    import duckdb

    if not shas:
        return {}
    con = duckdb.connect()
    try:
        con.execute("CREATE TEMP TABLE want(sha VARCHAR)")
        con.executemany("INSERT INTO want VALUES (?)", [(s,) for s in shas])
        tbl = con.sql(
            f"SELECT s.* EXCLUDE (plddt) FROM read_parquet('{atlas.glob('structures')}', union_by_name=true) s "
            "JOIN want ON s.sequence_sha256 = want.sha WHERE s.model = ?", params=[model]).to_arrow_table()
    finally:
        con.close()
    return {r["sequence_sha256"]: r for r in tbl.to_pylist()}


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
    else:
        ray.init(**kwargs)
    return True


def _stream_units(plan: Plan, cfg: RunConfig, ctx: WriteContext) -> Any:
    """The Ray Data job; yields one manifest dict per finished unit."""
    import numpy as np
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.stages import FoldActor, WriteActor

    dctx = DataContext.get_current()
    dctx.enable_progress_bars = False  # FoldAtlas shows its own progress (sequences, rate, ETA)
    dctx.print_on_execution_start = False
    dctx.issue_detectors_config.detectors = []  # their advice targets generic pipelines, not this one
    gpus = cfg.ray.fold_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    # CPU inference: the write stage is mostly idle, so torch gets the node's cores by default
    threads = cfg.ray.torch_threads or max(1, (os.cpu_count() or 1) // cfg.ray.fold_actors)
    items = [{"unit_id": u.unit_id, "payload": pickle.dumps(u, protocol=5)} for u in plan.units]
    ds: Any = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if ctx.msa is not None:
        from pipeline.stages import MSAActor

        ds = ds.map_batches(MSAActor, batch_size=1, batch_format="numpy", fn_constructor_kwargs={"spec": ctx.msa},
                            compute=ActorPoolStrategy(size=cfg.msa.actors), num_cpus=cfg.msa.cpus)
    ds = ds.map_batches(
        FoldActor, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"model_settings": _model_settings(cfg),
                               "fold_settings": FoldSettings(cfg.plan.max_tokens_per_batch, cfg.plan.max_batch_size),
                               "torch_threads": threads, "atlas_root": ctx.atlas},
        compute=ActorPoolStrategy(size=cfg.ray.fold_actors), num_cpus=cfg.ray.fold_cpus, num_gpus=gpus,
    )
    ds = ds.map_batches(
        WriteActor, batch_size=1, batch_format="numpy", fn_constructor_kwargs={"ctx": ctx},
        compute=ActorPoolStrategy(size=cfg.ray.write_actors), num_cpus=cfg.ray.write_cpus,
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

    return Progress(TextColumn("[bold]folding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), RateEta(),
                    disable=not enabled, refresh_per_second=2)


def run(inputs: Sequence[str | Path], atlas_root: str | Path, cfg: RunConfig, *, progress: bool = True,
        echo: Any = None) -> RunSummary:
    """Run the whole pipeline; returns the summary (also saved under ``_runs/<run_id>/``)."""
    t0 = time.perf_counter()
    _check_model_inputs(cfg)
    atlas = Atlas(atlas_root)
    run_id = new_run_id()
    summary = RunSummary(run_id=run_id, atlas=str(atlas.root), model=cfg.model.name,
                         inputs=[str(p) for p in inputs], model_trained=cfg.model.name != "esmfold-tiny")
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

        result = ingest_many([str(p) for p in inputs], cfg.ingest)
        summary.read, summary.accepted, summary.rejected = result.n_read, len(result.accepted), len(result.rejected)
        summary.rejected_by_reason = result.reject_counts()
        plan = make_plan(result.accepted, result.rejected, atlas, cfg.model.name, cfg.plan, msa_spec,
                         reuse_models=cfg.plan.reuse_models)
        summary.already_in_atlas, summary.new_rejects = plan.already_done, len(plan.new_rejects)
        summary.units_planned, summary.sequences_planned = len(plan.units), plan.sequences_to_predict

        staging = atlas.staging_dir(run_id)
        staging.mkdir(parents=True, exist_ok=True)
        if msa_spec is not None:
            provenance.update(msa_db_id=msa_spec.db_id, msa_db_name=msa_spec.db_name, msa_tool=msa_spec.tool,
                              msa_tool_version=msa_spec.tool_version, msa_params=msa_spec.params_key)
        ctx = WriteContext(staging=str(staging), atlas=str(atlas.root), run_id=run_id, policy=cfg.confidence,
                           provenance=provenance,
                           is_reference_proteome=cfg.is_reference_proteome, msa=msa_spec)
        if plan.new_rejects:
            name = _content_name("rejects", [reject_key(r) for r in plan.new_rejects])
            write_parquet(_rejects_table(plan, run_id), staging / name, provenance)
            atlas.publish_file(staging / name, "rejects", name)
        if plan.link_records:
            structures = _structure_rows(atlas, cfg.model.name, {r.sha256 for r in plan.link_records})
            table = entry_rows_for_links(plan.link_records, structures, cfg.model.name, ctx, plan.msa_known)
            name = _content_name("link", [f"{r.accession}:{r.sha256}" for r in plan.link_records])
            write_parquet(table, staging / name, provenance)
            atlas.publish_file(staging / name, "entries", name)
            summary.linked = summary.entries_written = len(plan.link_records)
        if plan.reused:
            _publish_reused(plan, ctx, atlas, summary)
        if plan.units:
            _run_units(plan, cfg, ctx, atlas, summary, progress)
        summary.total_seconds = time.perf_counter() - t0
        _save_summary(atlas, summary)
        atlas.clean_staging()
    if echo:
        echo(render_text(summary))
    return summary


def _publish_reused(plan: Plan, ctx: WriteContext, atlas: Atlas, summary: RunSummary) -> None:
    """Entries for records whose sequence reuses an imported structure (pipeline.reuse)."""
    for model, records in sorted(plan.reused.items()):
        structures = _structure_rows(atlas, model, {r.sha256 for r in records})
        table = entry_rows_for_links(records, structures, model, ctx, plan.msa_known)
        name = _content_name("reuse", [f"{r.accession}:{r.sha256}:{model}" for r in records])
        write_parquet(table, Path(ctx.staging) / name, ctx.provenance)
        atlas.publish_file(Path(ctx.staging) / name, "entries", name)
        summary.linked += len(records)
        summary.entries_written += len(records)


def _run_units(plan: Plan, cfg: RunConfig, ctx: WriteContext, atlas: Atlas, summary: RunSummary,
               progress: bool) -> None:
    import ray

    started = _ray_init(cfg)
    tiers: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    t_fold = time.perf_counter()
    by_id = {u.unit_id: u for u in plan.units}
    try:
        with _progress(progress) as bar:
            task = bar.add_task("fold", total=plan.sequences_to_predict)
            for manifest in _stream_units(plan, cfg, ctx):
                atlas.publish_unit(ctx.run_id, manifest["unit_id"], manifest["staged"], manifest["counts"])
                c = manifest["counts"]
                summary.units_published += 1
                summary.predicted += c["structures"]
                summary.failed += c["failures"]
                summary.entries_written += c["entries"]
                summary.structures_published += c["published_structures"]
                summary.residues_predicted += manifest["residues"]
                summary.model_seconds += manifest["model_seconds"]
                summary.mean_plddts += manifest["mean_plddts"]
                summary.model_trained = manifest["model_trained"]
                summary.msa_searched += manifest["msa_searched"]
                summary.msa_cached += manifest["msa_cached"]
                summary.msa_failed += manifest["msa_failed"]
                for t, n in manifest.get("tiers", {}).items():
                    tiers[t] += n
                for r, n in manifest.get("failure_reasons", {}).items():
                    failed[r] += n
                bar.advance(task, len(by_id[manifest["unit_id"]].sequences))
    finally:
        summary.fold_wall_seconds = time.perf_counter() - t_fold
        summary.tiers, summary.failed_by_reason = dict(tiers), dict(failed)
        if started:
            ray.shutdown()


def _save_summary(atlas: Atlas, summary: RunSummary) -> None:
    atlas.write_run_file(summary.run_id, "summary.json", summary.to_json())
    title = f"{summary.model} run {summary.run_id}: {len(summary.mean_plddts)} new structures"
    if summary.model_trained is False:
        title += " (UNTRAINED model)"
    atlas.write_run_file(summary.run_id, "plddt_histogram.png", plddt_histogram_png(summary.mean_plddts, title))
