"""The backend protocol every structure model implements, and the records it returns.

Shapes and units
----------------
``L`` is the sequence length in residues. Atom positions use the AlphaFold ``atom37`` layout
(``transformers.models.esm.openfold_utils.residue_constants.atom_types``: N, CA, C, CB, O, ...),
in Angstrom, model frame. pLDDT is on the 0-100 scale everywhere in FoldAtlas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a loaded model, written into every artifact it produces."""

    name: str  # e.g. "esmfold", "esmfold-tiny"
    version: str  # backend/library version string, e.g. "transformers 5.23.0"
    weights_sha256: str  # checksum of the weights that were loaded ("random-init:seed=0" style for tiny)
    trained: bool  # False for randomly initialised models: outputs are not real predictions
    uses_msa: bool = False
    precision: str = "fp32"
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Prediction:
    """One predicted structure for one sequence.

    Attributes:
        sequence: one-letter amino-acid sequence (upper case, length L).
        atom_positions: float32 (L, 37, 3), Angstrom, atom37 order.
        atom_mask: bool (L, 37), True where the atom exists for the residue type.
        plddt: float32 (L,), per-residue pLDDT 0-100 (ESMFold: the CA atom's pLDDT).
        pae: float32 (L, L), predicted aligned error in Angstrom; row i = aligned on residue i.
        max_pae: float, the largest value the PAE head can express (31.75 for AF2/ESMFold).
        ptm: float, predicted TM-score 0-1, computed over this sequence's residues only.
        seconds: wall-clock model time attributed to this sequence.
    """

    sequence: str
    atom_positions: np.ndarray
    atom_mask: np.ndarray
    plddt: np.ndarray
    pae: np.ndarray
    max_pae: float
    ptm: float
    seconds: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.sequence)
        checks = {
            "atom_positions": (self.atom_positions.shape, (n, 37, 3)),
            "atom_mask": (self.atom_mask.shape, (n, 37)),
            "plddt": (self.plddt.shape, (n,)),
            "pae": (self.pae.shape, (n, n)),
        }
        for name, (got, want) in checks.items():
            if tuple(got) != want:
                raise ValueError(f"Prediction.{name} has shape {tuple(got)}, expected {want}")


@dataclass(frozen=True)
class PredictionFailure:
    """A prediction attempt that did not produce a structure; becomes a ``failures`` row."""

    sequence: str
    reason: str  # a reason code from docs/output.md, e.g. "oom", "model_error"
    message: str
    batch_size: int  # size of the batch in which the final attempt ran (1 = alone)


@runtime_checkable
class ModelBackend(Protocol):
    """What the fold stage needs from a structure model."""

    info: ModelInfo

    def predict(self, sequences: list[str], msas: list[str | None] | None = None) -> list[Prediction]:
        """Predict a batch; raise on failure (the fold stage splits and retries).

        ``msas``, when given, holds one A3M text (first row = the query) or None per sequence.
        Backends whose ``info.uses_msa`` is False ignore it.
        """
        ...
