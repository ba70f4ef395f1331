"""The ESMFold fast path: precision modes, SDPA attention, length buckets, memory budget, FLOP model.

:class:`model.esmfold.ESMFoldBackend` uses these when ``ESMFoldSettings.fast`` is set; the
reference path (``fast=None``) is unchanged. ``benchmarks/fold_throughput.py`` measures both.
This module imports only torch (transformers inside functions), so the benchmark runs from a copy
of the repository on a machine that has torch and transformers and nothing else.

Precision modes
---------------
``fp32``       everything in float32: the numerical reference.
``fp16-lm``    the ESM-2 language model in float16, trunk and structure module in float32. This is
               what the reference implementation does (``esm/esmfold/v1/esmfold.py`` calls
               ``self.esm.half()`` unconditionally). Alias ``fp16`` (the existing config value).
``bf16-lm``    the same with bfloat16 (works on CPU too). Alias ``bf16`` (existing config value,
               which has always meant "language model only").
``bf16-full``  language model in bfloat16 and ``torch.autocast(bfloat16)`` around the trunk and
               structure module as well (openfold's layer norm / IPA keep their fp32 islands).
               Not what the reference does: measured, not assumed (tests/model/test_fastpath.py).
``auto``       fp32 on CPU, fp16-lm on CUDA (unchanged meaning).

float16 on the CPU is refused (as before): use fp32 or bf16-lm there.

Memory model (per batch of ``B`` sequences padded to ``L`` residues)
-----------------------------------------------------------------------
ESMFold's peak memory has two phases, the language model and the folding trunk, and the larger
one sets the peak (the LM's activations are freed before the trunk's pair tensors grow)::

    lm    = B * (lm_per_token * (L + 2) + lm_per_pair * (L + 2)^2)
    trunk = B * (trunk_per_token * L + per_pair * L^2 + per_triple * min(chunk or L, L) * L^2)
    bytes(B, L, chunk) = max(lm, trunk)

* ``lm_per_token``: the LM keeps every layer's hidden state (``output_hidden_states``), stacks
  them and casts the stack to fp32: ``(layers + 1) * hidden * max(2 * b, 4 + b)`` bytes with
  ``b`` bytes per LM element, plus one layer's transients (FFN ``2 * intermediate * b``).
* ``lm_per_pair``: eager attention materialises scores, mask sum and softmax,
  ``3 * heads * b``; with SDPA on CUDA the fused kernels materialise nothing per pair.
* ``per_pair``: the pair state ``z`` is ``c_z * 4`` bytes per residue pair; about 24 ``z``-sized
  tensors are alive at the peak (``s_z_0``, recycled ``z``, ``z`` + relative positions, the
  triangular multiplicative update's four projections and gates, the pair MLP's 4x hidden layer,
  the 64-bin distogram / pTM logits and their softmax, the structure module's projected pair).
* ``per_triple``: triangular attention's logits ``[B, I, H, J, K]`` and their softmax,
  ``2 * pair_heads * 4`` bytes per (i, j, k) (one fewer with SDPA in the trunk). Chunking the I
  axis (``trunk.set_chunk_size``) replaces the first ``L`` by the chunk size: this is the only
  term cubic in ``L`` and the reason long sequences need chunking.

The coefficients come from the code, not from a measurement; ``benchmarks/fold_throughput.py
--calibrate-memory`` fits them on a GPU (``MemoryModel.fit``) and the JSON shows predicted
against measured peak memory for every batch.
"""

from __future__ import annotations

import contextlib
import math
import random
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

PRECISIONS = ("fp32", "fp16-lm", "bf16-lm", "bf16-full")
PRECISION_ALIASES = {"fp16": "fp16-lm", "bf16": "bf16-lm"}
CHUNK_CANDIDATES: tuple[int | None, ...] = (None, 512, 256, 128, 64, 32, 16)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastPathSettings:
    """What the fast path switches on (``ESMFoldSettings.fast``; ``None`` there = reference path).

    lm_sdpa: the ESM-2 language model uses ``scaled_dot_product_attention`` (transformers'
        ``EsmModel`` supports it; the folding class declares ``_supports_sdpa = False`` only
        because its trunk has its own attention).
    trunk_sdpa: triangular attention in the trunk through SDPA with the triangle bias as an
        additive mask (saves one L^3 tensor; off until measured on a GPU).
    tf32: TF32 matmuls for the fp32 trunk on CUDA, set only while the model runs.
    auto_chunk: on CUDA, pick the trunk chunk size per batch from free memory (unchunked when
        it fits); needs ``ESMFoldSettings.chunk_size`` unset. On the CPU the configured chunk stays.
    compile_trunk: ``torch.compile`` each trunk block (dynamic shapes); off until measured.
    pad_multiple: pad batches to a multiple of this many residues (fewer distinct shapes for
        compiled code; padding does not change results).
    max_pad_ratio, max_batch_size: bucket limits (longest / shortest length in a batch).
    memory_safety, reserve_bytes: share of free GPU memory the batch planner may use, and bytes
        kept back for the allocator's fragmentation and the CUDA context.
    cpu_tokens: padded-token budget on the CPU, where there is no free-memory query.
    """

    lm_sdpa: bool = True
    trunk_sdpa: bool = False
    tf32: bool = True
    auto_chunk: bool = True
    compile_trunk: bool = False
    pad_multiple: int = 1
    max_pad_ratio: float = 1.25
    max_batch_size: int = 64
    memory_safety: float = 0.85
    reserve_bytes: int = 2 << 30
    cpu_tokens: int = 512

    def describe(self) -> str:
        on = [name for name in ("lm_sdpa", "trunk_sdpa", "tf32", "auto_chunk", "compile_trunk") if getattr(self, name)]
        return ",".join(on) + f",pad_ratio={self.max_pad_ratio}"


def resolve_precision(requested: str, device_type: str) -> str:
    """Canonical precision mode for ``requested`` on ``device_type`` ("cpu", "cuda")."""
    if requested == "auto":
        return "fp16-lm" if device_type == "cuda" else "fp32"
    mode = PRECISION_ALIASES.get(requested, requested)
    if mode not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use auto, {', '.join(PRECISIONS)} (or fp16, bf16)")
    if device_type == "cpu" and mode == "fp16-lm":
        raise ValueError(f"precision {requested} is not supported on CPU")
    return mode


def lm_dtype(mode: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16-lm": torch.float16}.get(mode, torch.bfloat16)


def apply_precision(model: Any, mode: str) -> None:
    """Cast ``model`` for ``mode``: all fp32, then the language model to its dtype."""
    model.float()
    if mode != "fp32":
        model.esm.to(lm_dtype(mode))


@contextlib.contextmanager
def run_context(mode: str, device: torch.device, tf32: bool = False) -> Iterator[None]:
    """Autocast for ``bf16-full``; TF32 matmuls while the model runs (restored afterwards)."""
    with contextlib.ExitStack() as stack:
        if mode == "bf16-full":
            stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if tf32 and device.type == "cuda":
            stack.enter_context(_tf32())
        yield


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls on CUDA
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def enable_lm_sdpa(model: Any) -> bool:
    """Switch the ESM-2 language model to SDPA attention; False if this transformers cannot.

    ``EsmSelfAttention`` looks up ``config._attn_implementation`` at every call. The folding model
    shares its config object with the language model, and its own modules never read that field,
    so setting it affects the language model only.
    """
    esm = getattr(model, "esm", None)
    if esm is None or not getattr(type(esm), "_supports_sdpa", False):
        return False
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - older transformers
        return False
    if "sdpa" not in ALL_ATTENTION_FUNCTIONS:
        return False
    esm.config._attn_implementation = "sdpa"
    return True


def _sdpa_mha_forward(self: Any, q_x: torch.Tensor, kv_x: torch.Tensor, biases: list[torch.Tensor] | None = None,
                      use_memory_efficient_kernel: bool = False, use_lma: bool = False,
                      lma_q_chunk_size: int = 1024, lma_kv_chunk_size: int = 4096, use_flash: bool = False,
                      flash_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``EsmFoldAttention.forward`` through ``scaled_dot_product_attention`` (same maths).

    The biases (padding mask and triangle bias) are summed into one additive mask; q is scaled by
    ``1/sqrt(c_hidden)`` as in the original. Leading dims are flattened to the 4-D layout the
    fused CUDA kernels want.
    """
    q = self.linear_q(q_x)
    k = self.linear_k(kv_x)
    v = self.linear_v(kv_x)
    q = q.view((*q.shape[:-1], self.no_heads, -1)).transpose(-2, -3)  # [*, H, Q, C]
    k = k.view((*k.shape[:-1], self.no_heads, -1)).transpose(-2, -3)
    v = v.view((*v.shape[:-1], self.no_heads, -1)).transpose(-2, -3)
    lead, heads, nq, c = q.shape[:-3], q.shape[-3], q.shape[-2], q.shape[-1]
    nk = k.shape[-2]
    bias: torch.Tensor | None = None
    for b in biases or []:
        bias = b if bias is None else bias + b
    mask = None
    if bias is not None:
        mask = bias.to(q.dtype).expand(*lead, heads, nq, nk).reshape(-1, heads, nq, nk)
    o = torch.nn.functional.scaled_dot_product_attention(
        q.reshape(-1, heads, nq, c), k.reshape(-1, heads, nk, c), v.reshape(-1, heads, nk, c),
        attn_mask=mask, scale=1.0 / math.sqrt(self.c_hidden))
    o = o.view(*lead, heads, nq, c).transpose(-2, -3)  # [*, Q, H, C]
    return self._wrap_up(o, q_x)


def enable_trunk_sdpa(model: Any) -> int:
    """Route the trunk's triangular attention through SDPA; returns how many modules changed."""
    n = 0
    for block in model.trunk.blocks:
        for name in ("tri_att_start", "tri_att_end"):
            mha = getattr(block, name).mha
            mha.forward = types.MethodType(_sdpa_mha_forward, mha)
            n += 1
    return n


def compile_trunk(model: Any) -> None:
    """``torch.compile`` every trunk block with dynamic shapes (compiled once, reused per bucket)."""
    for block in model.trunk.blocks:
        block.forward = torch.compile(block.forward, dynamic=True)


# ----------------------------------------------------------------------------------------------
# Confidence on the device, batched
# ----------------------------------------------------------------------------------------------


def batched_ptm(ptm_logits: torch.Tensor, mask: torch.Tensor, max_bin: int = 31, no_bins: int = 64,
                eps: float = 1e-8, probs: torch.Tensor | None = None) -> torch.Tensor:
    """pTM per sequence of a padded batch, equal to transformers' ``compute_tm`` on each cropped
    sequence (``d0`` from the sequence's own length, mean over its residues, max over alignments).

    ``ptm_logits``: (B, L, L, bins); ``mask``: (B, L) of 0/1; ``probs``: softmax of the logits if
    already computed (the model's ``aligned_confidence_probs``). No host synchronisation.
    """
    logits = ptm_logits.float()
    probs = torch.softmax(logits, dim=-1) if probs is None else probs.float()
    boundaries = torch.linspace(0, max_bin, steps=no_bins - 1, device=logits.device)
    step = boundaries[1] - boundaries[0]
    centers = torch.cat([boundaries + step / 2, (boundaries[-1] + step * 1.5).unsqueeze(0)])
    w = mask.float()
    n = w.sum(-1)  # (B,)
    d0 = 1.24 * (n.clamp(min=19) - 15) ** (1.0 / 3) - 1.8
    tm_per_bin = 1.0 / (1 + centers.unsqueeze(0) ** 2 / d0.unsqueeze(-1) ** 2)  # (B, bins)
    term = torch.einsum("bijk,bk->bij", probs, tm_per_bin)  # (B, L, L)
    normed = w / (eps + n.unsqueeze(-1))
    per_alignment = (term * normed.unsqueeze(1)).sum(-1)  # (B, L)
    per_alignment = per_alignment.masked_fill(w == 0, float("-inf"))
    return per_alignment.max(dim=-1).values


# ----------------------------------------------------------------------------------------------
# Memory model and batch budget
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryModel:
    """Peak activation bytes of one forward; see the module docstring for each term."""

    lm_per_token: float
    lm_per_pair: float
    trunk_per_token: float
    per_pair: float
    per_triple: float

    def batch_bytes(self, batch_size: int, length: int, chunk_size: int | None = None) -> float:
        lt = length + 2
        lm = self.lm_per_token * lt + self.lm_per_pair * lt * lt
        depth = length if chunk_size is None else min(chunk_size, length)
        trunk = self.trunk_per_token * length + self.per_pair * length**2 + self.per_triple * depth * length**2
        return batch_size * max(lm, trunk)

    def scaled(self, factor: float) -> MemoryModel:
        return MemoryModel(*(factor * getattr(self, f) for f in self.__dataclass_fields__))

    @classmethod
    def for_config(cls, config: Any, lm_bytes: int = 2, lm_sdpa: bool = True, trunk_sdpa: bool = False,
                   device_type: str = "cuda") -> MemoryModel:
        layers = config.num_hidden_layers + 1
        d, d_ff, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
        trunk = config.esmfold_config.trunk
        c_s, c_z = trunk.sequence_state_dim, trunk.pairwise_state_dim
        pair_heads = c_z // trunk.pairwise_head_width
        sm_dim = trunk.structure_module.sequence_dim
        lm_per_token = layers * d * max(2 * lm_bytes, 4 + lm_bytes) + 2 * d_ff * lm_bytes + 8 * d * lm_bytes
        fused = lm_sdpa and device_type == "cuda"
        lm_per_pair = 0.0 if fused else 3.0 * heads * lm_bytes
        trunk_per_token = 4.0 * (64 * c_s + 64 * sm_dim)
        per_pair = 24.0 * 4 * c_z
        per_triple = (1 if trunk_sdpa else 2) * pair_heads * 4.0
        return cls(float(lm_per_token), lm_per_pair, trunk_per_token, per_pair, per_triple)

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, int | None, float]], prior: MemoryModel) -> MemoryModel:
        """Least-squares scale of ``prior``'s trunk terms to measured (B, L, chunk, peak bytes).

        Keeps the prior's shape (which terms exist), fits one factor per term family (token,
        pair, triple) on the trunk phase, which sets the peak for every L above a few dozen.
        """
        rows, ys = [], []
        for b, length, chunk, peak in samples:
            depth = length if chunk is None else min(chunk, length)
            rows.append([b * prior.trunk_per_token * length, b * prior.per_pair * length**2,
                         b * prior.per_triple * depth * length**2])
            ys.append(peak)
        a = torch.tensor(rows, dtype=torch.float64)
        y = torch.tensor(ys, dtype=torch.float64).unsqueeze(-1)
        coef = torch.linalg.lstsq(a, y).solution.squeeze(-1).clamp(min=0.1).tolist()
        return replace(prior, trunk_per_token=prior.trunk_per_token * coef[0], per_pair=prior.per_pair * coef[1],
                       per_triple=prior.per_triple * coef[2])


@dataclass(frozen=True)
class BatchBudget:
    """Limits on one batch of ``B`` sequences padded to ``L`` (the longest).

    ``max_tokens`` bounds padded tokens ``B * L`` (the language model's and sequence track's
    cost), ``max_pair_tokens`` bounds ``B * L^2`` (the trunk's pair state); with ``memory`` and
    ``max_bytes`` the memory model's estimate (at ``chunk_size``) must fit as well. A single
    sequence always makes a batch, whatever its size (the fold ladder deals with what fails).
    ``max_pad_ratio`` bounds the longest / shortest length inside a batch, so padded tokens are at
    most that factor over real tokens (and pair entries its square).
    """

    max_tokens: int
    max_pair_tokens: int | None = None
    max_batch_size: int = 64
    max_pad_ratio: float = 1.25
    memory: MemoryModel | None = None
    max_bytes: float | None = None
    chunk_size: int | None = 128
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def fits(self, batch_size: int, longest: int) -> bool:
        if batch_size <= 1:
            return True
        if batch_size > self.max_batch_size or batch_size * longest > self.max_tokens:
            return False
        if self.max_pair_tokens is not None and batch_size * longest * longest > self.max_pair_tokens:
            return False
        if self.memory is not None and self.max_bytes is not None:
            return self.memory.batch_bytes(batch_size, longest, self.chunk_size) <= self.max_bytes
        return True


def plan_batches(lengths: Sequence[int], budget: BatchBudget) -> list[list[int]]:
    """Length-bucketed batches: indices into ``lengths``, each exactly once.

    Greedy over the lengths in ascending order: a batch grows while it fits ``budget`` and its
    longest sequence is within ``max_pad_ratio`` of its shortest, so bucket boundaries follow the
    data (geometric steps of at most ``max_pad_ratio``) instead of fixed edges. Batches come out
    longest first: the biggest allocations happen while the allocator is empty, and an
    out-of-memory error surfaces at the start of a run.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    shortest = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        if current and n <= shortest * budget.max_pad_ratio and budget.fits(len(current) + 1, n):
            current.append(i)
            continue
        if current:
            batches.append(current)
        current, shortest = [i], n
    if current:
        batches.append(current)
    batches.reverse()
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded tokens / real tokens over all batches (1.0 = no padding)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return padded / real if real else 1.0


def free_bytes(device: torch.device) -> int:
    """Bytes a new allocation can use on ``device``: free device memory plus what the caching
    allocator holds but does not use."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def budget_from_free_memory(device: torch.device, memory: MemoryModel, fallback: BatchBudget,
                            safety: float = 0.85, reserve_bytes: int = 2 << 30,
                            chunk_size: int | None = 128) -> BatchBudget:
    """The batch budget for what is free on ``device`` now (call after loading the model).

    On CUDA: ``max_bytes = (free + allocator-cached) * safety - reserve_bytes``, checked against
    ``memory.batch_bytes`` assuming trunk chunk ``chunk_size`` (the backend then chunks only the
    batches that need it). Elsewhere (CPU) there is no such query: returns ``fallback``, the
    configured token budget.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return fallback
    avail = free_bytes(device)
    max_bytes = max(avail * safety - reserve_bytes, 0.0)
    return BatchBudget(max_tokens=1 << 31, max_pair_tokens=None, max_batch_size=fallback.max_batch_size,
                       max_pad_ratio=fallback.max_pad_ratio, memory=memory, max_bytes=max_bytes,
                       chunk_size=chunk_size, notes={"free_bytes": avail, "safety": safety})


def choose_chunk_size(memory: MemoryModel, batch_size: int, length: int, max_bytes: float,
                      candidates: Sequence[int | None] = CHUNK_CANDIDATES) -> int | None:
    """The least chunking (``None`` = none) whose estimate fits ``max_bytes``; else the smallest."""
    for chunk in candidates:
        if memory.batch_bytes(batch_size, length, chunk) <= max_bytes:
            return chunk
    return candidates[-1]


# ----------------------------------------------------------------------------------------------
# Configs and FLOPs
# ----------------------------------------------------------------------------------------------

# ESM-2 3B (esm.pretrained.esm2_t36_3B_UR50D: 36 layers, embed_dim 2560, 40 heads, FFN 4x) and the
# esmfold_v1 folding head (huggingface.co/facebook/esmfold_v1 config.json; transformers'
# TrunkConfig / StructureModuleConfig defaults: 48 blocks, c_s 1024, c_z 128, head widths 32,
# structure module 384/128, 8 blocks, 12 IPA heads; chunk_size null; max_recycles 4).
FULL_LM = {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 40, "intermediate_size": 10240}
FULL_TRUNK = {"num_blocks": 48, "sequence_state_dim": 1024, "pairwise_state_dim": 128, "sequence_head_width": 32,
              "pairwise_head_width": 32, "position_bins": 32, "max_recycles": 4, "chunk_size": None}


def full_config(lm_layers: int | None = None, trunk_blocks: int | None = None,
                structure_blocks: int | None = None) -> Any:
    """The full-size ESMFold architecture (ESM-2 3B + esmfold_v1 trunk) as an ``EsmConfig``.

    ``lm_layers`` / ``trunk_blocks`` / ``structure_blocks`` make a shallow model with the same
    widths (for CPU tests); leave them ``None`` for the published depth.
    """
    from transformers import EsmConfig

    from model.esmfold import tiny_config

    vocab = list(tiny_config().vocab_list)
    lm: dict[str, Any] = dict(FULL_LM, num_hidden_layers=lm_layers or FULL_LM["num_hidden_layers"])
    trunk: dict[str, Any] = dict(FULL_TRUNK, num_blocks=trunk_blocks or FULL_TRUNK["num_blocks"])
    if structure_blocks:
        trunk["structure_module"] = {"num_blocks": structure_blocks}
    return EsmConfig(
        vocab_size=33, pad_token_id=1, mask_token_id=32, max_position_embeddings=1026,
        position_embedding_type="rotary", layer_norm_eps=1e-5, token_dropout=True, emb_layer_norm_before=False,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_folding_model=True, vocab_list=vocab,
        architectures=["EsmForProteinFolding"],
        esmfold_config={"fp16_esm": False, "embed_aa": True, "lddt_head_hid_dim": 128, "esm_type": "esm2_3B",
                        "trunk": trunk},
        **lm,
    )


def trunk_passes(num_recycles: int | None, config: Any) -> int:
    """Trunk iterations that ``forward(num_recycles=...)`` runs: ``None`` -> ``max_recycles``
    (what ``model.infer`` does), an explicit ``n`` -> ``n + 1`` (transformers and esm alike)."""
    return int(config.esmfold_config.trunk.max_recycles) if num_recycles is None else num_recycles + 1


def forward_flops(config: Any, length: int, passes: int) -> float:
    """Estimated model FLOPs (multiply-add = 2) to fold one sequence of ``length`` residues.

    Language model (once, L + 2 tokens, per layer): projections and FFN ``24 d^2`` per token
    (4 d x d projections + 2 d x 4d FFN, x2 for multiply-add), attention ``4 L d`` per token.
    Trunk, per block and pass, with pair width c_z, sequence width c_s, H_s sequence heads:
      pair linears ``62 c_z^2 L^2`` (triangular multiplication out+in 2 x 12 c_z^2: six c_z x c_z
      projections each; triangular attention start+end 2 x 10 c_z^2: q, k, v, gate, output;
      pair MLP 16 c_z^2; sequence-to-pair output 2 c_z^2),
      cubic terms ``12 c_z L^3`` (triangle products 2 x 2 c_z L^3, triangle attention
      QK and AV 2 x 4 c_z L^3),
      sequence track ``26 c_s^2 L`` (attention 5 c_s^2 x 2, MLP 8 c_s^2 x 2) plus its attention
      ``4 c_s L^2`` and pair bias ``2 c_z H_s L^2``.
    Structure module (per pass, 8 blocks of IPA + transition, c = 384) and heads are below 2% for
    L > 100 and are counted roughly as ``blocks * (20 c^2 L + 2 c_z L^2 * 12)``.
    Padding is not counted: this is useful work, so MFU = useful FLOPs / (time x peak).
    """
    L = float(length)
    d, d_ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    t = config.esmfold_config.trunk
    c_s, c_z, blocks = t.sequence_state_dim, t.pairwise_state_dim, t.num_blocks
    h_s = c_s // t.sequence_head_width
    lt = L + 2
    lm = layers * ((8 * d * d + 4 * d * d_ff) * lt + 4 * lt * lt * d)
    block = 62 * c_z**2 * L**2 + 12 * c_z * L**3 + 26 * c_s**2 * L + 4 * c_s * L**2 + 2 * c_z * h_s * L**2
    sm = t.structure_module
    structure = sm.num_blocks * (20 * sm.sequence_dim**2 * L + 24 * sm.pairwise_dim * L**2)
    return float(lm + passes * (blocks * block + structure))


def sample_lengths_from_fasta(path: str, n: int, max_len: int, seed: int = 0) -> list[str]:
    """``n`` sequences drawn without replacement (with, if the file has fewer) from a FASTA file,
    keeping those of at most ``max_len`` residues; a fixed seed gives the same draw everywhere."""
    seqs: list[str] = []
    chunks: list[str] = []
    with open(path) as fh:
        for line in fh:
            if line.startswith(">"):
                if chunks:
                    seqs.append("".join(chunks))
                chunks = []
            else:
                chunks.append(line.strip().upper())
    if chunks:
        seqs.append("".join(chunks))
    seqs = [s for s in seqs if 0 < len(s) <= max_len]
    if not seqs:
        raise ValueError(f"{path}: no sequences of 1..{max_len} residues")
    rng = random.Random(seed)
    return rng.sample(seqs, n) if n <= len(seqs) else [rng.choice(seqs) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# Numerical comparison of two predictions of the same sequence
# ----------------------------------------------------------------------------------------------


def kabsch_rmsd(a: Any, b: Any) -> float:
    """RMSD of point sets ``a`` and ``b`` (N, 3) after optimal superposition (Kabsch)."""
    import numpy as np

    x = np.asarray(a, dtype=np.float64) - np.mean(a, axis=0)
    y = np.asarray(b, dtype=np.float64) - np.mean(b, axis=0)
    u, _s, vt = np.linalg.svd(x.T @ y)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((x @ rot - y) ** 2, axis=-1))))


def compare_predictions(ref: Sequence[Any], other: Sequence[Any]) -> dict[str, float]:
    """Differences between two lists of :class:`model.base.Prediction` of the same sequences.

    Coordinates are compared raw (both come from the same weights, so the same frame) over the
    atoms that exist, and as CA RMSD after Kabsch superposition. pLDDT is on the 0-100 scale.
    """
    import numpy as np

    coord, plddt, pae, ptm, rmsd = [], [], [], [], []
    for a, b in zip(ref, other, strict=True):
        if a.sequence != b.sequence:
            raise ValueError("predictions are of different sequences")
        m = a.atom_mask.astype(bool)
        coord.append(np.abs(a.atom_positions[m] - b.atom_positions[m]).ravel())
        plddt.append(np.abs(a.plddt - b.plddt))
        pae.append(np.abs(a.pae - b.pae).ravel())
        ptm.append(abs(a.ptm - b.ptm))
        rmsd.append(kabsch_rmsd(a.atom_positions[:, 1], b.atom_positions[:, 1]))
    c, p, e = np.concatenate(coord), np.concatenate(plddt), np.concatenate(pae)
    return {
        "coord_max_abs_A": float(c.max()), "coord_mean_abs_A": float(c.mean()),
        "ca_rmsd_kabsch_max_A": float(max(rmsd)),
        "plddt_max_abs": float(p.max()), "plddt_mean_abs": float(p.mean()),
        "pae_max_abs_A": float(e.max()), "pae_mean_abs_A": float(e.mean()),
        "ptm_max_abs": float(max(ptm)), "ptm_mean_abs": float(np.mean(ptm)),
        "n_sequences": float(len(ptm)),
    }
