"""Ray adapters: the fold and write stages as callable classes for ``Dataset.map_batches``.

Each Ray Data row is one work unit: ``unit_id`` plus a pickled payload. The classes hold their
expensive state (the model) for the actor's lifetime; the stage logic lives in
:mod:`pipeline.fold` and :mod:`pipeline.write`, which run without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class FoldActor:
    """Loads the model once per actor; folds one work unit per call."""

    def __init__(self, model_settings: Any, fold_settings: Any, torch_threads: int | None = None) -> None:
        import torch

        from model.esmfold import load_backend
        from pipeline.fold import Folder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.backend = load_backend(model_settings)
        self.folder = Folder(self.backend, fold_settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for payload in batch["payload"]:
            unit = pickle.loads(payload)
            self.folder.batch_sizes.clear()
            outcomes = self.folder.fold(list(unit.sequences))
            results.append(pickle.dumps((unit, outcomes, self.backend.info, dict(self.folder.batch_sizes)),
                                        protocol=5))
        return {"unit_id": batch["unit_id"], "result": np.array(results, dtype=object)}


class WriteActor:
    """Confidence + mmCIF + Parquet into staging; returns the unit manifest as JSON."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.write import write_unit

        manifests = []
        for result in batch["result"]:
            unit, outcomes, info, batch_sizes = pickle.loads(result)
            manifest = write_unit(unit, outcomes, info, batch_sizes, self.ctx)
            manifests.append(json.dumps(dataclasses.asdict(manifest)))
        return {"unit_id": batch["unit_id"], "manifest": np.array(manifests, dtype=object)}
