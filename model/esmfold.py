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
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch

from model.base import ModelInfo, Prediction
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
    precision: str = "auto"  # "auto" (fp32 on CPU, fp16 language model on GPU), "fp32", "fp16", "bf16"
    num_recycles: int | None = None  # None: the config's max_recycles (4 for esmfold_v1)
    chunk_size: int | None = None  # trunk axial-attention chunk size; None = the model config's value


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

    def __init__(self, settings: ESMFoldSettings) -> None:
        import transformers
        from transformers import EsmForProteinFolding

        self.settings = settings
        self.device = _pick_device(settings.device)
        if settings.name == "esmfold-tiny":
            torch.manual_seed(TINY_SEED)
            model = EsmForProteinFolding(tiny_config())
            weights_id = f"random-init:seed={TINY_SEED}:config=esmfold-tiny"
            trained = False
        elif settings.name == "esmfold":
            if not settings.weights:
                raise WeightsError("--model esmfold needs --weights", hint=HOW_TO_GET_WEIGHTS)
            path, weights_id = resolve_weights(settings.weights, settings.weights_sha256)
            try:
                model = EsmForProteinFolding.from_pretrained(str(path))
            except (OSError, ValueError) as e:
                raise WeightsError(f"Could not load ESMFold weights from {path}: {e}", hint=HOW_TO_GET_WEIGHTS) from e
            trained = True
        else:
            raise WeightsError(f"Unknown ESMFold variant {settings.name!r}", hint="Use esmfold or esmfold-tiny.")

        precision = settings.precision
        if precision == "auto":
            precision = "fp16-lm" if self.device.type == "cuda" else "fp32"
        model = model.float()
        if precision in ("fp16-lm", "fp16"):
            model.esm.half()  # the reference implementation runs the ESM-2 language model in fp16
        elif precision == "bf16":
            model.esm.to(torch.bfloat16)
        if self.device.type == "cpu" and precision != "fp32":
            raise WeightsError(f"precision {precision} is not supported on CPU", hint="Use --precision fp32 on CPU.")
        self.default_chunk_size = settings.chunk_size or model.config.esmfold_config.trunk.chunk_size
        model.trunk.set_chunk_size(self.default_chunk_size)
        self.model = model.to(self.device).eval()
        self.info = ModelInfo(
            name=settings.name,
            version=f"transformers {transformers.__version__}; torch {torch.__version__}",
            weights_sha256=weights_id,
            trained=trained,
            uses_msa=False,
            precision=precision,
            extra={"device": str(self.device), "num_recycles": str(self.num_recycles)},
        )
        from transformers.models.esm.openfold_utils import residue_constants

        self._restype_order = residue_constants.restype_order_with_x
        self._unk = residue_constants.restype_num  # index of X

    @property
    def num_recycles(self) -> int:
        if self.settings.num_recycles is not None:
            return self.settings.num_recycles
        return int(self.model.config.esmfold_config.trunk.max_recycles)

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Trunk chunk size; ``None`` restores the configured default."""
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


def load_backend(settings: ESMFoldSettings) -> ESMFoldBackend:
    log.info("loading %s on %s", settings.name, settings.device)
    return ESMFoldBackend(settings)
