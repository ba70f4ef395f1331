"""Reuse of imported structures by ``foldatlas run`` (config ``plan.reuse_models``).

A sequence that the run's model has not predicted but that the atlas holds a structure for under
one of the ``plan.reuse_models`` (model names or shell patterns; default: every import model,
``alphafold-db-*``, ``colabfold``, ``esmfold-import``) is not predicted again: its records get
entry rows pointing to that structure, with the structure's model in ``entries.model`` (an entry
is keyed by accession, sequence and model, and joins ``structures`` on sequence and model). The
first pattern that matches wins, then the model name in sorted order. ``reuse_models = []``
predicts every sequence with the run's model. The lookup is SQL over the atlas's ``structures`` and
``entries`` (:func:`pipeline.plan.plan_run`); this module holds the ranking.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

#: ``plan.reuse_models`` default: the models ``foldatlas import`` writes.
DEFAULT_REUSE_MODELS = ("alphafold-db-*", "colabfold", "esmfold-import")


def _rank(model: str, patterns: Sequence[str]) -> int | None:
    return next((i for i, p in enumerate(patterns) if fnmatch.fnmatchcase(model, p)), None)


def rank_models(models: Iterable[str], patterns: Sequence[str]) -> dict[str, int]:
    """{model: position of the first pattern it matches} for the models that match one; the plan
    (:func:`pipeline.plan.plan_run`) reuses, per sequence, the structure of the lowest (rank, model)."""
    ranks = {m: _rank(m, patterns) for m in models}
    return {m: r for m, r in sorted(ranks.items()) if r is not None}
