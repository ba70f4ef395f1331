"""ESMFold backend on transformers' ``EsmForProteinFolding``.

Two models share this code:

``esmfold``
    The published facebook/esmfold_v1 weights, loaded from a local Hugging Face directory or an
    ``s3://`` prefix (:mod:`model.weights`).
``esmfold-tiny``
    The same class with the small config in ``model/configs/esmfold-tiny.json`` and random weights
    from a fixed seed. Its outputs are not predictions of anything: ``ModelInfo.trained`` is False
    and every artifact says so.

We call ``forward`` rather than ``infer``: transformers' ``forward`` computes pTM over the whole
padded batch (one number for all sequences), while the original ESM code crops the pTM logits to
each sequence's length. We build the padded batch with an attention mask ourselves and compute pTM
and PAE per sequence from the cropped logits, so batched and single-sequence results agree.

``ESMFoldSettings.fast`` (a :class:`model.fastpath.FastPathSettings`) switches on the fast path:
SDPA attention in the language model, pTM/PAE/atom37 computed on the device for the whole batch,
one pinned-memory transfer per batch, the trunk chunked only when free memory needs it, and
:meth:`ESMFoldBackend.plan_batches` (length buckets sized from free GPU memory). With
``fast=None`` (the default) the code below runs exactly as before.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch

from model.base import ModelInfo, Prediction
from model.fastpath import (
    BatchBudget,
    FastPathSettings,
    MemoryModel,
    apply_precision,
    batched_ptm,
    budget_from_free_memory,
    choose_chunk_size,
    compile_trunk,
    enable_lm_sdpa,
    enable_trunk_sdpa,
    free_bytes,
    plan_batches,
    resolve_precision,
    run_context,
)
from model.weights import HOW_TO_GET_WEIGHTS, resolve_weights
from pipeline.errors import WeightsError

log = logging.getLogger(__name__)

TINY_SEED = 0
PAE_MAX_BIN = 31
PAE_BINS = 64
CA_INDEX = 1  # atom37 index of CA


@dataclass(frozen=True)
class ESMFoldSettings:
    name: str = "esmfold"  # "esmfold" or "esmfold-tiny"
    weights: str | None = None  # local directory or s3:// prefix (esmfold only)
    weights_sha256: str | None = None
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1" ...
    # "auto" (fp32 on CPU, fp16 language model on GPU), "fp32", "fp16"/"fp16-lm", "bf16"/"bf16-lm"
    # (language model only), "bf16-full" (autocast for the trunk too); see model.fastpath
    precision: str = "auto"
    num_recycles: int | None = None  # None: the config's max_recycles (4 for esmfold_v1)
    chunk_size: int | None = None  # trunk axial-attention chunk size; None = the model config's value
    fast: FastPathSettings | None = None  # None: the reference path


def tiny_config() -> Any:
    from transformers import EsmConfig

    text = resources.files("model").joinpath("configs/esmfold-tiny.json").read_text()
    raw = json.loads(text)
    raw.pop("_comment", None)
    return EsmConfig(**raw)


def _pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class ESMFoldBackend:
    """Loads the model once; ``predict`` folds a batch with padding masks."""

    def __init__(self, settings: ESMFoldSettings, model: Any | None = None, weights_id: str | None = None,
                 trained: bool = False) -> None:
        """Load the model ``settings`` names, or wrap ``model`` (an ``EsmForProteinFolding``, e.g. the
        full-size random config of the benchmark) with ``weights_id`` / ``trained`` as provenance."""
        import transformers
        from transformers import EsmForProteinFolding

        self.settings = settings
        self.device = _pick_device(settings.device)
        net: Any = model
        if net is not None:
            weights_id = weights_id or "in-memory model"
        elif settings.name == "esmfold-tiny":
            torch.manual_seed(TINY_SEED)
            net = EsmForProteinFolding(tiny_config())
            weights_id = f"random-init:seed={TINY_SEED}:config=esmfold-tiny"
            trained = False
        elif settings.name == "esmfold":
            if not settings.weights:
                raise WeightsError("--model esmfold needs --weights", hint=HOW_TO_GET_WEIGHTS)
            path, weights_id = resolve_weights(settings.weights, settings.weights_sha256)
            try:
                net = EsmForProteinFolding.from_pretrained(str(path))
            except (OSError, ValueError) as e:
                raise WeightsError(f"Could not load ESMFold weights from {path}: {e}", hint=HOW_TO_GET_WEIGHTS) from e
            trained = True
        else:
            raise WeightsError(f"Unknown ESMFold variant {settings.name!r}", hint="Use esmfold or esmfold-tiny.")

        try:
            self.precision_mode = resolve_precision(settings.precision, self.device.type)
        except ValueError as e:
            raise WeightsError(str(e), hint="Use --precision fp32 (or bf16) on CPU.") from e
        # the recorded precision: the resolved mode for "auto", otherwise the value as configured
        precision = self.precision_mode if settings.precision == "auto" else settings.precision
        apply_precision(net, self.precision_mode)
        self.default_chunk_size = settings.chunk_size or net.config.esmfold_config.trunk.chunk_size
        self._forced_chunk: int | None = None
        net.trunk.set_chunk_size(self.default_chunk_size)
        self.model = net.to(self.device).eval()
        self.fast = settings.fast
        extra = {"device": str(self.device), "num_recycles": str(self.num_recycles)}
        self.memory_model: MemoryModel | None = None
        if self.fast is not None:
            lm_sdpa = enable_lm_sdpa(self.model) if self.fast.lm_sdpa else False
            if self.fast.trunk_sdpa:
                enable_trunk_sdpa(self.model)
            if self.fast.compile_trunk:
                compile_trunk(self.model)
            lm_bytes = 4 if self.precision_mode == "fp32" else 2
            self.memory_model = MemoryModel.for_config(self.model.config, lm_bytes=lm_bytes, lm_sdpa=lm_sdpa,
                                                       trunk_sdpa=self.fast.trunk_sdpa, device_type=self.device.type)
            extra["fast_path"] = self.fast.describe() + ("" if lm_sdpa or not self.fast.lm_sdpa else ",lm_sdpa=unavailable")
        self.info = ModelInfo(
            name=settings.name,
            version=f"transformers {transformers.__version__}; torch {torch.__version__}",
            weights_sha256=weights_id,
            trained=trained,
            uses_msa=False,
            precision=precision,
            extra=extra,
        )
        from transformers.models.esm.openfold_utils import residue_constants

        self._restype_order = residue_constants.restype_order_with_x
        self._unk = residue_constants.restype_num  # index of X
        table = np.full(256, self._unk, dtype=np.int64)
        for letter, index in self._restype_order.items():
            table[ord(letter)] = index
        self._lookup = table

    @classmethod
    def from_model(cls, model: Any, settings: ESMFoldSettings, weights_id: str, trained: bool = False) -> ESMFoldBackend:
        """Wrap an already built ``EsmForProteinFolding`` (random full-size configs, tests)."""
        return cls(settings, model=model, weights_id=weights_id, trained=trained)

    @property
    def num_recycles(self) -> int:
        if self.settings.num_recycles is not None:
            return self.settings.num_recycles
        return int(self.model.config.esmfold_config.trunk.max_recycles)

    @property
    def chunk_size(self) -> int | None:
        """The trunk chunk size of the next call when forced or configured (the fast path's automatic
        choice aside); None: unchunked."""
        return self._forced_chunk or self.default_chunk_size

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Trunk chunk size; ``None`` restores the configured default (the fast path's automatic
        choice when it is on). A size set here holds for every batch until reset."""
        self._forced_chunk = chunk_size
        self.model.trunk.set_chunk_size(chunk_size or self.default_chunk_size)

    def _encode(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, lmax = len(sequences), max(len(s) for s in sequences)
        aatype = torch.zeros((n, lmax), dtype=torch.long)
        mask = torch.zeros((n, lmax), dtype=torch.long)
        for i, seq in enumerate(sequences):
            aatype[i, : len(seq)] = torch.tensor([self._restype_order.get(c, self._unk) for c in seq])
            mask[i, : len(seq)] = 1
        position_ids = torch.arange(lmax).expand(n, -1).contiguous()
        return aatype.to(self.device), mask.to(self.device), position_ids.to(self.device)

    @torch.no_grad()
    def predict(self, sequences: list[str], msas: list[str | None] | None = None) -> list[Prediction]:
        """Fold a padded batch. ESMFold is MSA-free: ``msas`` is accepted and ignored."""
        if self.fast is not None:
            if not sequences:
                return []
            return self._finalize(self._launch(sequences))
        from transformers.models.esm.openfold_utils.feats import atom14_to_atom37
        from transformers.models.esm.openfold_utils.loss import compute_predicted_aligned_error, compute_tm

        if not sequences:
            return []
        start = time.perf_counter()
        aatype, mask, position_ids = self._encode(sequences)
        out = self.model(aatype, attention_mask=mask, position_ids=position_ids, num_recycles=self.num_recycles)
        atom37 = atom14_to_atom37(out["positions"][-1], out)  # (B, L, 37, 3)
        exists = out["atom37_atom_exists"].bool()
        plddt = out["plddt"].float() * 100.0  # (B, L, 37), 0-100
        ptm_logits = out["ptm_logits"].float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        total_residues = sum(len(s) for s in sequences)
        preds: list[Prediction] = []
        for i, seq in enumerate(sequences):
            n = len(seq)
            logits = ptm_logits[i, :n, :n]
            pae = compute_predicted_aligned_error(logits, max_bin=PAE_MAX_BIN, no_bins=PAE_BINS)
            ptm = compute_tm(logits, max_bin=PAE_MAX_BIN, no_bins=PAE_BINS)
            preds.append(
                Prediction(
                    sequence=seq,
                    atom_positions=atom37[i, :n].float().cpu().numpy().astype(np.float32),
                    atom_mask=exists[i, :n].cpu().numpy(),
                    plddt=plddt[i, :n, CA_INDEX].cpu().numpy().astype(np.float32),
                    pae=pae["predicted_aligned_error"].float().cpu().numpy().astype(np.float32),
                    max_pae=float(pae["max_predicted_aligned_error"]),
                    ptm=float(ptm),
                    seconds=elapsed * n / total_residues,
                )
            )
        return preds


    # ---- fast path ----------------------------------------------------------------------------

    def batch_budget(self, max_batch_size: int | None = None) -> BatchBudget:
        """The batch budget now: from free GPU memory on CUDA, the token budget on the CPU."""
        fast = self.fast or FastPathSettings()
        size = max_batch_size or fast.max_batch_size
        fallback = BatchBudget(max_tokens=fast.cpu_tokens, max_batch_size=size, max_pad_ratio=fast.max_pad_ratio,
                               chunk_size=self.default_chunk_size)
        memory = self.memory_model or MemoryModel.for_config(self.model.config, device_type=self.device.type)
        chunk = self._forced_chunk or (128 if self.settings.chunk_size is None else self.settings.chunk_size)
        return budget_from_free_memory(self.device, memory, fallback, safety=fast.memory_safety,
                                       reserve_bytes=fast.reserve_bytes, chunk_size=chunk)

    def plan_batches(self, lengths: Sequence[int], max_batch_size: int | None = None) -> list[list[int]] | None:
        """Length-bucketed batches (indices into ``lengths``) for the fast path; ``None`` when the
        fast path is off, so the caller keeps its own batching (``pipeline.fold.cut_batches``)."""
        if self.fast is None:
            return None
        m = self.fast.pad_multiple
        padded = [math.ceil(n / m) * m for n in lengths] if m > 1 else list(lengths)
        return plan_batches(padded, self.batch_budget(max_batch_size))

    def _chunk_for(self, batch_size: int, length: int) -> int | None:
        if self._forced_chunk is not None:
            return self._forced_chunk
        fast = self.fast
        if (fast is None or not fast.auto_chunk or self.settings.chunk_size is not None
                or self.device.type != "cuda" or self.memory_model is None):
            return self.default_chunk_size
        avail = free_bytes(self.device) * fast.memory_safety - fast.reserve_bytes
        return choose_chunk_size(self.memory_model, batch_size, length, avail)

    def _encode_fast(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fast = self.fast or FastPathSettings()
        n, lmax = len(sequences), max(len(s) for s in sequences)
        if fast.pad_multiple > 1:
            lmax = math.ceil(lmax / fast.pad_multiple) * fast.pad_multiple
        pin = self.device.type == "cuda"
        aatype = torch.zeros((n, lmax), dtype=torch.long, pin_memory=pin)
        mask = torch.zeros((n, lmax), dtype=torch.long, pin_memory=pin)
        for i, seq in enumerate(sequences):
            codes = self._lookup[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]
            aatype[i, : len(seq)] = torch.from_numpy(codes)
            mask[i, : len(seq)] = 1
        position_ids = torch.arange(lmax).expand(n, -1)
        return (aatype.to(self.device, non_blocking=pin), mask.to(self.device, non_blocking=pin),
                position_ids.to(self.device))

    @torch.no_grad()
    def _launch(self, sequences: list[str]) -> dict[str, Any]:
        """Run the model on a batch and start copying what the predictions need to the host.

        On CUDA the copies go to pinned memory without blocking; ``_finalize`` waits for them.
        pTM, PAE and atom37 are computed on the device for the whole batch (no per-sequence
        host round trips).
        """
        from transformers.models.esm.openfold_utils.feats import atom14_to_atom37

        cuda = self.device.type == "cuda"
        fast = self.fast or FastPathSettings()
        aatype, mask, position_ids = self._encode_fast(sequences)
        chunk = self._chunk_for(len(sequences), int(aatype.shape[1]))
        self.model.trunk.set_chunk_size(chunk)
        start_event = end_event = None
        if cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
        wall = time.perf_counter()
        with run_context(self.precision_mode, self.device, tf32=fast.tf32):
            out = self.model(aatype, attention_mask=mask, position_ids=position_ids, num_recycles=self.num_recycles)
        atom37 = atom14_to_atom37(out["positions"][-1].float(), out)
        device_out = {
            "atom37": atom37.float(),
            "exists": out["atom37_atom_exists"].bool(),
            "plddt": out["plddt"][..., CA_INDEX].float() * 100.0,
            "pae": out["predicted_aligned_error"].float(),
            "ptm": batched_ptm(out["ptm_logits"], mask, max_bin=PAE_MAX_BIN, no_bins=PAE_BINS,
                               probs=out["aligned_confidence_probs"]),
            "max_pae": out["max_predicted_aligned_error"].float().reshape(-1)[:1],
        }
        del out
        if cuda:
            host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v, non_blocking=True)
                    for k, v in device_out.items()}
            assert end_event is not None
            end_event.record()
        else:
            host = {k: v.cpu() for k, v in device_out.items()}
        return {"sequences": sequences, "host": host, "start": start_event, "end": end_event, "wall": wall,
                "chunk": chunk}

    def _finalize(self, launched: dict[str, Any]) -> list[Prediction]:
        """Wait for a launched batch's host copies and build its predictions (any thread)."""
        end = launched["end"]
        if end is not None:
            end.synchronize()
            elapsed = launched["start"].elapsed_time(end) / 1000.0  # GPU time of this batch
        else:
            elapsed = time.perf_counter() - launched["wall"]
        h = {k: v.numpy() for k, v in launched["host"].items()}
        sequences: list[str] = launched["sequences"]
        total_residues = sum(len(s) for s in sequences)
        max_pae = float(h["max_pae"][0])
        preds = []
        for i, seq in enumerate(sequences):
            n = len(seq)
            preds.append(Prediction(
                sequence=seq,
                atom_positions=np.array(h["atom37"][i, :n], dtype=np.float32),
                atom_mask=np.array(h["exists"][i, :n]),
                plddt=np.array(h["plddt"][i, :n], dtype=np.float32),
                pae=np.array(h["pae"][i, :n, :n], dtype=np.float32),
                max_pae=max_pae,
                ptm=float(h["ptm"][i]),
                seconds=elapsed * n / total_residues,
            ))
        return preds

    def predict_batches(self, batches: Iterable[list[str]]) -> Iterator[list[Prediction]]:
        """Fold batches in order, overlapping: while batch k+1 runs on the GPU, a worker thread
        waits for batch k's pinned host copies and builds its predictions. Needs ``fast``."""
        if self.fast is None:
            for seqs in batches:
                yield self.predict(seqs)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: Future[list[Prediction]] | None = None
            for seqs in batches:
                launched = self._launch(seqs)
                if pending is not None:
                    yield pending.result()
                pending = pool.submit(self._finalize, launched)
            if pending is not None:
                yield pending.result()


def load_backend(settings: ESMFoldSettings) -> ESMFoldBackend:
    log.info("loading %s on %s", settings.name, settings.device)
    return ESMFoldBackend(settings)
