"""ESMFold throughput: naive inference against the FoldAtlas fast path, side by side, same run.

What it runs
------------
* **Model**: ``--config full`` is the published ESMFold architecture -- the ESM-2 3B language
  model (36 layers, hidden 2560, 40 heads, FFN 10240; ``esm.pretrained.esm2_t36_3B_UR50D``) and
  the esmfold_v1 folding head (48 trunk blocks, c_s 1024, c_z 128, head widths 32, structure
  module 384/128 with 8 blocks; facebook/esmfold_v1 ``config.json`` = transformers'
  ``TrunkConfig`` / ``StructureModuleConfig`` defaults, ``chunk_size`` null) -- with random
  weights from a fixed seed: run time does not depend on the weights' values. ``--config tiny``
  is ``model/configs/esmfold-tiny.json`` (the CPU smoke test).
* **Workload**: ``--n`` sequences drawn with ``--seed`` from ``--fasta`` (default: the E. coli
  K-12 reference proteome UP000000625, ``../shared/data/uniprot/UP000000625_83333.fasta``),
  keeping those of at most ``--max-len`` residues (1,280). Both modes fold the same sequences
  with the same number of trunk passes: ``--num-recycles`` defaults to ``max_recycles - 1``,
  i.e. 4 passes for esmfold_v1, exactly what ``model.infer()`` runs by default.
* **(a) naive**: transformers' ``EsmForProteinFolding`` one sequence at a time in fp32, eager
  attention, TF32 off, the config's chunking (none for esmfold_v1; an out-of-memory sequence is
  retried with ``trunk.set_chunk_size(64)`` as the model card suggests) -- the ``model.infer``
  path: encode, ``forward``, atom37, then pLDDT / PAE / pTM to the host.
* **(b) fast**: :class:`model.esmfold.ESMFoldBackend` with ``fast=FastPathSettings()`` on the same
  weights: length buckets from free GPU memory, the ESM-2 language model in fp16 with SDPA
  attention, trunk in fp32 with TF32 matmuls, chunking only where memory needs it, device-side
  pTM / PAE, pinned transfers, host-side assembly overlapped with the next batch. ``--variants``
  adds other settings (see ``VARIANT_FLAGS``) in the same run.

What it reports (JSON, ``--out``)
---------------------------------
Per mode: proteins per hour (= per GPU-hour on one GPU), residues per second, seconds per protein,
peak memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS, which only
grows), estimated FLOPs and model FLOP utilisation (``model.fastpath.forward_flops``: the formula
is in its docstring; useful FLOPs only, padding excluded; MFU against ``--peak-tflops``, default
989 = H100 SXM dense BF16), the speed-up, and the numerical differences between the two modes'
outputs (pLDDT, pTM, PAE, coordinates; ``model.fastpath.compare_predictions``).

**Feed rate**: the CPU cost of everything after folding for the same predictions -- confidence
metrics, ModelCIF, PAE JSON, gzip + tar shard, Parquet (``pipeline.write.write_unit``) and the
atomic publish (``storage.atlas.Atlas.publish_unit``) -- timed on the CPU (process CPU time), per
protein, against the fast path's GPU seconds per protein: ``cores_per_gpu`` is how many CPU cores
keep one GPU busy. It needs the FoldAtlas write-stage dependencies (pydantic, gemmi, pyarrow);
where they are missing (a bare GPU machine) it is skipped with the reason, and
``--feed-rate-json`` takes the CPU figures from an earlier ``--feed-rate-only`` run on the CPU,
which uses synthetic predictions of the sampled lengths (the cost depends on L, not on the model).

Run
---
    # CPU smoke (CI): tiny config, 4 sequences
    python -m benchmarks.fold_throughput --config tiny --n 4 --max-len 200 --device cpu \\
        --fasta examples/ecoli_sample.fasta --out /tmp/fold_smoke.json
    # GPU: full-size architecture, E. coli lengths (copy the FASTA into an ignored path, e.g. build/)
    python -m benchmarks.fold_throughput --config full --n 200 --device cuda \\
        --fasta build/UP000000625_83333.fasta --max-seconds 240 --calibrate-memory --out /tmp/gpu.json
    # CPU feed rate on the proteome's length distribution
    python -m benchmarks.fold_throughput --feed-rate-only --n 300 --out /tmp/feed.json

Only torch and transformers are needed for the folding part (no Ray).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/fold_throughput.py` from anywhere
    sys.path.insert(0, str(ROOT))

from model.base import Prediction  # noqa: E402
from model.esmfold import CA_INDEX, PAE_BINS, PAE_MAX_BIN, ESMFoldBackend, ESMFoldSettings, tiny_config  # noqa: E402
from model.fastpath import (  # noqa: E402
    FastPathSettings,
    MemoryModel,
    compare_predictions,
    forward_flops,
    full_config,
    padding_ratio,
    sample_lengths_from_fasta,
    trunk_passes,
)

DEFAULT_FASTA = ROOT.parent / "shared" / "data" / "uniprot" / "UP000000625_83333.fasta"
SCHEMA = "foldatlas.fold_throughput/1"
H100_BF16_DENSE_TFLOPS = 989.0
# --variants: "fast" plus "+"-joined modifiers, e.g. "fast+trunk_sdpa", "fast+bf16_full+compile"
VARIANT_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "trunk_sdpa": ("", {"trunk_sdpa": True}),
    "compile": ("", {"compile_trunk": True, "pad_multiple": 32}),
    "no_tf32": ("", {"tf32": False}),
    "no_lm_sdpa": ("", {"lm_sdpa": False}),
    "no_auto_chunk": ("", {"auto_chunk": False}),
    "fp32": ("fp32", {}),
    "bf16_lm": ("bf16-lm", {}),
    "bf16_full": ("bf16-full", {}),
}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_peak_rss"


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "device": str(device),
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_name=props.name, gpu_total_memory_bytes=int(props.total_memory),
                   cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return env


def build_model(config_name: str, device: torch.device, seed: int) -> tuple[Any, str]:
    """Random-weight ``EsmForProteinFolding`` in fp32, built directly on ``device``."""
    from transformers import EsmForProteinFolding

    cfg = tiny_config() if config_name == "tiny" else full_config()
    torch.manual_seed(seed)
    with torch.device(device):
        model = EsmForProteinFolding(cfg)
    return model.float().eval(), f"random-init:seed={seed}:config={config_name}"


def reset_model(model: Any, lm_state: dict[str, torch.Tensor]) -> None:
    """Undo a fast-path setup: fp32 language model with the saved weights, eager attention, no
    per-instance forward overrides (trunk SDPA, compile)."""
    model.esm.float()
    model.esm.load_state_dict(lm_state)
    model.config._attn_implementation = "eager"
    for module in model.trunk.modules():
        module.__dict__.pop("forward", None)


def parse_variant(name: str, base_precision: str) -> tuple[str, FastPathSettings]:
    parts = name.split("+")
    if parts[0] != "fast":
        raise SystemExit(f"variant {name!r} must start with 'fast'")
    precision, fields = base_precision, {}
    for flag in parts[1:]:
        if flag not in VARIANT_FLAGS:
            raise SystemExit(f"unknown variant modifier {flag!r}; known: {', '.join(VARIANT_FLAGS)}")
        p, f = VARIANT_FLAGS[flag]
        precision = p or precision
        fields.update(f)
    return precision, replace(FastPathSettings(), **fields)


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    s = sorted(lengths)
    return {"n": len(s), "mean": statistics.fmean(s), "median": statistics.median(s),
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "min": s[0], "max": s[-1], "total": sum(s)}


def mode_stats(preds: Sequence[Prediction], seconds: float, device: torch.device, cfg: Any, passes: int,
               peak_tflops: float, extra: dict[str, Any]) -> dict[str, Any]:
    n = len(preds)
    residues = sum(len(p.sequence) for p in preds)
    flops = sum(forward_flops(cfg, len(p.sequence), passes) for p in preds)
    peak, kind = peak_memory(device)
    achieved = flops / seconds / 1e12 if seconds > 0 else 0.0
    return {
        "proteins": n, "residues": residues, "seconds": seconds,
        "proteins_per_hour": 3600.0 * n / seconds if seconds else 0.0,
        "residues_per_second": residues / seconds if seconds else 0.0,
        "seconds_per_protein": seconds / n if n else 0.0,
        "peak_memory_bytes": peak, "peak_memory_kind": kind,
        "flops_total": flops, "flops_per_protein_mean": flops / n if n else 0.0,
        "achieved_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else 0.0,
        **extra,
    }


# ----------------------------------------------------------------------------------------------
# (a) naive inference
# ----------------------------------------------------------------------------------------------


def naive_one(model: Any, seq: str, device: torch.device, num_recycles: int) -> Prediction:
    """``model.infer([seq])`` with an explicit recycle count, outputs moved to the host."""
    from transformers.models.esm.openfold_utils import residue_constants
    from transformers.models.esm.openfold_utils.feats import atom14_to_atom37

    aatype = torch.tensor([[residue_constants.restype_order_with_x.get(c, residue_constants.restype_num)
                            for c in seq]], device=device)
    mask = torch.ones_like(aatype)
    position_ids = torch.arange(len(seq), device=device).unsqueeze(0)
    out = model(aatype, attention_mask=mask, position_ids=position_ids, num_recycles=num_recycles)
    atom37 = atom14_to_atom37(out["positions"][-1], out)
    return Prediction(
        sequence=seq,
        atom_positions=atom37[0].float().cpu().numpy(),
        atom_mask=out["atom37_atom_exists"][0].bool().cpu().numpy(),
        plddt=(out["plddt"][0, :, CA_INDEX].float() * 100).cpu().numpy(),
        pae=out["predicted_aligned_error"][0].float().cpu().numpy(),
        max_pae=float(out["max_predicted_aligned_error"]),
        ptm=float(out["ptm"]),  # one sequence: transformers' batch pTM is this sequence's
    )


@torch.no_grad()
def run_naive(model: Any, seqs: Sequence[str], device: torch.device, num_recycles: int,
              max_seconds: float | None) -> tuple[list[Prediction], float, dict[str, Any]]:
    assert PAE_BINS == 64 and PAE_MAX_BIN == 31  # the model's own heads, same constants
    default_chunk = model.trunk.chunk_size
    preds: list[Prediction] = []
    oom_retries = 0
    naive_one(model, seqs[0][:50], device, num_recycles)  # warm-up (CUDA context, kernels)
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for seq in seqs:
        try:
            preds.append(naive_one(model, seq, device, num_recycles))
        except Exception as e:
            if not is_oom(e):
                raise
            oom_retries += 1
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model.trunk.set_chunk_size(64)
            try:
                preds.append(naive_one(model, seq, device, num_recycles))
            finally:
                model.trunk.set_chunk_size(default_chunk)
        if max_seconds and time.perf_counter() - start > max_seconds:
            break
    sync(device)
    return preds, time.perf_counter() - start, {"oom_retries_with_chunk_64": oom_retries,
                                                "complete": len(preds) == len(seqs), "batch_size": 1}


# ----------------------------------------------------------------------------------------------
# (b) fast path
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def run_fast(backend: ESMFoldBackend, seqs: Sequence[str], device: torch.device, seed: int,
             max_seconds: float | None) -> tuple[list[Prediction], float, dict[str, Any]]:
    lengths = [len(s) for s in seqs]
    plan = backend.plan_batches(lengths)
    assert plan is not None
    budget = backend.batch_budget()
    # run the buckets in a shuffled order: a run cut short by --max-seconds stays representative
    random.Random(seed).shuffle(plan)
    batches = [[seqs[i] for i in b] for b in plan]
    backend.predict([seqs[0][:50]])  # warm-up (kernels, SDPA dispatch, compile of a first shape)
    sync(device)
    reset_peak(device)
    preds: list[Prediction] = []
    splits = 0
    start = time.perf_counter()
    done = 0
    try:
        for out in backend.predict_batches(batches):
            preds.extend(out)
            done += 1
            if max_seconds and time.perf_counter() - start > max_seconds:
                break
    except Exception as e:
        if not is_oom(e):
            raise
        # the fold stage's ladder, in short: halve the failed batch and go on synchronously
        if device.type == "cuda":
            torch.cuda.empty_cache()
        todo = batches[done:]
        while todo:
            batch = todo.pop(0)
            try:
                preds.extend(backend.predict(batch))
            except Exception as e2:
                if not is_oom(e2) or len(batch) == 1:
                    raise
                splits += 1
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                todo[:0] = [batch[: len(batch) // 2], batch[len(batch) // 2:]]
            if max_seconds and time.perf_counter() - start > max_seconds:
                break
    sync(device)
    seconds = time.perf_counter() - start
    sizes = [len(b) for b in plan]
    memory = backend.memory_model
    extra = {
        "complete": len(preds) == len(seqs), "batches": len(plan), "mean_batch_size": statistics.fmean(sizes),
        "max_batch_size": max(sizes), "padding_ratio": padding_ratio(lengths, plan), "oom_splits": splits,
        "precision": backend.precision_mode, "settings": backend.info.extra.get("fast_path"),
        "budget": {"max_tokens": budget.max_tokens, "max_bytes": budget.max_bytes, "chunk_size": budget.chunk_size,
                   **{k: v for k, v in budget.notes.items()}},
        "batch_shapes": [[len(b), max(lengths[i] for i in b)] for b in plan],
        "predicted_peak_bytes_max": (max(memory.batch_bytes(len(b), max(lengths[i] for i in b), budget.chunk_size)
                                         for b in plan) if memory else None),
        "gpu_seconds_sum": sum(p.seconds for p in preds),
    }
    return preds, seconds, extra


def calibrate_memory(backend: ESMFoldBackend, device: torch.device) -> dict[str, Any]:
    """Measured peak activation memory at a few (batch, length) points, and a fitted model."""
    if device.type != "cuda" or backend.memory_model is None:
        return {"available": False, "reason": "needs CUDA"}
    base = torch.cuda.memory_allocated(device)
    samples: list[tuple[int, int, int | None, float]] = []
    rows: list[dict[str, Any]] = []
    rng = random.Random(0)
    for b, length in ((1, 128), (1, 256), (1, 512), (1, 768), (4, 128), (2, 384)):
        seqs = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(length)) for _ in range(b)]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            backend.predict(seqs)
        except Exception as e:
            if not is_oom(e):
                raise
            rows.append({"batch": b, "length": length, "oom": True})
            continue
        chunk = backend.model.trunk.chunk_size
        peak = torch.cuda.max_memory_allocated(device) - base
        predicted = backend.memory_model.batch_bytes(b, length, chunk)
        samples.append((b, length, chunk, float(peak)))
        rows.append({"batch": b, "length": length, "chunk": chunk, "measured_bytes": peak,
                     "predicted_bytes": predicted, "predicted_over_measured": predicted / peak if peak else None})
    fitted = MemoryModel.fit(samples, backend.memory_model) if len(samples) >= 3 else None
    return {"available": True, "points": rows, "prior": vars(backend.memory_model),
            "fitted": vars(fitted) if fitted else None}


# ----------------------------------------------------------------------------------------------
# Feed rate: the CPU work after folding
# ----------------------------------------------------------------------------------------------


def synthetic_predictions(seqs: Sequence[str], seed: int) -> list[Prediction]:
    """Predictions of the right shapes and plausible values (CA trace with 3.8 A steps, smooth
    pLDDT, PAE growing with sequence separation), for timing the write stage without a model."""
    from transformers.models.esm.openfold_utils import residue_constants

    rng = np.random.default_rng(seed)
    atom_mask_table = np.asarray(residue_constants.restype_atom37_mask, dtype=bool)
    order = residue_constants.restype_order_with_x
    preds = []
    for seq in seqs:
        n = len(seq)
        steps = rng.normal(size=(n, 3))
        steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
        ca = np.cumsum(steps, axis=0)
        pos = ca[:, None, :] + rng.normal(scale=1.2, size=(n, 37, 3))
        pos[:, 1] = ca
        mask = atom_mask_table[[order.get(c, residue_constants.restype_num) for c in seq]]
        pos = np.where(mask[..., None], pos, 0.0).astype(np.float32)
        plddt = np.clip(60 + 25 * np.sin(np.arange(n) / 9.0) + rng.normal(scale=3, size=n), 0, 100)
        sep = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
        pae = np.clip(2 + 0.08 * sep + rng.normal(scale=1.0, size=(n, n)), 0, 31.75)
        preds.append(Prediction(seq, pos, mask, plddt.astype(np.float32), pae.astype(np.float32), 31.75,
                                float(rng.uniform(0.3, 0.9))))
    return preds


def _cpu_timer() -> Callable[[], tuple[float, float]]:
    t0, c0 = time.perf_counter(), time.process_time()
    return lambda: (time.perf_counter() - t0, time.process_time() - c0)


def feed_rate(preds: Sequence[Prediction], fasta: str | None, model_name: str, source: str) -> dict[str, Any]:
    """CPU seconds per protein of confidence + ModelCIF + PAE JSON + shards + Parquet + publish."""
    try:
        from model.base import ModelInfo
        from pipeline.confidence import ConfidencePolicy, compute_confidence
        from pipeline.config import PlanConfig
        from pipeline.ingest import AcceptedRecord, ingest, sequence_hashes
        from pipeline.plan import cut_units
        from pipeline.write import WriteContext, _modelcif_entry, write_unit
        from storage.afdb_json import write_pae_json
        from storage.atlas import Atlas
        from storage.mmcif import render_modelcif
    except ImportError as e:
        return {"available": False, "reason": f"FoldAtlas write-stage dependencies missing here ({e}); "
                                              "measure on the CPU with --feed-rate-only and pass --feed-rate-json"}
    if not preds:
        return {"available": False, "reason": "no predictions"}
    records: dict[str, AcceptedRecord] = {}
    if fasta:
        with contextlib.suppress(Exception):
            for accepted in ingest(fasta).accepted:
                records.setdefault(accepted.sequence, accepted)
    by_sha: dict[str, list[AcceptedRecord]] = {}
    for i, p in enumerate(preds):
        rec = records.get(p.sequence)
        if rec is None:
            sha, crc, md5 = sequence_hashes(p.sequence)
            rec = AcceptedRecord(source="bench.fasta", record_index=i, line=1 + 2 * i, header=f"BENCH{i}",
                                 accession=f"BENCH{i}", uniprot_id=None, description="", organism=None, tax_id=None,
                                 gene=None, is_reviewed=None, protein_existence=None, sequence_version=None,
                                 sequence=p.sequence, length=len(p.sequence), sha256=sha, crc64=crc, md5=md5)
        by_sha.setdefault(rec.sha256, [rec])
    info = ModelInfo(name=model_name, version=f"torch {torch.__version__}", weights_sha256="random-init",
                     trained=False, precision="fp16-lm")
    policy = ConfidencePolicy()
    pred_by_seq = {p.sequence: p for p in preds}

    # components, one prediction at a time
    parts = {"confidence": 0.0, "modelcif": 0.0, "pae_json_gzip": 0.0}
    created = datetime.now(UTC).date()
    for recs in by_sha.values():
        p = pred_by_seq[recs[0].sequence]
        clock = _cpu_timer()
        compute_confidence(p, policy)
        parts["confidence"] += clock()[1]
        clock = _cpu_timer()
        cif = render_modelcif(p, _modelcif_entry(recs[0], created), info, {"run_id": "bench"})
        gzip.compress(cif.encode(), mtime=0)
        parts["modelcif"] += clock()[1]
        clock = _cpu_timer()
        gzip.compress(write_pae_json(p.pae, p.max_pae), mtime=0)
        parts["pae_json_gzip"] += clock()[1]

    # the whole write stage and the publish, as the pipeline runs them
    with tempfile.TemporaryDirectory(prefix="foldatlas-feed-") as tmp:
        atlas = Atlas(Path(tmp) / "atlas")
        atlas.init()
        staging = atlas.staging_dir("bench")
        ctx = WriteContext(staging=str(staging), atlas=str(atlas.root), run_id="bench", policy=policy,
                           provenance={"run_id": "bench"})
        units = cut_units(by_sha, model_name, PlanConfig())
        clock = _cpu_timer()
        published = 0
        for unit in units:
            outcomes: list[Any] = [pred_by_seq[s] for s in unit.sequences]
            manifest = write_unit(unit, outcomes, info, {}, ctx)
            atlas.publish_unit("bench", manifest.unit_id, manifest.staged, manifest.counts)
            published += manifest.counts.get("published_structures", 0)
        wall, cpu = clock()
    n = len(by_sha)
    return {
        "available": True, "source": source, "proteins": n, "units": len(units), "published_structures": published,
        "mean_length": statistics.fmean(len(s[0].sequence) for s in by_sha.values()),
        "cpu_seconds_per_protein": cpu / n, "wall_seconds_per_protein": wall / n,
        "components_cpu_seconds_per_protein": {k: v / n for k, v in parts.items()},
        "what": "pipeline.write.write_unit (confidence, ModelCIF, PAE JSON, gzip, tar shard, Parquet) + "
                "Atlas.publish_unit, process CPU time",
    }


def cores_per_gpu(feed: dict[str, Any], gpu_seconds_per_protein: float) -> dict[str, Any]:
    if not feed.get("available") or gpu_seconds_per_protein <= 0:
        return {"available": False}
    ratio = feed["cpu_seconds_per_protein"] / gpu_seconds_per_protein
    return {"available": True, "cpu_seconds_per_protein": feed["cpu_seconds_per_protein"],
            "gpu_seconds_per_protein": gpu_seconds_per_protein, "write_cores_per_gpu": ratio,
            "cores_per_gpu_recommended": math.ceil(ratio) + 1,
            "note": "write_cores_per_gpu cores keep up with one GPU; +1 core for the fold actor's own "
                    "Python thread (kernel launches, batching)"}


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "full"], default="full")
    ap.add_argument("--n", type=int, default=200, help="sequences to fold")
    ap.add_argument("--naive-n", type=int, default=None, help="fold only the first N with the naive path")
    ap.add_argument("--max-len", type=int, default=1280)
    ap.add_argument("--fasta", default=str(DEFAULT_FASTA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--num-recycles", type=int, default=None,
                    help="explicit recycles for both modes; default max_recycles - 1 (= model.infer's passes)")
    ap.add_argument("--precision", default="auto", help="fast path precision (auto: fp16-lm on CUDA, fp32 on CPU)")
    ap.add_argument("--variants", default="fast", help="comma-separated: fast[+modifier...]; modifiers: "
                    + ", ".join(VARIANT_FLAGS))
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop each mode after this long")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    ap.add_argument("--calibrate-memory", action="store_true", help="fit the memory model (CUDA)")
    ap.add_argument("--feed-rate", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--feed-rate-only", action="store_true",
                    help="no model: time the write stage on synthetic predictions of the sampled lengths")
    ap.add_argument("--feed-rate-json", default=None, help="take the feed-rate block from an earlier result")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=None, help="JSON result path (default: print only)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not Path(args.fasta).is_file():
        raise SystemExit(f"{args.fasta}: no such FASTA (pass --fasta; on a GPU machine copy "
                         "UP000000625_83333.fasta into an ignored path of the checkout and carry it)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    seqs = sample_lengths_from_fasta(args.fasta, args.n, args.max_len, args.seed)
    lengths = [len(s) for s in seqs]
    result: dict[str, Any] = {
        "schema": SCHEMA, "label": args.label, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "argv": list(argv) if argv is not None else sys.argv[1:],
        "environment": environment(device),
        "workload": {"fasta": Path(args.fasta).name,
                     "fasta_sha256": hashlib.sha256(Path(args.fasta).read_bytes()).hexdigest(),
                     "n": args.n, "max_len": args.max_len, "seed": args.seed, "lengths": length_stats(lengths)},
    }
    if args.feed_rate_only:
        result["feed_rate"] = feed_rate(synthetic_predictions(seqs, args.seed), args.fasta, "esmfold",
                                        "synthetic predictions of the sampled lengths")
        return _finish(result, args)

    model, weights_id = build_model(args.config, device, args.seed)
    cfg = model.config
    recycles = args.num_recycles if args.num_recycles is not None else max(cfg.esmfold_config.trunk.max_recycles - 1, 0)
    passes = trunk_passes(recycles, cfg)
    result["model"] = {
        "config": args.config, "weights": weights_id, "parameters": sum(p.numel() for p in model.parameters()),
        "lm_layers": cfg.num_hidden_layers, "lm_hidden": cfg.hidden_size, "trunk_blocks": cfg.esmfold_config.trunk.num_blocks,
        "c_s": cfg.esmfold_config.trunk.sequence_state_dim, "c_z": cfg.esmfold_config.trunk.pairwise_state_dim,
        "num_recycles": recycles, "trunk_passes": passes, "config_chunk_size": cfg.esmfold_config.trunk.chunk_size,
    }
    result["flop_model"] = {"doc": "model.fastpath.forward_flops", "peak_tflops": args.peak_tflops,
                            "per_protein_at_mean_length": forward_flops(cfg, round(statistics.fmean(lengths)), passes)}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    # a second variant needs the fp32 language model back: keep a host copy (11 GB for ESM-2 3B)
    lm_state = ({k: v.detach().to("cpu", copy=True) for k, v in model.esm.state_dict().items()}
                if len(variants) > 1 else None)

    naive_preds: list[Prediction] = []
    if not args.skip_naive:
        naive_seqs = seqs[: args.naive_n] if args.naive_n else seqs
        naive_preds, seconds, extra = run_naive(model, naive_seqs, device, recycles, args.max_seconds)
        result["naive"] = mode_stats(naive_preds, seconds, device, cfg, passes, args.peak_tflops, extra)
        print(f"naive: {result['naive']['proteins_per_hour']:.0f} proteins/h "
              f"({len(naive_preds)} proteins, {seconds:.1f} s)", flush=True)

    result["fast"], result["numerics"] = {}, {}
    first_fast: list[Prediction] = []
    for i, variant in enumerate(variants):
        if i:
            assert lm_state is not None
            reset_model(model, lm_state)
        precision, fast = parse_variant(variant, args.precision)
        backend = ESMFoldBackend.from_model(model, ESMFoldSettings(
            name=f"esmfold-{args.config}-random", device=str(device), precision=precision, num_recycles=recycles,
            fast=fast), weights_id=weights_id)
        preds, seconds, extra = run_fast(backend, seqs, device, args.seed, args.max_seconds)
        stats = mode_stats(preds, seconds, device, cfg, passes, args.peak_tflops, extra)
        if args.calibrate_memory and variant == "fast":
            result["memory_calibration"] = calibrate_memory(backend, device)
        result["fast"][variant] = stats
        if naive_preds:
            done = {p.sequence: p for p in preds}
            common = [p for p in naive_preds if p.sequence in done]
            if common:
                result["numerics"][variant] = compare_predictions(common, [done[p.sequence] for p in common])
            stats["speedup_vs_naive"] = stats["proteins_per_hour"] / result["naive"]["proteins_per_hour"]
        print(f"{variant}: {stats['proteins_per_hour']:.0f} proteins/h ({len(preds)} proteins, {seconds:.1f} s, "
              f"speed-up {stats.get('speedup_vs_naive', float('nan')):.2f}x)", flush=True)
        first_fast = first_fast or preds
        del backend
    primary = result["fast"][next(iter(result["fast"]))]

    if args.feed_rate_json:
        earlier = json.loads(Path(args.feed_rate_json).read_text())
        result["feed_rate"] = earlier.get("feed_rate_proteome") or earlier["feed_rate"]
        result["feed_rate"]["imported_from"] = Path(args.feed_rate_json).name
    elif args.feed_rate:
        result["feed_rate"] = feed_rate(first_fast, args.fasta, f"esmfold-{args.config}",
                                        "this run's fast-path predictions")
    if "feed_rate" in result:
        result["cores_per_gpu"] = cores_per_gpu(result["feed_rate"], primary["seconds_per_protein"])
    return _finish(result, args)


def _finish(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    text = json.dumps(result, indent=2, sort_keys=False, default=float)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
