"""Structure records in the shards: a compact record in, ModelCIF and AFDB PAE JSON out.

The write stage and ``foldatlas import`` store one compact record (:mod:`storage.compact`) per
published structure, holding the coordinates, pLDDT, PAE and, in its ``meta`` object, everything
else the ModelCIF writer needs: the model (:class:`model.base.ModelInfo`), the pipeline provenance,
pTM and the representative entry (:class:`storage.mmcif.ModelCIFEntry`). ``foldatlas get`` decodes
the record and renders the files on demand with the same writers
(:func:`storage.mmcif.render_modelcif`, :func:`storage.afdb_json.write_pae_json`), so the text it
returns is the one the writers would have produced from the prediction itself.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.base import ModelInfo, Prediction
from storage.afdb_json import write_pae_json
from storage.compact import CompactStructure, decode_pae, decode_structure, encode_structure, quantize
from storage.mmcif import ModelCIFEntry, render_modelcif

logger = logging.getLogger(__name__)

__all__ = ["StoredStructure", "encode_prediction", "read_record"]


def _entry_meta(entry: ModelCIFEntry) -> dict[str, Any]:
    return dataclasses.asdict(entry)


def encode_prediction(prediction: Prediction, entry: ModelCIFEntry, model: ModelInfo,
                      provenance: Mapping[str, str], *, with_ptm: bool = True, with_pae: bool = True) -> bytes:
    """The compact record of a prediction (coordinates at 0.001 A, pLDDT at 0.01, PAE integers).

    ``with_ptm``/``with_pae`` False: the source has no pTM / PAE (imported PDB and AFDB files);
    the rendered mmCIF then has no pTM metric and the entry has no PAE JSON.
    """
    meta = {
        "max_pae": float(prediction.max_pae) if with_pae else None,
        "ptm": float(prediction.ptm) if with_ptm else None,
        "model": dataclasses.asdict(model),
        "provenance": dict(provenance),
        "entry": _entry_meta(entry),
    }
    compact = quantize(prediction.sequence, prediction.atom_positions, prediction.atom_mask, prediction.plddt,
                       prediction.pae if with_pae else None, meta)
    return encode_structure(compact)


@dataclass(frozen=True, eq=False)
class StoredStructure:
    """A decoded record, ready to render.

    ``compact`` holds everything but (when ``record`` is given) the PAE, which is decoded from
    ``record`` only when asked for (:attr:`pae`): rendering the mmCIF does not pay for it.
    """

    compact: CompactStructure
    record: bytes | None = None

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.compact.meta

    @property
    def sequence(self) -> str:
        return self.compact.sequence

    @property
    def has_pae(self) -> bool:
        return self.pae is not None if self.record is None else bool(self.record[4] & 4)

    @functools.cached_property
    def pae(self) -> np.ndarray | None:
        """int64 (L, L) PAE, or None (decoded on first use)."""
        if self.compact.pae is not None or self.record is None:
            return self.compact.pae
        return decode_pae(self.record)

    def model_info(self) -> ModelInfo:
        return ModelInfo(**self.meta["model"])

    def entry(self) -> ModelCIFEntry:
        """The representative entry the record was written for."""
        return ModelCIFEntry(**self.meta["entry"])

    def prediction(self, *, with_pae: bool = True) -> Prediction:
        """Float64 arrays whose 3- and 2-decimal text is exactly the stored integers.

        ``with_pae`` False: a zero PAE, without decoding the stored one (what the mmCIF needs).
        """
        c = self.compact
        n = len(c.sequence)
        positions = np.zeros((n, 37, 3), dtype=np.float64)
        positions[c.atom_mask] = c.coords / 1000.0
        stored = self.pae if with_pae else None
        pae = stored.astype(np.float64) if stored is not None else np.zeros((n, n), dtype=np.float64)
        ptm = self.meta.get("ptm")
        return Prediction(c.sequence, positions, c.atom_mask, c.plddt / 100.0, pae,
                          float(self.meta.get("max_pae") or 0.0), float("nan") if ptm is None else float(ptm))

    def render_mmcif(self, entry: ModelCIFEntry | None = None) -> str:
        """ModelCIF text, for ``entry`` (another accession with the same sequence) or the stored one."""
        return render_modelcif(self.prediction(with_pae=False), entry or self.entry(), self.model_info(),
                               self.meta.get("provenance") or {}, with_ptm=self.meta.get("ptm") is not None)

    def render_pae_json(self) -> bytes:
        """AFDB v4 PAE JSON bytes.

        Raises:
            ValueError: the record has no PAE (an imported PDB file).
        """
        if self.pae is None:
            raise ValueError("this structure has no PAE (imported from a file without one)")
        return write_pae_json(self.pae, float(self.meta["max_pae"]))


def read_record(data: bytes) -> StoredStructure:
    """Decode a compact record, its PAE lazily (see :func:`storage.compact.decode_structure` for errors)."""
    return StoredStructure(decode_structure(data, pae=False), bytes(data))
