"""The ESMFold backend on the tiny random config: shapes, masking, per-sequence pTM, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.base import Prediction
from model.esmfold import ESMFoldBackend, ESMFoldSettings
from model.weights import directory_sha256, resolve_weights
from pipeline.errors import WeightsError

SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MAATTTTMMGMATTFVPKPQ", "GSHMSLFDFFKNKGSAATATDRLKLLLSQKP"]


def test_info_marks_untrained(tiny_backend):
    info = tiny_backend.info
    assert info.name == "esmfold-tiny" and info.trained is False
    assert info.weights_sha256.startswith("random-init:seed=")
    assert info.precision == "fp32"


def test_shapes_and_units(tiny_backend):
    preds = tiny_backend.predict(SEQS)
    assert [p.sequence for p in preds] == SEQS
    for p in preds:
        n = len(p.sequence)
        assert p.atom_positions.shape == (n, 37, 3) and p.pae.shape == (n, n)
        assert p.plddt.min() >= 0 and p.plddt.max() <= 100
        assert 0 < p.ptm < 1
        assert p.max_pae == pytest.approx(31.75)  # 64 bins up to 31 A, as AFDB reports
        # backbone atoms N, CA, C, O exist for every residue; CB exists except for glycine
        assert p.atom_mask[:, [0, 1, 2, 4]].all()
        assert (p.atom_mask[:, 3] == np.array([c != "G" for c in p.sequence])).all()


def test_padding_does_not_change_results(tiny_backend):
    """A sequence predicted in a padded batch equals the same sequence predicted alone."""
    batched = tiny_backend.predict(SEQS)
    for seq, b in zip(SEQS, batched, strict=True):
        alone = tiny_backend.predict([seq])[0]
        np.testing.assert_allclose(b.atom_positions, alone.atom_positions, atol=1e-3)
        np.testing.assert_allclose(b.plddt, alone.plddt, atol=1e-3)
        np.testing.assert_allclose(b.pae, alone.pae, atol=1e-3)
        assert b.ptm == pytest.approx(alone.ptm, abs=1e-5)


def test_ptm_is_per_sequence(tiny_backend):
    """transformers computes one pTM over the padded batch; ours differs per sequence."""
    preds = tiny_backend.predict(SEQS)
    assert len({round(p.ptm, 6) for p in preds}) == len(SEQS)


def test_backbone_geometry_is_ideal(tiny_backend):
    """Even random weights build residues from ideal frames: N-CA 1.458 A, CA-C 1.525 A (Engh & Huber)."""
    p = tiny_backend.predict([SEQS[0]])[0]
    n_ca = np.linalg.norm(p.atom_positions[:, 0] - p.atom_positions[:, 1], axis=-1)
    ca_c = np.linalg.norm(p.atom_positions[:, 1] - p.atom_positions[:, 2], axis=-1)
    np.testing.assert_allclose(n_ca, 1.458, atol=0.01)
    np.testing.assert_allclose(ca_c, 1.525, atol=0.01)


def test_deterministic_across_loads():
    a = ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny")).predict([SEQS[1]])[0]
    b = ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny")).predict([SEQS[1]])[0]
    np.testing.assert_array_equal(a.atom_positions, b.atom_positions)


def test_unknown_residue_is_accepted(tiny_backend):
    p = tiny_backend.predict(["MKTXAYIAKQRQISFVK"])[0]
    assert isinstance(p, Prediction) and np.isfinite(p.atom_positions[p.atom_mask]).all()


def test_esmfold_without_weights_explains_how(tmp_path):
    with pytest.raises(WeightsError, match="huggingface-cli download facebook/esmfold_v1"):
        ESMFoldBackend(ESMFoldSettings(name="esmfold"))
    with pytest.raises(WeightsError, match="does not exist"):
        ESMFoldBackend(ESMFoldSettings(name="esmfold", weights=str(tmp_path / "missing")))


def test_loads_saved_hf_directory_with_checksum(tmp_path, tiny_backend):
    """save_pretrained -> load through the real (esmfold) path; checksum verified and recorded."""
    tiny_backend.model.save_pretrained(tmp_path)
    digest = directory_sha256(tmp_path)
    backend = ESMFoldBackend(ESMFoldSettings(name="esmfold", weights=str(tmp_path), weights_sha256=digest))
    assert backend.info.weights_sha256 == digest and backend.info.trained is True
    np.testing.assert_allclose(backend.predict([SEQS[1]])[0].atom_positions,
                               tiny_backend.predict([SEQS[1]])[0].atom_positions, atol=1e-4)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_weights(str(tmp_path), "0" * 64)


def test_cpu_rejects_half_precision():
    with pytest.raises(WeightsError, match="not supported on CPU"):
        ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny", precision="fp16", device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(tiny_backend):
    gpu = ESMFoldBackend(ESMFoldSettings(name="esmfold-tiny", device="cuda", precision="fp32"))
    np.testing.assert_allclose(gpu.predict([SEQS[0]])[0].atom_positions,
                               tiny_backend.predict([SEQS[0]])[0].atom_positions, atol=1e-2)
