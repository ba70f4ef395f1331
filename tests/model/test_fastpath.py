"""The ESMFold fast path against the fp32 reference path on the same weights, and the batch planner.

Numerical checks run on the CPU: the tiny config, and a "full-width, shallow" random config (the
published ESM-2 3B / esmfold_v1 widths -- hidden 2560, 40 heads, FFN 10240, c_s 1024, c_z 128,
structure module 384 -- with 1 language-model layer, 1 trunk block and 2 structure-module blocks,
about 100 M parameters, so that it runs in seconds; the full 3.5 B-parameter depth does not fit a
CPU test). float16 kernels exist on the CPU in torch >= 2.x but the backend refuses fp16 there for
production runs, so the fp16 language model is tested by casting the loaded model's ``esm``.

Random weights give a nearly flat pLDDT (about 50 everywhere), so pLDDT differences here are a
weak check; coordinates, PAE and pTM carry the signal. The bounds are a few times the differences
measured when they were written (printed with ``pytest -s``; docs/benchmarks.md lists them).
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.base import Prediction
from model.esmfold import ESMFoldBackend, ESMFoldSettings
from model.fastpath import (
    BatchBudget,
    FastPathSettings,
    MemoryModel,
    batched_ptm,
    budget_from_free_memory,
    choose_chunk_size,
    compare_predictions,
    forward_flops,
    full_config,
    padding_ratio,
    plan_batches,
    resolve_precision,
    sample_lengths_from_fasta,
    trunk_passes,
)
from pipeline.errors import WeightsError
from pipeline.fold import Folder

SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MAATTTTMMGMATTFVPKPQ", "GSHMSLFDFFKNKGSAATATDRLKLLLSQKP"]
LONG = "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFFKSAM"  # GFP, 90


def tiny(precision: str = "auto", **fast) -> ESMFoldBackend:
    return ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny", precision=precision, fast=FastPathSettings(**fast)))


def report(label: str, diff: dict[str, float]) -> None:
    keys = ("coord_max_abs_A", "coord_mean_abs_A", "ca_rmsd_kabsch_max_A", "plddt_max_abs", "pae_max_abs_A",
            "ptm_max_abs")
    print(f"\n{label}: " + ", ".join(f"{k}={diff[k]:.3g}" for k in keys))


def within(diff: dict[str, float], coord_max: float, coord_mean: float, plddt: float, pae: float, ptm: float) -> None:
    assert diff["coord_max_abs_A"] <= coord_max, diff
    assert diff["coord_mean_abs_A"] <= coord_mean, diff
    assert diff["ca_rmsd_kabsch_max_A"] <= coord_max, diff
    assert diff["plddt_max_abs"] <= plddt, diff
    assert diff["pae_max_abs_A"] <= pae, diff
    assert diff["ptm_max_abs"] <= ptm, diff


@pytest.fixture(scope="module")
def ref_preds(tiny_backend) -> list[Prediction]:
    return tiny_backend.predict(SEQS)


# ---- precision modes ---------------------------------------------------------------------------


def test_precision_modes_resolve():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16-lm"
    assert resolve_precision("fp16", "cuda") == "fp16-lm"  # the existing config values keep their meaning
    assert resolve_precision("bf16", "cpu") == "bf16-lm"
    assert resolve_precision("bf16-full", "cuda") == "bf16-full"
    with pytest.raises(ValueError, match="not supported on CPU"):
        resolve_precision("fp16-lm", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", "cuda")
    with pytest.raises(WeightsError, match="not supported on CPU"):
        tiny("fp16-lm")


def test_fast_fp32_equals_reference(ref_preds):
    """SDPA in the language model, batched pTM / PAE / atom37 on the device: same numbers."""
    backend = tiny()
    assert backend.info.precision == "fp32" and "lm_sdpa" in backend.info.extra["fast_path"]
    assert backend.model.config._attn_implementation == "sdpa"
    diff = compare_predictions(ref_preds, backend.predict(SEQS))
    report("tiny fast fp32 vs reference", diff)
    within(diff, coord_max=1e-4, coord_mean=1e-5, plddt=1e-3, pae=1e-4, ptm=1e-6)
    for a, b in zip(ref_preds, backend.predict(SEQS), strict=True):
        assert (a.atom_mask == b.atom_mask).all() and a.max_pae == b.max_pae


def test_trunk_sdpa_equals_eager_chunked_and_not(tiny_backend):
    """Triangular attention through SDPA equals the eager softmax, with and without chunking."""
    ref = tiny_backend.predict([LONG])
    for chunk in (32, 512):  # 512 > L: one chunk, the unchunked computation
        backend = tiny(trunk_sdpa=True)
        backend.set_chunk_size(chunk)
        tiny_backend.set_chunk_size(chunk)
        try:
            diff = compare_predictions(tiny_backend.predict([LONG]), backend.predict([LONG]))
        finally:
            tiny_backend.set_chunk_size(None)
        report(f"tiny trunk SDPA (chunk {chunk}) vs eager", diff)
        within(diff, coord_max=1e-3, coord_mean=1e-4, plddt=1e-3, pae=1e-3, ptm=1e-5)
    assert compare_predictions(ref, tiny_backend.predict([LONG]))["coord_max_abs_A"] == 0.0


@pytest.mark.parametrize(("mode", "bounds"), [
    ("bf16-lm", {"coord_max": 0.5, "coord_mean": 0.1, "plddt": 0.05, "pae": 0.05, "ptm": 1e-3}),
    ("bf16-full", {"coord_max": 1.0, "coord_mean": 0.25, "plddt": 0.2, "pae": 0.25, "ptm": 2e-3}),
])
def test_tiny_half_precision_vs_fp32(ref_preds, mode, bounds):
    backend = tiny(mode)
    assert backend.info.precision == mode
    if mode == "bf16-full":
        assert next(backend.model.trunk.parameters()).dtype == torch.float32  # autocast, weights stay fp32
    assert next(backend.model.esm.parameters()).dtype == torch.bfloat16
    diff = compare_predictions(ref_preds, backend.predict(SEQS))
    report(f"tiny {mode} vs fp32", diff)
    within(diff, **bounds)


def test_tiny_fp16_language_model_vs_fp32(ref_preds):
    backend = tiny()
    backend.model.esm.half()  # the reference implementation's precision, cast by hand on the CPU
    diff = compare_predictions(ref_preds, backend.predict(SEQS))
    report("tiny fp16-lm vs fp32", diff)
    within(diff, coord_max=0.2, coord_mean=0.05, plddt=0.05, pae=0.05, ptm=1e-3)


# ---- full-width, shallow random config -------------------------------------------------------

FULL_SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQKTAYIAK", "MAATTTTMMGMATTFVPKPQAPPG"]


@pytest.fixture(scope="module")
def full_shallow():
    from transformers import EsmForProteinFolding

    torch.manual_seed(0)
    model = EsmForProteinFolding(full_config(lm_layers=1, trunk_blocks=1, structure_blocks=2)).eval()
    ref = ESMFoldBackend.from_model(model, ESMFoldSettings(name="esmfold-full-shallow", num_recycles=0),
                                    "random-init:seed=0:config=full-shallow")
    return model, ref.predict(FULL_SEQS)


def _full_fast(model, precision: str) -> ESMFoldBackend:
    return ESMFoldBackend.from_model(copy.deepcopy(model), ESMFoldSettings(
        name="esmfold-full-shallow", num_recycles=0, precision=precision, fast=FastPathSettings()), "random")


def test_full_shallow_config_has_published_widths(full_shallow):
    model, _ = full_shallow
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (2560, 40, 10240)
    t = cfg.esmfold_config.trunk
    assert (t.sequence_state_dim, t.pairwise_state_dim, t.sequence_head_width, t.pairwise_head_width) == (
        1024, 128, 32, 32)
    assert t.structure_module.sequence_dim == 384 and t.structure_module.num_heads_ipa == 12
    published = full_config()
    assert published.num_hidden_layers == 36 and published.esmfold_config.trunk.num_blocks == 48
    assert published.esmfold_config.trunk.chunk_size is None and published.esmfold_config.trunk.max_recycles == 4


@pytest.mark.parametrize(("mode", "bounds"), [
    ("fp32", {"coord_max": 1e-3, "coord_mean": 1e-4, "plddt": 1e-3, "pae": 1e-3, "ptm": 1e-5}),
    ("fp16-lm", {"coord_max": 0.3, "coord_mean": 0.05, "plddt": 0.01, "pae": 0.02, "ptm": 1e-4}),
    ("bf16-lm", {"coord_max": 1.5, "coord_mean": 0.25, "plddt": 0.05, "pae": 0.1, "ptm": 1e-3}),
])
def test_full_shallow_fast_vs_fp32(full_shallow, mode, bounds):
    model, ref = full_shallow
    backend = _full_fast(model, "fp32" if mode == "fp16-lm" else mode)
    if mode == "fp16-lm":
        backend.model.esm.half()
    diff = compare_predictions(ref, backend.predict(FULL_SEQS))
    report(f"full-width shallow, fast {mode} vs fp32 reference", diff)
    within(diff, **bounds)


# ---- device-side confidence --------------------------------------------------------------------


def test_batched_ptm_matches_per_sequence_compute_tm():
    from transformers.models.esm.openfold_utils.loss import compute_tm

    torch.manual_seed(1)
    lengths = [7, 25, 40]
    logits = torch.randn(3, 40, 40, 64) * 3
    mask = torch.zeros(3, 40)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    got = batched_ptm(logits, mask)
    for i, n in enumerate(lengths):
        want = compute_tm(logits[i, :n, :n], max_bin=31, no_bins=64)
        assert got[i].item() == pytest.approx(want.item(), abs=1e-6)


# ---- backend wiring ----------------------------------------------------------------------------


def test_predict_batches_equals_predict_and_plan_is_a_partition():
    backend = tiny()
    lengths = [len(s) for s in SEQS]
    plan = backend.plan_batches(lengths)
    assert plan is not None and sorted(i for b in plan for i in b) == [0, 1, 2]
    batches = [[SEQS[i] for i in b] for b in plan]
    streamed = [p for preds in backend.predict_batches(batches) for p in preds]
    direct = [p for b in batches for p in backend.predict(b)]
    diff = compare_predictions(direct, streamed)
    assert diff["coord_max_abs_A"] < 1e-5 and all(p.seconds > 0 for p in streamed)


def test_reference_backend_keeps_its_batching(tiny_backend):
    assert tiny_backend.plan_batches([10, 20]) is None  # the fold stage keeps cut_batches


def test_forced_chunk_size_holds_until_reset():
    """The fold ladder's last resort sets a chunk size; the fast path must not override it."""
    backend = tiny()
    backend.set_chunk_size(16)
    backend.predict([LONG])
    assert backend.model.trunk.chunk_size == 16
    backend.set_chunk_size(None)
    backend.predict([LONG])
    assert backend.model.trunk.chunk_size == backend.default_chunk_size == 64  # CPU: the configured chunk


def test_folder_runs_the_fast_backend():
    outcomes = Folder(tiny()).fold(SEQS)
    assert [o.sequence for o in outcomes] == SEQS and all(isinstance(o, Prediction) for o in outcomes)


# ---- batch planning ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(1, 1500), max_size=150),
       max_tokens=st.integers(1, 40_000),
       max_pairs=st.one_of(st.none(), st.integers(1, 20_000_000)),
       max_batch_size=st.integers(1, 64),
       ratio=st.floats(1.0, 2.0))
def test_plan_batches_properties(lengths, max_tokens, max_pairs, max_batch_size, ratio):
    budget = BatchBudget(max_tokens=max_tokens, max_pair_tokens=max_pairs, max_batch_size=max_batch_size,
                         max_pad_ratio=ratio)
    batches = plan_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every index exactly once
    for b in batches:
        assert b
        ls = [lengths[i] for i in b]
        if len(b) > 1:  # a lone sequence always runs, whatever its size
            assert max(ls) <= ratio * min(ls) + 1e-9
            assert len(b) * max(ls) <= max_tokens and len(b) <= max_batch_size
            assert max_pairs is None or len(b) * max(ls) ** 2 <= max_pairs
    assert padding_ratio(lengths, batches) <= ratio + 1e-9
    # greedy and maximal: the next batch's shortest sequence could not have joined the previous one
    ascending = batches[::-1]
    for prev, nxt in itertools.pairwise(ascending):
        first = min(nxt, key=lambda i: (lengths[i], i))
        n, shortest = lengths[first], min(lengths[i] for i in prev)
        assert n > shortest * ratio or not budget.fits(len(prev) + 1, n)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 1280), min_size=1, max_size=120),
       gib=st.floats(1.0, 80.0))
def test_plan_batches_respects_the_memory_budget(lengths, gib):
    memory = MemoryModel.for_config(full_config())
    budget = BatchBudget(max_tokens=1 << 31, memory=memory, max_bytes=gib * 2**30, chunk_size=128)
    for b in plan_batches(lengths, budget):
        if len(b) > 1:
            assert memory.batch_bytes(len(b), max(lengths[i] for i in b), 128) <= gib * 2**30


def test_budget_on_cpu_is_the_configured_one():
    fallback = BatchBudget(max_tokens=512)
    memory = MemoryModel.for_config(full_config())
    assert budget_from_free_memory(torch.device("cpu"), memory, fallback) is fallback
    assert tiny().batch_budget().max_tokens == FastPathSettings().cpu_tokens


def test_memory_model_of_the_full_config_needs_chunking_only_for_long_sequences():
    memory = MemoryModel.for_config(full_config(), lm_bytes=2, lm_sdpa=True, device_type="cuda")
    h100 = 70 * 2**30  # what an 80 GB H100 leaves after the fp32 model (about 14 GB) and a margin
    assert choose_chunk_size(memory, 1, 300, h100) is None
    assert choose_chunk_size(memory, 1, 1280, h100) is not None
    assert memory.batch_bytes(1, 1280, None) > h100  # triangular attention's L^3 logits
    # the pair term dominates the trunk: bytes grow about 4x when L doubles at fixed chunk
    growth = memory.batch_bytes(1, 800, 128) / memory.batch_bytes(1, 400, 128)
    assert 3.5 < growth < 4.1


# ---- FLOP model and length sampling -----------------------------------------------------------


def test_flop_model_language_model_is_two_flops_per_parameter_and_token():
    cfg = full_config()
    lm_params = cfg.num_hidden_layers * (4 * cfg.hidden_size**2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    lm_only = forward_flops(cfg, 100, passes=0)
    assert lm_only == pytest.approx(2 * lm_params * 102, rel=0.05)
    assert trunk_passes(None, cfg) == 4 and trunk_passes(3, cfg) == 4  # model.infer's default = 3 recycles
    per_pass = forward_flops(cfg, 300, 1) - forward_flops(cfg, 300, 0)
    assert 5e12 < per_pass < 1e13  # 48 blocks at L = 300: pair linears ~4.4e12, cubic terms ~2e12
    assert math.isclose(forward_flops(cfg, 300, 4), forward_flops(cfg, 300, 0) + 4 * per_pass, rel_tol=1e-9)


def test_sampled_lengths_are_deterministic(data_dir):
    path = str(data_dir / "uniprot" / "sample.fasta")
    a = sample_lengths_from_fasta(path, 10, max_len=200, seed=3)
    assert a == sample_lengths_from_fasta(path, 10, max_len=200, seed=3)
    assert len(a) == 10 and all(0 < len(s) <= 200 for s in a)
    assert np.unique(a).size >= 5


# ---- on a GPU (skipped without one) -------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("mode", "fast", "bounds"), [
    ("fp32", {"tf32": False}, {"coord_max": 0.05, "coord_mean": 0.01, "plddt": 0.01, "pae": 0.01, "ptm": 1e-4}),
    ("fp32", {}, {"coord_max": 0.5, "coord_mean": 0.1, "plddt": 0.05, "pae": 0.05, "ptm": 1e-3}),  # TF32 trunk
    ("fp16-lm", {}, {"coord_max": 0.5, "coord_mean": 0.1, "plddt": 0.05, "pae": 0.05, "ptm": 1e-3}),
    ("bf16-full", {}, {"coord_max": 2.0, "coord_mean": 0.5, "plddt": 0.5, "pae": 0.5, "ptm": 5e-3}),
])
def test_gpu_fast_path_vs_cpu_fp32_reference(full_shallow, mode, fast, bounds):
    model, ref = full_shallow
    backend = ESMFoldBackend.from_model(copy.deepcopy(model), ESMFoldSettings(
        name="esmfold-full-shallow", device="cuda", num_recycles=0, precision=mode,
        fast=FastPathSettings(**fast)), "random")
    assert backend.plan_batches([len(s) for s in FULL_SEQS]) is not None
    preds = [p for batch in backend.predict_batches([FULL_SEQS[:1], FULL_SEQS[1:]]) for p in batch]
    diff = compare_predictions(ref, preds)
    report(f"GPU full-width shallow, fast {mode} {fast} vs CPU fp32 reference", diff)
    within(diff, **bounds)


@pytest.mark.gpu
@cuda
def test_gpu_budget_comes_from_free_memory():
    backend = ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny", device="cuda", fast=FastPathSettings()))
    budget = backend.batch_budget()
    assert budget.memory is not None and budget.max_bytes is not None and budget.max_bytes > 0
    assert budget.notes["free_bytes"] > budget.max_bytes
    plan = backend.plan_batches([50] * 10 + [300] * 3)
    assert plan is not None and sorted(i for b in plan for i in b) == list(range(13))
