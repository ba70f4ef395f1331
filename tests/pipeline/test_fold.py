"""The fold stage: token-budget batching and the failure ladder (split -> alone -> chunked -> failure row)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from model.base import Prediction, PredictionFailure
from pipeline.fold import Folder, FoldSettings, cut_batches, is_oom


@given(st.lists(st.integers(1, 500), min_size=0, max_size=60), st.integers(1, 2000), st.integers(1, 16))
@settings(max_examples=200, deadline=None)
def test_cut_batches_partitions_within_budget(lengths, budget, max_bs):
    lengths = sorted(lengths)
    s = FoldSettings(max_tokens_per_batch=budget, max_batch_size=max_bs)
    batches = cut_batches(lengths, s)
    assert [i for b in batches for i in b] == list(range(len(lengths)))  # every index once, in order
    for b in batches:
        assert 0 < len(b) <= max_bs
        # a batch exceeds the budget only when it is a single over-long sequence
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= budget


class FaultyBackend:
    """The real tiny model, with faults injected for chosen sequences (as a GPU OOM would raise)."""

    def __init__(self, real, poison: dict[str, str], fail_unchunked: set[str] = frozenset()):
        self.real, self.poison, self.fail_unchunked = real, poison, fail_unchunked
        self.info, self.calls, self.chunk = real.info, [], None

    def set_chunk_size(self, n):
        self.chunk = n

    def predict(self, seqs, msas=None):
        self.calls.append(len(seqs))
        for s in seqs:
            kind = self.poison.get(s)
            if kind == "oom" and not (s in self.fail_unchunked and self.chunk):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if kind == "error":
                raise ValueError("index out of range in self")
        return self.real.predict(seqs)


SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MAATTTTMMGMATTFVPKPQAPP", "GSHMSLFDFFKNKGSAATATD", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]


def test_all_succeed_in_one_batch(tiny_backend):
    backend = FaultyBackend(tiny_backend, {})
    out = Folder(backend, FoldSettings(max_tokens_per_batch=10_000)).fold(SEQS)
    assert [o.sequence for o in out] == SEQS and all(isinstance(o, Prediction) for o in out)
    assert backend.calls == [4]


def test_error_splits_then_records_one_failure(tiny_backend):
    backend = FaultyBackend(tiny_backend, {SEQS[2]: "error"})
    folder = Folder(backend, FoldSettings(max_tokens_per_batch=10_000))
    out = folder.fold(SEQS)
    assert [o.sequence for o in out] == SEQS
    failed = [o for o in out if isinstance(o, PredictionFailure)]
    assert len(failed) == 1 and failed[0].sequence == SEQS[2]
    assert failed[0].reason == "model_error" and "index out of range" in failed[0].message
    assert all(isinstance(o, Prediction) for o in out if o.sequence != SEQS[2])
    assert backend.calls[0] == 4 and 1 in backend.calls  # split down to the single sequence


def test_oom_retries_alone_with_chunking(tiny_backend):
    backend = FaultyBackend(tiny_backend, {SEQS[0]: "oom"}, fail_unchunked={SEQS[0]})
    folder = Folder(backend, FoldSettings(max_tokens_per_batch=10_000, chunk_size_on_oom=32))
    out = folder.fold(SEQS)
    assert all(isinstance(o, Prediction) for o in out)  # chunked retry rescued it
    assert folder.batch_sizes[SEQS[0]] == 1
    assert backend.chunk is None  # chunk size restored afterwards


def test_oom_that_persists_is_a_failure_row(tiny_backend):
    backend = FaultyBackend(tiny_backend, {SEQS[1]: "oom"})
    out = Folder(backend, FoldSettings(max_tokens_per_batch=10_000)).fold(SEQS)
    f = out[1]
    assert isinstance(f, PredictionFailure) and f.reason == "oom" and f.batch_size == 1
    assert sum(isinstance(o, Prediction) for o in out) == 3


def test_is_oom():
    assert is_oom(MemoryError()) and is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_oom(ValueError("shape mismatch"))


def test_fast_path_backend_through_the_folder(tiny_backend):
    """The ESMFold fast path plans its own length buckets; the Folder keeps order and one outcome each."""
    import numpy as np

    from model.esmfold import ESMFoldBackend, ESMFoldSettings
    from model.fastpath import FastPathSettings

    fast = ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny", fast=FastPathSettings()))
    seqs = [*SEQS, "M" * 40, "GS" * 30]
    out = Folder(fast, FoldSettings()).fold(seqs)
    ref = Folder(tiny_backend, FoldSettings()).fold(seqs)
    assert [o.sequence for o in out] == seqs
    for a, b in zip(out, ref, strict=True):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        np.testing.assert_allclose(a.atom_positions, b.atom_positions, atol=1e-3)
        assert abs(a.ptm - b.ptm) < 1e-4
