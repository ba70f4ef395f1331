"""Out of memory takes the long-sequence path: normal pool -> chunked long pool -> fragments -> failure.

A sequence that still runs out of memory in the normal fold pool (after the fold stage's own ladder:
batch split down to the sequence alone, then trunk chunking, :mod:`pipeline.fold`) is not failed
there. Its fold actor leaves it out of the unit's shards and hands it back to the driver
(``UnitManifest.deferred``); after the pass the driver re-routes it:

1. to the chunked long pool (``[long_sequences] chunked_above`` configured), ``fold_route = oom_chunked``;
2. if it runs out of memory there too (or there is no long pool), into overlapping fragments F1..Fn
   with the ingest fragment policy's window and step (``[ingest] fragment_above`` configured; the
   fragments are made by :func:`pipeline.ingest.fragment_record`, exactly as ingest makes them),
   ``fold_route = oom_fragment``;
3. otherwise a failure row with reason ``oom`` and a message naming every pool it was tried in.

Exactly-once: a deferred sequence has no row in the atlas until a later pass publishes it, so a run
that dies between passes plans it again. Fragment entries carry ``fragment_of_sha256``; a rerun
replaces a record whose sequence an earlier run already split after running out of memory by its
fragments (:func:`resume_fragmented`), so it is never predicted whole again nor fragmented twice.

Bounded memory: the driver holds unit ids and counts, not records. The records of a handed-back
sequence are read back from the units file of the unit that handed it back (``pipeline.runner``),
each re-route pass writes its few units to a units file of its own and streams from it, and
:func:`resume_fragmented` is SQL over the run's ingest spill.

``FOLDATLAS_FAULT_OOM_SHA256`` injects the failure without a GPU (tests and operator drills).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from model.base import PredictionFailure
from pipeline.ingest import AcceptedRecord, IngestPolicy, fragment_record, sequence_hashes
from pipeline.plan import WorkUnit

log = logging.getLogger(__name__)

# Fault injection: comma-separated ``SHA256[:CHUNK]``. A model call whose batch holds that sequence
# raises torch.OutOfMemoryError unless the trunk chunk size in effect is at most CHUNK (no CHUNK:
# always). ``SHA:32`` with the tiny model: out of memory in the normal pool (chunk 64, also its
# last single-sequence attempt) but not in a long pool with ``chunk_size <= 32``.
OOM_ENV = "FOLDATLAS_FAULT_OOM_SHA256"

@dataclass(frozen=True)
class PoolRoute:
    """How one fold pass uses the two pools: the ``fold_route`` label each writes and whether it
    hands sequences that ran out of memory back to the driver instead of failing them."""

    normal: str = "normal"
    long: str = "chunked"
    defer_normal: bool = False
    defer_long: bool = False
    all_long: bool = False  # every unit to the chunked pool, whatever its length (the OOM re-route pass)


# --------------------------------------------------------------------------------------------
# Fold-actor side


def oom_faults() -> dict[str, int | None]:
    """sha256 -> largest trunk chunk size that avoids the injected OOM (None: none does)."""
    out: dict[str, int | None] = {}
    for item in os.environ.get(OOM_ENV, "").split(","):
        sha, _, limit = item.strip().partition(":")
        if sha:
            out[sha] = int(limit) if limit else None
    return out


class InjectedOOMBackend:
    """Wraps a backend; raises ``torch.OutOfMemoryError`` for batches holding a poisoned sequence."""

    def __init__(self, backend: Any, faults: dict[str, int | None]) -> None:
        self.backend = backend
        self.faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def predict(self, sequences: list[str], msas: list[str | None] | None = None) -> list[Any]:
        import torch

        chunk = getattr(self.backend, "chunk_size", None)
        for seq in sequences:
            sha = sequence_hashes(seq)[0]
            if sha in self.faults:
                limit = self.faults[sha]
                if limit is None or chunk is None or chunk > limit:
                    raise torch.OutOfMemoryError(
                        f"CUDA out of memory (injected by {OOM_ENV} for {sha[:12]}, trunk chunk size {chunk})")
        result: list[Any] = self.backend.predict(sequences, msas)
        return result


def take_oom(unit: WorkUnit, outcomes: list[Any]) -> tuple[WorkUnit, list[Any], dict[str, str]]:
    """(the unit without its out-of-memory sequences, their outcomes removed, sha256 -> message)."""
    oom = {o.sequence: o.message for o in outcomes if isinstance(o, PredictionFailure) and o.reason == "oom"}
    if not oom:
        return unit, outcomes, {}
    sha = {r.sequence: r.sha256 for r in unit.records}
    deferred = {sha[s]: message for s, message in oom.items()}
    kept = dataclasses.replace(
        unit, sequences=tuple(s for s in unit.sequences if s not in oom),
        records=tuple(r for r in unit.records if r.sequence not in oom),
        msa_cached=tuple(m for m in unit.msa_cached if m[0] not in deferred))
    return kept, [o for o in outcomes if o.sequence not in oom], deferred


# --------------------------------------------------------------------------------------------
# Driver side


@dataclass
class OOMSequence:
    """A sequence that ran out of memory, with every record of the run that holds it."""

    records: list[AcceptedRecord]
    pools: list[str]  # fold_route labels of the pools it ran out of memory in, in order
    message: str  # the last error

    @property
    def sequence(self) -> str:
        return self.records[0].sequence

    @property
    def route(self) -> str:
        return self.pools[-1]


@dataclass
class OOMLedger:
    """The re-routed sequences of a run and where each ended (summary ``oom_routes``)."""

    pending: dict[str, OOMSequence] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)  # chunked | fragments | failed -> sequences
    fragments: int = 0  # fragment records made

    def add(self, deferred: dict[str, tuple[str, str]], records: dict[str, list[AcceptedRecord]]) -> None:
        """Sequences handed back by a pass (sha256 -> (pool label, message)); ``records`` for new ones."""
        for sha, (pool, message) in deferred.items():
            if sha in self.pending:
                self.pending[sha].pools.append(pool)
                self.pending[sha].message = message
            else:
                self.pending[sha] = OOMSequence(list(records[sha]), [pool], message)

    def settle(self, shas: Sequence[str], route: str) -> None:
        for sha in shas:
            self.pending.pop(sha)
            self.routes[route] = self.routes.get(route, 0) + 1


def can_chunk(seq: OOMSequence, chunked_above: int | None) -> bool:
    return chunked_above is not None and not any(p in ("chunked", "oom_chunked") for p in seq.pools)


def why_not_fragments(seq: OOMSequence, policy: IngestPolicy) -> str | None:
    """None when the sequence can be split into fragments; otherwise the reason it cannot."""
    if policy.fragment_above is None:
        return "no fragment policy (set [ingest] fragment_above, fragment_window, fragment_step)"
    if any(r.whole_sha256 for r in seq.records):
        return "it is already a fragment"
    if len(seq.sequence) <= policy.fragment_window:
        return f"its length {len(seq.sequence)} is not above ingest.fragment_window {policy.fragment_window}"
    return None


def oom_fragments(rec: AcceptedRecord, policy: IngestPolicy) -> list[AcceptedRecord]:
    """``rec`` as fragments F1..Fn with the policy's window and step, whatever its ``fragment_above``;
    their rows say ``fold_route = oom_fragment`` whichever pass folds them."""
    frags = fragment_record(rec, policy.model_copy(update={"fragment_above": policy.fragment_window}))
    if frags == [rec]:  # not longer than a window: nothing to split
        return frags
    return [dataclasses.replace(f, oom_split=True) for f in frags]


_POOL_NAMES = {"normal": "the normal pool", "chunked": "the chunked long pool",
               "oom_chunked": "the chunked long pool", "oom_fragment": "the fragment pass"}


def failure_message(seq: OOMSequence, why_not: str) -> str:
    pools = " and then in ".join(_POOL_NAMES.get(p, p) for p in seq.pools)
    return (f"out of memory in {pools} (each: the batch split down to this sequence alone, then trunk "
            f"chunking); not split into fragments: {why_not}. Last error: {seq.message}")[-2000:]


def reroute_units(seqs: dict[str, OOMSequence], model: str, plan: Any, suffix: str,
                  msa_known: dict[str, Any] | None = None) -> list[WorkUnit]:
    """Work units of the re-routed sequences, cut as the plan cuts them (``plan``: PlanConfig); ids
    end in ``suffix`` so they never take the name of the first-pass unit whose sequences they are (a
    unit whose every sequence ran out of memory published an empty manifest under that name)."""
    from pipeline.plan import cut_units

    units = cut_units({s: q.records for s, q in seqs.items()}, model, plan, msa_known)
    return [dataclasses.replace(u, unit_id=f"{u.unit_id}-{suffix}") for u in units]


def resume_fragmented(spill: Any, atlas: Any, model: str, policy: IngestPolicy, memory_limit: str = "1GB",
                      batch_rows: int = 4096) -> int:
    """Replace, in the run's ingest spill (:class:`pipeline.spill.IngestSpill`), records that an
    earlier run split into fragments after running out of memory (entries with ``fold_route =
    oom_fragment`` and ``fragment_of_sha256`` = the record's sequence, same accession) by their
    fragments: the plan then skips the published ones and predicts the rest.

    DuckDB SQL over the spill and the atlas's entries (memory-limited, spilling to the spill's
    scratch): the matching records stream out in batches of ``batch_rows``, their fragments are
    written to ``accepted/oom-resumed.parquet`` and their keys to ``replaced.parquet``, which
    :meth:`~pipeline.spill.IngestSpill.accepted_sql` leaves out. Returns the records replaced."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.ingest import lite_from_record
    from pipeline.spill import (
        ACCEPTED_SCHEMA,
        REPLACED_SCHEMA,
        accepted_batch,
        duckdb_connect,
        records_from_table,
    )

    def q(p: Any) -> str:
        return str(p).replace("'", "''")

    root = spill.root
    con = duckdb_connect(root, memory_limit, con=atlas.duckdb())
    frag_path, keys_path = root / "oom-resumed.parquet", root / "replaced.parquet"
    replaced = 0
    writer = keys = None
    try:
        try:
            con.execute(
                f"CREATE TEMP TABLE oom_split AS SELECT DISTINCT accession, fragment_of_sha256 AS sha256 FROM "
                f"read_parquet('{q(atlas.glob('entries'))}', union_by_name=true) "
                "WHERE model = $1 AND fold_route = 'oom_fragment'", [model])
        except duckdb.BinderException:  # an atlas written before these columns existed
            return 0
        reader = con.sql(
            f"SELECT a.* FROM read_parquet('{q(spill.accepted_glob)}') a SEMI JOIN oom_split s "
            "ON a.accession = s.accession AND a.sha256 = s.sha256 ORDER BY a.file_no, a.record_index, a.fragment"
        ).to_arrow_reader(batch_rows)
        for batch in reader:
            spill_cols = [batch.column(c).to_pylist() for c in ("file_no", "chunk_offset", "chunk_length", "chunk_sub")]
            by_source: dict[str, list[tuple[Any, ...]]] = {}
            done: list[tuple[int, int, str]] = []
            for rec, (file_no, off, length, sub) in zip(records_from_table(batch), zip(*spill_cols, strict=True),
                                                        strict=True):
                frags = oom_fragments(rec, policy)
                if frags == [rec]:
                    continue
                log.info("%s: split into %d fragments by an earlier run (out of memory whole)", rec.accession,
                         len(frags))
                by_source.setdefault(rec.source, []).extend(
                    (*lite_from_record(f), file_no, f.whole_sha256, f.oom_split, off, length, sub) for f in frags)
                done.append((file_no, rec.record_index, rec.sha256))
            if not done:
                continue
            if writer is None:
                writer = pq.ParquetWriter(frag_path, ACCEPTED_SCHEMA)
                keys = pq.ParquetWriter(keys_path, REPLACED_SCHEMA)
            for source, rows in by_source.items():
                writer.write_batch(accepted_batch(rows, source))
            cols = list(zip(*done, strict=True))
            assert keys is not None
            keys.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, REPLACED_SCHEMA, strict=True)],
                schema=REPLACED_SCHEMA))
            replaced += len(done)
    finally:
        con.close()
        for w in (writer, keys):
            if w is not None:
                w.close()
        shutil.rmtree(root / "duckdb-tmp", ignore_errors=True)
    if replaced:  # into the accepted rows only now: the query above read them
        frag_path.rename(root / "accepted" / frag_path.name)
        spill.replaced = replaced
    return replaced
