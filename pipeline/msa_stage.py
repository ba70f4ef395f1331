"""MSA stage: search a work unit's uncached sequences at once, with the content-addressed cache.

The cache key of an MSA is SHA-256 over (sequence SHA-256, database id, tool parameters key): the
plan looks every sequence up in the atlas's ``msas`` table first, and only the misses of a unit
are searched, as ONE batched search (one query database per unit for MMseqs2). A crashed search is
retried ``retries`` times, then each affected sequence gets an ``msa_error`` outcome that the
write stage records as a failure row. Plain Python; :mod:`pipeline.stages` puts it on Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import FoldAtlasError

log = logging.getLogger(__name__)


def msa_key(sequence_sha256: str, db_id: str, params_key: str) -> str:
    return hashlib.sha256(f"{sequence_sha256}:{db_id}:{params_key}".encode()).hexdigest()


@dataclass(frozen=True)
class MSASpec:
    """What identifies an MSA besides its query: the database and the search parameters."""

    db_dir: str
    db_id: str
    db_name: str
    tool: str
    tool_version: str
    params: Any  # pipeline.msa.MSAParams
    params_key: str
    retries: int = 1

    def key(self, sequence_sha256: str) -> str:
        return msa_key(sequence_sha256, self.db_id, self.params_key)


@dataclass(frozen=True)
class MSAStat:
    key: str
    depth: int
    neff: float


@dataclass
class MSAUnitResult:
    """Per unit: new A3Ms (to store), stats for every sequence, and failures."""

    a3m: dict[str, str] = field(default_factory=dict)  # sha256 -> A3M text (new searches only)
    stats: dict[str, MSAStat] = field(default_factory=dict)  # sha256 -> stats (new and cached)
    failed: dict[str, str] = field(default_factory=dict)  # sha256 -> error message
    seconds: dict[str, float] = field(default_factory=dict)  # sha256 -> attributed search time
    searched: int = 0  # queries sent to the search tool (0 when everything was cached)
    attempts: int = 0


def make_spec(cfg: Any) -> MSASpec:
    """Resolve ``[msa]`` config into a spec; fails before the run when the database is unusable."""
    from pipeline.msa import MSAParams
    from pipeline.msa_db import load_msa_db, search_tool_ready

    db = load_msa_db(cfg.db) if cfg.db else None
    if db is None:
        raise FoldAtlasError(f"--msa {cfg.tool} needs --msa-db DBDIR",
                             hint="Build one with `foldatlas msa-db build SEQS.fasta --out DBDIR`.")
    if db.tool != cfg.tool:
        raise FoldAtlasError(f"MSA database {cfg.db} was built for {db.tool}, not {cfg.tool}",
                             hint=f"Use --msa {db.tool}, or build a {cfg.tool} database with msa-db build --tool.")
    search_tool_ready(db.tool)
    overrides = {k: v for k, v in {"iterations": cfg.iterations, "evalue": cfg.evalue,
                                   "sensitivity": cfg.sensitivity, "max_seqs": cfg.max_seqs}.items()
                 if v is not None}
    params = MSAParams(tool=db.tool, threads=cfg.threads, **overrides)
    return MSASpec(db_dir=str(cfg.db), db_id=db.db_id, db_name=db.name, tool=db.tool,
                   tool_version=db.tool_version, params=params, params_key=params.params_key(),
                   retries=cfg.retries)


def search_unit(sequences: dict[str, str], cached: dict[str, MSAStat], spec: MSASpec) -> MSAUnitResult:
    """Search every sequence (sha256 -> sequence) not in ``cached``; one batched search call."""
    from pipeline.msa import search_a3m
    from pipeline.msa_db import load_msa_db, resolve_threads
    from storage.a3m import A3M, msa_depth, msa_neff, warm_neff_kernels, write_a3m

    result = MSAUnitResult(stats=dict(cached))
    todo = {sha: seq for sha, seq in sequences.items() if sha not in cached}
    if not todo:
        return result
    queries = [(sha, seq) for sha, seq in todo.items()]
    # The compiled Neff kernels load (numba's on-disk cache; compiled on a first run) while the
    # search runs, instead of after it; a no-op once loaded in this process.
    warmup = threading.Thread(target=warm_neff_kernels, name="msa-neff-warmup", daemon=True)
    warmup.start()
    error = ""
    for attempt in range(spec.retries + 1):
        result.attempts = attempt + 1
        start = time.perf_counter()
        try:
            found = search_a3m(queries, load_msa_db(spec.db_dir), spec.params)
        except FoldAtlasError as e:  # ToolError, MSAError: retried, then recorded per sequence
            error = str(e)[-2000:]
            log.warning("MSA search of %d queries failed (attempt %d/%d): %s", len(queries), attempt + 1,
                        spec.retries + 1, error.splitlines()[0] if error else "")
            continue
        elapsed = time.perf_counter() - start
        warmup.join()
        total = sum(len(s) for s in todo.values())
        result.searched = len(queries)

        def score(a3m: A3M) -> tuple[int, float]:
            return msa_depth(a3m), float(msa_neff(a3m))

        # Depth and Neff of every MSA, on as many threads as the search used: the Neff kernel
        # releases the GIL, so this step uses the cores the search leaves idle when it ends.
        # Deepest first, so that the threads finish together (the cost grows with depth squared).
        present = sorted((sha for sha in todo if found.get(sha) is not None), key=lambda sha: -len(found[sha]))
        with ThreadPoolExecutor(max_workers=max(1, min(resolve_threads(spec.params.threads), len(present))),
                                thread_name_prefix="msa-neff") as pool:
            scores = dict(zip(present, pool.map(score, [found[sha] for sha in present]), strict=True))
        for sha, seq in todo.items():
            if sha not in scores:
                result.failed[sha] = "search returned no alignment for this query"
                continue
            result.a3m[sha] = write_a3m(found[sha])
            depth, neff = scores[sha]
            result.stats[sha] = MSAStat(spec.key(sha), depth, neff)
            result.seconds[sha] = elapsed * len(seq) / total
        return result
    result.failed.update({sha: error or "search failed" for sha in todo})
    return result


def split_result(result: MSAUnitResult, shas: set[str]) -> MSAUnitResult:
    """The part of a joint search's result that concerns one unit's sequences."""
    return MSAUnitResult(
        a3m={k: v for k, v in result.a3m.items() if k in shas},
        stats={k: v for k, v in result.stats.items() if k in shas},
        failed={k: v for k, v in result.failed.items() if k in shas},
        seconds={k: v for k, v in result.seconds.items() if k in shas},
        searched=sum(1 for k in shas if k in result.a3m or k in result.failed) if result.searched else 0,
        attempts=result.attempts)


def search_units(units: list[tuple[dict[str, str], dict[str, MSAStat]]], spec: MSASpec) -> list[MSAUnitResult]:
    """Several units' (sequences, cached stats) in ONE search call; one result per unit, same order.

    A sequence shared by two units is searched once. The split results equal what per-unit calls
    return (the tool sees each query independently), with search time attributed by length.
    """
    if len(units) == 1:
        return [search_unit(units[0][0], units[0][1], spec)]
    sequences: dict[str, str] = {}
    cached: dict[str, MSAStat] = {}
    for seqs, known in units:
        sequences.update(seqs)
        cached.update(known)
    joint = search_unit(sequences, cached, spec)
    return [split_result(joint, set(seqs)) for seqs, _ in units]


def params_json(spec: MSASpec) -> str:
    params = spec.params
    data = asdict(params) if hasattr(params, "__dataclass_fields__") else dict(vars(params))
    return json.dumps(data, sort_keys=True, default=str)
