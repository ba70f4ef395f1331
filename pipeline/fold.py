"""Fold stage: length-bucketed batches through a model backend, with a failure ladder.

A work unit's sequences are cut into model batches whose padded size (``batch size x longest
sequence``) stays within ``max_tokens_per_batch``. When a batch raises (out of memory or any model
error) it is split in halves and retried, down to single sequences; a single sequence that fails
is retried once with trunk chunking (lower peak memory), and if that also fails it becomes a
:class:`~model.base.PredictionFailure` with a reason code. Nothing is ever dropped silently: the
result always holds exactly one outcome per input sequence.

This module is plain Python; :mod:`pipeline.runner` puts it on Ray.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model.base import ModelBackend, Prediction, PredictionFailure

log = logging.getLogger(__name__)

Outcome = Prediction | PredictionFailure


@dataclass(frozen=True)
class FoldSettings:
    max_tokens_per_batch: int | None = None  # padded tokens (batch size x longest); None: by device

    @staticmethod
    def default_tokens(device_type: str) -> int:
        """On CPU one sequence per call is fastest (measured, docs/configuration.md); GPUs want batches."""
        return 512 if device_type == "cpu" else 8192
    max_batch_size: int = 64
    chunk_size_on_oom: int | None = 64  # trunk chunk size for the last single-sequence attempt


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/CPU out-of-memory errors, whatever wrapper torch used."""
    if isinstance(exc, MemoryError):
        return True
    torch_oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if torch_oom is not None and isinstance(exc, torch_oom):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "cuda error: out of memory" in text or "can't allocate memory" in text


def cut_batches(lengths: Sequence[int], settings: FoldSettings) -> list[list[int]]:
    """Indices grouped into batches in the given order (callers sort by length first)."""
    budget = settings.max_tokens_per_batch or FoldSettings.default_tokens("cpu")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        new_longest = max(longest, n)
        if current and (
            new_longest * (len(current) + 1) > budget
            or len(current) >= settings.max_batch_size
        ):
            batches.append(current)
            current, new_longest = [], n
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_output(pred: Prediction) -> str | None:
    finite = (
        np.isfinite(pred.atom_positions[pred.atom_mask]).all()
        and np.isfinite(pred.plddt).all()
        and np.isfinite(pred.pae).all()
        and np.isfinite(pred.ptm)
    )
    return None if finite else "non_finite_output"


class Folder:
    """Runs the failure ladder over one backend."""

    def __init__(self, backend: ModelBackend, settings: FoldSettings | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.backend = backend
        settings = settings or FoldSettings()
        if settings.max_tokens_per_batch is None:
            device = getattr(getattr(backend, "device", None), "type", "cpu")
            settings = dataclasses.replace(settings, max_tokens_per_batch=FoldSettings.default_tokens(device))
        self.settings = settings
        self.on_batch = on_batch
        self.batch_sizes: dict[str, int] = {}  # sequence -> size of the batch that produced it

    def fold(self, sequences: Sequence[str], msas: Sequence[str | None] | None = None) -> list[Outcome]:
        """One outcome per input sequence, in input order. ``msas``: A3M text or None per sequence."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        outcomes: dict[int, Outcome] = {}
        lengths = [len(sequences[i]) for i in order]
        planner = getattr(self.backend, "plan_batches", None)  # ESMFold fast path: buckets sized by free memory
        planned = planner(lengths, self.settings.max_batch_size) if planner is not None else None
        for batch in planned if planned is not None else cut_batches(lengths, self.settings):
            idx = [order[j] for j in batch]
            batch_msas = [msas[i] for i in idx] if msas is not None else None
            for i, out in zip(idx, self._attempt([sequences[i] for i in idx], batch_msas), strict=True):
                outcomes[i] = out
        return [outcomes[i] for i in range(len(sequences))]

    def _attempt(self, seqs: list[str], msas: list[str | None] | None = None) -> list[Outcome]:
        try:
            preds = self.backend.predict(seqs, msas)
        except Exception as e:  # the ladder below handles every model failure
            _release_memory()
            reason = "oom" if is_oom(e) else "model_error"
            log.warning("batch of %d failed (%s: %s); splitting", len(seqs), reason, str(e)[:200])
            if len(seqs) > 1:
                half = len(seqs) // 2
                first, second = (msas[:half], msas[half:]) if msas is not None else (None, None)
                return self._attempt(seqs[:half], first) + self._attempt(seqs[half:], second)
            return [self._last_resort(seqs[0], msas[0] if msas else None, reason, e)]
        outcomes: list[Outcome] = []
        for pred in preds:
            bad = _check_output(pred)
            if bad:
                outcomes.append(PredictionFailure(pred.sequence, bad, "model output contains NaN or inf", len(seqs)))
            else:
                self.batch_sizes[pred.sequence] = len(seqs)
                outcomes.append(pred)
        return outcomes

    def _last_resort(self, seq: str, msa: str | None, reason: str, first: Exception) -> Outcome:
        chunk = self.settings.chunk_size_on_oom
        set_chunk = getattr(self.backend, "set_chunk_size", None)
        if reason == "oom" and chunk and set_chunk is not None:
            log.warning("retrying length %d alone with trunk chunk size %d", len(seq), chunk)
            set_chunk(chunk)
            try:
                pred = self.backend.predict([seq], [msa] if msa is not None else None)[0]
                self.batch_sizes[seq] = 1
                return pred
            except Exception as e:  # recorded as a failure row below
                first, reason = e, ("oom" if is_oom(e) else "model_error")
                _release_memory()
            finally:
                set_chunk(None)  # back to the backend's configured chunk size
        message = f"{type(first).__name__}: {first}"[-2000:]
        return PredictionFailure(seq, reason, message, 1)
