"""Ray adapters: the fold and write stages as callable classes for ``Dataset.map_batches``.

Each Ray Data row is one work unit: ``unit_id`` plus where its pickled payload lies in the plan's
units Parquet (``source``, ``row_group``); the first stage reads it (:func:`unit_payloads`) and
passes the payload on. Its records unpickle into AcceptedRecords, header fields and CRC64/MD5
computed then (``pipeline.ingest.LiteRef``). The classes hold their
expensive state (the model) for the actor's lifetime; the stage logic lives in
:mod:`pipeline.fold` and :mod:`pipeline.write`, which run without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Fault injection for tests and operator drills: a fold worker that receives a unit containing one
# of these sequence SHA-256s (comma-separated) exits at once, as a segfault or kill -9 would.
CRASH_ENV = "FOLDATLAS_FAULT_CRASH_SHA256"


@dataclasses.dataclass
class FoldedUnit:
    """What the fold stage hands the write stage for one unit (pickled into the ``result`` column).

    ``unit``: the WorkUnit, less the sequences handed back after running out of memory;
    ``outcomes``: one Prediction or PredictionFailure per sequence of ``unit``; ``info``: the
    backend's ModelInfo; ``batch_sizes``: sequence -> size of the model batch that folded it; ``msa``: the
    unit's MSAUnitResult (None without an MSA stage); ``route``: the pool's fold_route;
    ``deferred``: SHA-256 -> reason of the sequences handed back to a later pass."""

    unit: Any
    outcomes: list[Any]
    info: Any
    batch_sizes: dict[str, int]
    msa: Any
    route: str | None
    deferred: dict[str, str]


def _open_units_file(source: str) -> Any:
    import pyarrow.parquet as pq

    if source.startswith("s3://"):
        from storage.store import arrow_s3_filesystem

        return pq.ParquetFile(arrow_s3_filesystem().open_input_file(source.removeprefix("s3://")))
    return pq.ParquetFile(source)


def unit_payloads(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The pickled WorkUnit of each row: ``payload`` when a stage before passed it on, else read
    from its row group of the units Parquet (``pipeline.runner.unit_refs``)."""
    if "payload" in batch:
        return batch["payload"]
    payloads = []
    for uid, source, rg in zip(batch["unit_id"], batch["source"], batch["row_group"], strict=True):
        table = _open_units_file(str(source)).read_row_group(int(rg), columns=["unit_id", "payload"])
        payloads.append(table.column(1)[table.column(0).to_pylist().index(uid)].as_py())
    return np.array(payloads, dtype=object)


def _maybe_crash(unit: Any) -> None:
    poison = {s for s in os.environ.get(CRASH_ENV, "").split(",") if s}
    if poison and poison & {r.sha256 for r in unit.records}:
        log.error("fault injection: crashing this worker on unit %s (%s)", unit.unit_id, CRASH_ENV)
        os._exit(139)


class MSAActor:
    """Searches a unit's uncached sequences in one batched call; passes the unit on with its MSAs."""

    def __init__(self, spec: Any, tracker: Any = None) -> None:
        self.spec = spec
        self.tracker = tracker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.msa_stage import search_units
        from pipeline.progress import report_stage

        t0 = time.perf_counter()
        payloads = unit_payloads(batch)
        units = [pickle.loads(payload) for payload in payloads]
        jobs = []
        for unit in units:
            shas = {r.sequence: r.sha256 for r in unit.records}
            jobs.append(({shas[s]: s for s in unit.sequences}, dict(unit.msa_cached)))
        found = search_units(jobs, self.spec)  # the batch's units in one search call (msa.units_per_search)
        results = [pickle.dumps(result, protocol=5) for result in found]
        residues = sum(u.residues for u in units) or 1
        for unit in units:
            report_stage(self.tracker, "msa", len(unit.sequences), unit.residues,
                         (time.perf_counter() - t0) * unit.residues / residues)
        return {"unit_id": batch["unit_id"], "payload": payloads, "msa": np.array(results, dtype=object)}


class FoldActor:
    """Loads the model once per actor; folds one work unit per call."""

    def __init__(self, model_settings: Any, fold_settings: Any, torch_threads: int | None = None,
                 atlas_root: str | None = None, tracker: Any = None, actors_per_node: int = 1,
                 route: str = "normal", defer_oom: bool = False) -> None:
        """``route``: this pool's ``fold_route`` label; ``defer_oom``: hand sequences that run out of
        memory back to the driver (pipeline.oom_route) instead of writing ``oom`` failure rows."""
        import torch

        from model.esmfold import load_backend
        from pipeline.fold import Folder
        from pipeline.oom_route import InjectedOOMBackend, oom_faults

        # default: this node's cores shared by the fold actors (on CPU the write stage is mostly idle)
        torch.set_num_threads(torch_threads or max(1, (os.cpu_count() or 1) // max(1, actors_per_node)))
        self.backend: Any = load_backend(model_settings)
        if faults := oom_faults():
            log.warning("fault injection: out of memory for %d sequence(s)", len(faults))
            self.backend = InjectedOOMBackend(self.backend, faults)
        self.folder = Folder(self.backend, fold_settings)
        self.atlas_root = atlas_root
        self.tracker = tracker
        self.route = route
        self.defer_oom = defer_oom

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.oom_route import take_oom
        from pipeline.progress import report_stage

        msa_column = batch.get("msa")
        results = []
        for i, payload in enumerate(unit_payloads(batch)):
            t0 = time.perf_counter()
            unit = pickle.loads(payload)
            _maybe_crash(unit)
            msa = pickle.loads(msa_column[i]) if msa_column is not None else None
            self.folder.batch_sizes.clear()
            outcomes = self._fold(unit, msa)
            report_stage(self.tracker, "fold", len(unit.sequences), unit.residues, time.perf_counter() - t0)
            deferred: dict[str, str] = {}
            if self.defer_oom:
                unit, outcomes, deferred = take_oom(unit, outcomes)
            results.append(pickle.dumps(FoldedUnit(unit, outcomes, self.backend.info, dict(self.folder.batch_sizes),
                                                   msa, self.route, deferred), protocol=5))
        return {"unit_id": batch["unit_id"], "result": np.array(results, dtype=object)}

    def _fold(self, unit: Any, msa: Any) -> list[Any]:
        from model.base import PredictionFailure

        sequences = list(unit.sequences)
        if msa is None or not self.backend.info.uses_msa:
            return self.folder.fold(sequences)
        # an MSA model cannot fold a sequence whose search failed: that is its outcome
        sha = {r.sequence: r.sha256 for r in unit.records}
        texts = dict(msa.a3m)
        missing = [msa.stats[s].key for s in sha.values() if s in msa.stats and s not in texts]
        if missing and self.atlas_root:
            from storage.query import load_a3m

            by_key = load_a3m(self.atlas_root, missing)
            texts.update({s: by_key[msa.stats[s].key] for s in sha.values() if msa.stats.get(s) and
                          msa.stats[s].key in by_key})
        todo = [s for s in sequences if sha[s] not in msa.failed]
        folded = dict(zip(todo, self.folder.fold(todo, [texts.get(sha[s]) for s in todo]), strict=True))
        return [folded.get(s) or PredictionFailure(s, "msa_error", msa.failed[sha[s]], 0) for s in sequences]


class WriteActor:
    """Confidence + mmCIF + Parquet into staging; returns the unit manifest as JSON."""

    def __init__(self, ctx: Any, tracker: Any = None) -> None:
        from storage.atlas import Atlas

        self.ctx = ctx
        self.atlas = Atlas(ctx.atlas)
        self.tracker = tracker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.progress import report_stage
        from pipeline.write import write_unit

        manifests = []
        for result in batch["result"]:
            t0 = time.perf_counter()
            folded: FoldedUnit = pickle.loads(result)
            unit, deferred = folded.unit, folded.deferred
            manifest = write_unit(unit, folded.outcomes, folded.info, folded.batch_sizes, self.ctx, folded.msa,
                                  folded.route)
            manifest.deferred = deferred
            # staged paths relative to the atlas (uploaded to its _staging/ when it is on S3)
            manifest.staged = self.atlas.upload_staged(self.ctx.run_id, manifest.staged)
            manifests.append(json.dumps(dataclasses.asdict(manifest)))
            # sequences handed back after running out of memory left the unit in the fold stage
            # (take_oom) but passed through here too: counted, so write keeps pace with fold
            report_stage(self.tracker, "write", len(unit.sequences) + len(deferred), unit.residues,
                         time.perf_counter() - t0)
        return {"unit_id": batch["unit_id"], "manifest": np.array(manifests, dtype=object)}
