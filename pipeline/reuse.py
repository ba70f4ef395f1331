"""Reuse of imported structures by ``foldatlas run`` (config ``plan.reuse_models``).

A sequence that the run's model has not predicted but that the atlas holds a structure for under
one of the ``plan.reuse_models`` (model names or shell patterns; default: every import model,
``alphafold-db-*``, ``colabfold``, ``esmfold-import``) is not predicted again: its records get
entry rows pointing to that structure, with the structure's model in ``entries.model`` (an entry
is keyed by accession, sequence and model, and joins ``structures`` on sequence and model). The
first pattern that matches wins, then the model name in sorted order. ``reuse_models = []``
predicts every sequence with the run's model.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from storage.atlas import Atlas

if TYPE_CHECKING:
    from pipeline.ingest import AcceptedRecord
    from pipeline.plan import Plan

log = logging.getLogger(__name__)

#: ``plan.reuse_models`` default: the models ``foldatlas import`` writes.
DEFAULT_REUSE_MODELS = ("alphafold-db-*", "colabfold", "esmfold-import")


def _rank(model: str, patterns: Sequence[str]) -> int | None:
    return next((i for i, p in enumerate(patterns) if fnmatch.fnmatchcase(model, p)), None)


def reusable_structures(atlas: Atlas, patterns: Sequence[str], sha256s: Iterable[str],
                        exclude_model: str) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """({sha256: model to reuse}, existing entry keys (accession, sha256, model) of those models)."""
    wanted = set(sha256s)
    if not patterns or not wanted:
        return {}, set()
    con = atlas.duckdb()
    try:
        con.execute("CREATE TEMP TABLE want(sha VARCHAR)")
        con.executemany("INSERT INTO want VALUES (?)", [(s,) for s in wanted])
        rows = con.execute(
            f"SELECT DISTINCT s.sequence_sha256, s.model FROM read_parquet('{atlas.glob('structures')}', "
            "union_by_name=true) s JOIN want ON s.sequence_sha256 = want.sha WHERE s.model <> ?",
            [exclude_model]).fetchall()
        entries = con.execute(
            f"SELECT DISTINCT e.accession, e.sequence_sha256, e.model FROM read_parquet('{atlas.glob('entries')}', "
            "union_by_name=true) e JOIN want ON e.sequence_sha256 = want.sha").fetchall()
    finally:
        con.close()
    best: dict[str, tuple[int, str]] = {}
    for sha, model in rows:
        rank = _rank(model, patterns)
        if rank is not None and (sha not in best or (rank, model) < best[sha]):
            best[sha] = (rank, model)
    chosen = {sha: model for sha, (_, model) in best.items()}
    return chosen, {(a, s, m) for a, s, m in entries if chosen.get(s) == m}


def apply_reuse(plan: Plan, to_predict: dict[str, list[AcceptedRecord]], atlas: Atlas,
                patterns: Sequence[str]) -> None:
    """Move records whose sequence has a reusable structure out of ``to_predict`` into ``plan.reused``."""
    chosen, entry_keys = reusable_structures(atlas, patterns, to_predict, plan.model)
    for sha, model in chosen.items():
        for rec in to_predict.pop(sha):
            if (rec.accession, sha, model) in entry_keys:
                plan.already_done += 1
            else:
                plan.reused.setdefault(model, []).append(rec)
    if chosen:
        log.info("plan: %d sequences reuse structures of %s", len(chosen), sorted(set(chosen.values())))
