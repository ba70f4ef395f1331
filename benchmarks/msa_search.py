"""MSA search benchmark: our MSA stage vs the same MMseqs2 search by hand vs AlphaFold2's jackhmmer.

Measured side by side in one process, one run (``docs/benchmarks.md`` has the results):

(a) **stage**: the queries cut into work units exactly as the pipeline's plan cuts them
    (:func:`pipeline.plan.cut_units`, default 8,000 residues per unit), then one
    :func:`pipeline.msa_stage.search_unit` call per unit, sequentially (one MSA actor): query DB,
    ``mmseqs search`` + ``result2msa``, reading the A3Ms back, depth and Neff per query.
(b) **floor**: the same three ``mmseqs`` commands with identical parameters, run by hand once over
    all queries (one query DB), queries in file order, timed end to end. (a) and (b) alternate,
    ``b a b' b a b' b`` with ``--repeats 2``, so that drift of the shared machine hits both; ratios
    use the means. (b') is (b) given the queries longest first, the order the stage writes them in
    (:func:`pipeline.msa.longest_first`), so that the gain of that order is measured apart. A last
    (b) with ``-v 3`` (not in the ratios) gives MMseqs2's own per-module times.
(c) **jackhmmer** as AlphaFold2 runs it against UniRef90 (``alphafold/data/tools/jackhmmer.py``:
    ``-o /dev/null -A out.sto --noali --F1 0.0005 --F2 0.00005 --F3 0.0000005 --incE 0.0001
    -E 0.0001 --cpu N -N 1``), one process per query on a fixed subset, scaled per query to all.

Hit-set agreement compares target ids (A3M row names of (a), Stockholm names of (c) with their
``/from-to`` suffix removed) on the timed jackhmmer subset and, with ``--jackhmmer-all`` (default),
on every query (jackhmmer then also runs on the other queries, after the timed subset); hits are
also grouped by the real parent sequence they descend from (the ``p=`` header field), and (a) is
compared with (b) for every query.

Full run (about 30-40 minutes on 2 cores; database and scratch under ``--workdir``)::

    nice -n 10 python -m benchmarks.msa_search --out benchmarks/results/msa_search.json

Smoke run (< 1 minute, test data only; what ``tests/benchmarks`` runs)::

    python -m benchmarks.msa_search --smoke --workdir /tmp/x --out /tmp/x/smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.make_msa_db import DEFAULT_PARENTS, SHARED, GenParams, generate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_QUERIES = SHARED / "uniprot" / "UP000000625_83333.fasta"
SMOKE_PARENTS = (ROOT / "tests" / "data" / "msa" / "af3_testdata_uniref90__subsampled_1000.fasta",)
SMOKE_QUERIES = ROOT / "tests" / "data" / "msa" / "queries.fasta"
DEFAULT_WORKDIR = Path("/tmp/foldatlas-bench")
#: AlphaFold2's jackhmmer flags for UniRef90 (alphafold/data/tools/jackhmmer.py, defaults of
#: ``Jackhmmer.__init__``: n_iter=1, e_value=1e-4, F1/F2/F3 = 5e-4/5e-5/5e-7); ``--cpu`` is ours.
JACKHMMER_FLAGS = ("-o", "/dev/null", "--noali", "--F1", "0.0005", "--F2", "0.00005", "--F3", "0.0000005",
                   "--incE", "0.0001", "-E", "0.0001")
JACKHMMER_SOURCE = ("google-deepmind/alphafold @ 0be2b30b98f0da7aecb973bde04758fae67eb913, "
                    "alphafold/data/tools/jackhmmer.py, Jackhmmer._query_chunk")

log = logging.getLogger("benchmarks.msa_search")


@dataclass(frozen=True)
class Settings:
    """Everything that defines a benchmark run (stored in the JSON)."""

    mode: str
    queries_fasta: str
    parent_fastas: tuple[str, ...]
    workdir: str
    n_db: int
    n_queries: int
    n_jackhmmer: int
    seed: int
    db_seed: int
    sensitivity: float
    iterations: int
    evalue: float
    max_seqs: int
    threads: int
    index: bool
    unit_max_residues: int
    repeats: int
    jackhmmer_all: bool
    units_per_search: int = 1
    cluster_min_seq_id: float | None = None
    cluster_method: str = "cluster"
    cluster_coverage: float = 0.8
    also_unclustered: bool = False


SMOKE = dict(n_db=2000, n_queries=5, n_jackhmmer=2, repeats=1, index=True, unit_max_residues=600)


# --------------------------------------------------------------------------------------------
# Small helpers


def _log(msg: str, *args: Any) -> None:
    log.info(msg, *args)


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Clock:
    """Wall time and CPU time (children = the tools, self = this Python process) of a block."""

    wall: float = 0.0
    cpu_children: float = 0.0
    cpu_self: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 3), "cpu_children_s": round(self.cpu_children, 3),
                "cpu_self_s": round(self.cpu_self, 3), "cpu_total_s": round(self.cpu_children + self.cpu_self, 3)}


@contextlib.contextmanager
def clock() -> Iterator[Clock]:
    c = Clock()
    w, ch, me = time.perf_counter(), _child_cpu(), _self_cpu()
    try:
        yield c
    finally:
        c.wall = time.perf_counter() - w
        c.cpu_children = _child_cpu() - ch
        c.cpu_self = _self_cpu() - me


def _run(argv: Sequence[str]) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, its stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), check=True, capture_output=True, text=True)
    return time.perf_counter() - start, proc.stdout


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    mmseqs_v = subprocess.run(["mmseqs", "version"], capture_output=True, text=True).stdout.strip()
    hmmer_v = ""
    with contextlib.suppress(OSError, IndexError):
        out = subprocess.run(["jackhmmer", "-h"], capture_output=True, text=True).stdout.splitlines()
        hmmer_v = next((ln[2:].strip() for ln in out if ln.startswith("# HMMER")), "")
    commit = ""
    with contextlib.suppress(OSError):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
            "mem_gib": mem_gib, "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "mmseqs": mmseqs_v, "hmmer": hmmer_v, "git_commit": commit,
            "niceness": os.nice(0)}


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --------------------------------------------------------------------------------------------
# Inputs


def select_queries(path: Path, n: int, seed: int) -> list[Any]:
    """``n`` unique accepted records of ``path`` (as the pipeline's ingest normalises them),
    chosen with ``numpy.random.default_rng(seed).choice`` without replacement, in file order."""
    from pipeline.ingest import ingest

    records = []
    seen: set[str] = set()
    for rec in ingest(path).accepted:
        if rec.sha256 not in seen:
            seen.add(rec.sha256)
            records.append(rec)
    if n > len(records):
        raise ValueError(f"{path} has {len(records)} unique sequences, {n} requested")
    idx = sorted(np.random.default_rng(seed).choice(len(records), size=n, replace=False).tolist())
    return [records[i] for i in idx]


def prepare_db(settings: Settings, wd: Path) -> tuple[Any, dict[str, Any]]:
    """Generate the FASTA and build the FoldAtlas MMseqs2 database; reuse both when the recorded
    generation parameters and inputs match (a stamp file next to them)."""
    from pipeline.msa_db import Clustering, build_msa_db, load_msa_db

    gen = GenParams(n=settings.n_db, seed=settings.db_seed)
    fasta = wd / "db.fasta"
    stamp = wd / "db.stamp.json"
    cluster = (Clustering(settings.cluster_method, settings.cluster_min_seq_id, settings.cluster_coverage)
               if settings.cluster_min_seq_id is not None else None)
    db_dir = wd / ("mmseqs-db-idx" if settings.index else "mmseqs-db")
    if cluster is not None:
        db_dir = db_dir.with_name(f"{db_dir.name}-{cluster.method}{cluster.min_seq_id:g}-c{cluster.coverage:g}")
    key = {"gen": asdict(gen), "parents": list(settings.parent_fastas)}
    info: dict[str, Any] = {}
    if stamp.is_file() and fasta.is_file():
        old = json.loads(stamp.read_text())
        if old.get("key") == key:
            info = old
    if not info:
        _log("generating %d sequences -> %s", gen.n, fasta)
        for old_db in wd.glob("mmseqs-db*"):
            shutil.rmtree(old_db, ignore_errors=True)
        summary = generate(settings.parent_fastas, fasta, gen)
        info = {"key": key, "generation": summary.to_dict()}
        stamp.write_text(json.dumps(info, indent=2))
    if db_dir.is_dir() and any(db_dir.iterdir()):
        db = load_msa_db(db_dir)
        build = info.get(f"build_{db_dir.name}", {})
    else:
        shutil.rmtree(db_dir, ignore_errors=True)
        _log("building FoldAtlas mmseqs2 database (index=%s) in %s", settings.index, db_dir)
        with clock() as c:
            db = build_msa_db([fasta], db_dir, tool="mmseqs2", index=settings.index, threads=settings.threads,
                              cluster=cluster)
        build = {"call": f"pipeline.msa_db.build_msa_db([{str(fasta)!r}], {str(db_dir)!r}, tool='mmseqs2', "
                         f"index={settings.index}, threads={settings.threads}, cluster={cluster!r})", **c.to_dict()}
        info[f"build_{db_dir.name}"] = build
        stamp.write_text(json.dumps(info, indent=2))
    size = sum(f.stat().st_size for f in db_dir.iterdir() if f.is_file())
    gen_info = info["generation"]
    return db, {"fasta": str(fasta), "sequences": gen_info["sequences"], "residues": gen_info["residues"],
                "mean_length": round(gen_info["mean_length"], 1), "recombinants": gen_info["recombinants"],
                "fasta_sha256": gen_info["fasta_sha256"], "fasta_bytes": fasta.stat().st_size,
                "parents": gen_info["parents"], "parent_files": gen_info["parent_files"],
                "generation_params": gen_info["params"], "generation_s": gen_info["seconds"],
                "mmseqs_db_dir": str(db_dir), "mmseqs_db_bytes": size, "indexed": db.indexed, "db_id": db.db_id,
                "clustering": asdict(db.clustering) if db.clustering else None, "build": build}


def warm_cache(db_dir: Path, fasta: Path) -> float:
    """Read every database file once so that no measurement pays the first read from disk."""
    start = time.perf_counter()
    for f in [*sorted(db_dir.iterdir()), fasta]:
        if f.is_file():
            with f.open("rb") as fh:
                while fh.read(1 << 24):
                    pass
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Instrumentation of the stage: time each mmseqs command and pipeline.msa.search_a3m


@contextlib.contextmanager
def instrument() -> Iterator[list[tuple[str, float, str]]]:
    """Record ``(step, seconds, command)`` for every tool the stage runs and for the search call."""
    import pipeline.msa as msa

    events: list[tuple[str, float, str]] = []
    orig_run, orig_search = msa.run_tool, msa.search_a3m

    def run_tool(args: Sequence[Any], **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return orig_run(args, **kw)
        finally:
            argv = [os.fspath(a) for a in args]
            events.append((f"{Path(argv[0]).name} {argv[1]}", time.perf_counter() - start, shlex.join(argv)))

    def search(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return orig_search(*a, **kw)
        finally:
            events.append(("pipeline.msa.search_a3m", time.perf_counter() - start, ""))

    msa.run_tool, msa.search_a3m = run_tool, search  # type: ignore[assignment]
    try:
        yield events
    finally:
        msa.run_tool, msa.search_a3m = orig_run, orig_search  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# (a) the stage, (b) the floor, (c) jackhmmer


def _hits_a3m(text: str) -> set[str]:
    from storage.a3m import parse_a3m

    return {n.split("/")[0] for n in parse_a3m(text).names[1:]}


def run_stage(records: list[Any], db: Any, params: Any, settings: Settings) -> dict[str, Any]:
    from pipeline.config import PlanConfig
    from pipeline.msa_stage import MSASpec, search_units
    from pipeline.plan import cut_units

    spec = MSASpec(db_dir=str(db.path), db_id=db.db_id, db_name=db.name, tool=db.tool,
                   tool_version=db.tool_version, params=params, params_key=params.params_key(), retries=0)
    plan_units = cut_units({r.sha256: [r] for r in records}, "bench",
                           PlanConfig(unit_max_residues=settings.unit_max_residues))
    k = max(1, settings.units_per_search)  # plan units per search call, as the MSA actor batches them
    units = [plan_units[i:i + k] for i in range(0, len(plan_units), k)]
    per_unit: list[dict[str, Any]] = []
    unit_walls: list[float] = []  # unrounded: the sum of rounded walls can pass the rounded total
    a3m: dict[str, str] = {}
    stats: dict[str, Any] = {}
    steps: dict[str, float] = {}
    commands: list[str] = []
    with clock() as total, instrument() as events:
        for i, group in enumerate(units):
            jobs = [({r.sha256: r.sequence for r in u.records}, {}) for u in group]
            seqs = {sha: seq for job, _ in jobs for sha, seq in job.items()}
            residues = sum(u.residues for u in group)
            n_before = len(events)
            with clock() as c:
                results = search_units(jobs, spec)
            for res in results:
                if res.failed:
                    raise RuntimeError(f"search {i}: MSA search failed: {next(iter(res.failed.values()))}")
                a3m.update(res.a3m)
                stats.update(res.stats)
            ev = events[n_before:]
            tools_s = sum(s for name, s, _ in ev if name.startswith("mmseqs"))
            search_s = sum(s for name, s, _ in ev if name == "pipeline.msa.search_a3m")
            for name, s, cmd in ev:
                steps[name] = steps.get(name, 0.0) + s
                if i == 0 and cmd:
                    commands.append(cmd)
            unit_walls.append(c.wall)
            per_unit.append({"unit": i, "plan_units": len(group), "queries": len(seqs), "residues": residues,
                             **c.to_dict(),
                             "mmseqs_s": round(tools_s, 3),
                             "search_python_s": round(search_s - tools_s, 3),
                             "depth_neff_s": round(c.wall - search_s, 3)})
            _log("(a) search %d/%d: %d queries, %d residues, %.1f s", i + 1, len(units), len(seqs), residues,
                 c.wall)
    unit_sum = sum(unit_walls)
    steps["stage python (A3M read-back in search)"] = sum(u["search_python_s"] for u in per_unit)
    steps["stage python (parse, depth, Neff in search_unit)"] = sum(u["depth_neff_s"] for u in per_unit)
    depths = [s.depth for s in stats.values()]
    neffs = [s.neff for s in stats.values()]
    return {"units": len(units), "total": total.to_dict(), "per_unit_sum_wall_s": round(unit_sum, 3),
            "per_unit": per_unit, "steps_s": {k: round(v, 3) for k, v in steps.items()},
            "commands_first_unit": commands, "a3m": a3m,
            "depth": {"mean": round(float(np.mean(depths)), 1), "median": float(np.median(depths)),
                      "max": int(max(depths)), "queries_with_hits": sum(d > 1 for d in depths)},
            "neff": {"mean": round(float(np.mean(neffs)), 2), "median": round(float(np.median(neffs)), 2),
                     "max": round(float(max(neffs)), 2)}}


_MMSEQS_MODULES = frozenset({"prefilter", "align", "result2profile", "mergedbs", "subtractdbs", "concatdbs",
                             "rmdb", "mvdb", "cpdb", "swapresults", "expandaln", "filterresult", "createsubdb"})
_TIME_RE = re.compile(r"Time for processing: (\d+)h (\d+)m (\d+)s (\d+)ms")


def parse_mmseqs_times(log_text: str) -> dict[str, float]:
    """Seconds per ``iteration module`` from ``mmseqs search -v 3`` output ("Time for processing" lines)."""
    out: dict[str, float] = {}
    module, iteration = "other", 0
    for line in log_text.splitlines():
        first = line.split(" ", 1)[0]
        if first in _MMSEQS_MODULES and " " in line:
            module = first
            iteration += first == "prefilter"
        m = _TIME_RE.match(line)
        if m:
            h, mi, sec, ms = (int(x) for x in m.groups())
            key = f"iteration {max(iteration, 1)} {module}"
            out[key] = round(out.get(key, 0.0) + 3600 * h + 60 * mi + sec + ms / 1000, 3)
    return out


def run_floor(records: list[Any], db: Any, params: Any, settings: Settings, scratch: Path,
              verbosity: int = 2, longest_first: bool = False) -> dict[str, Any]:
    """The MMseqs2 commands by hand, queries in file order (``longest_first``: in the order the
    stage writes them, :func:`pipeline.msa.longest_first`)."""
    from pipeline.msa import _read_mmseqs_db
    from pipeline.msa import longest_first as pipeline_longest_first
    from storage.a3m import parse_a3m

    tmp = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch))
    try:
        fasta = tmp / "queries.fasta"
        order = (pipeline_longest_first([(r.accession, r.sequence) for r in records]) if longest_first
                 else range(len(records)))
        fasta.write_text("".join(f">{i}\n{records[i].sequence}\n" for i in order))
        qdb, res, msa = str(tmp / "qdb"), str(tmp / "res"), str(tmp / "msa")
        t = str(settings.threads)
        e = f"{params.e_value:g}"
        cmds = [
            ["mmseqs", "createdb", str(fasta), qdb, "--dbtype", "1", "--shuffle", "0", "-v", "2"],
            ["mmseqs", "search", qdb, str(db.target), res, str(tmp / "tmp"), "--num-iterations",
             str(params.n_iterations), "-a", "-e", e, "--max-seqs", str(params.max_seqs),
             "-s", f"{params.sensitivity:g}", "--threads", t, "-v", str(verbosity)],
        ]
        if db.clustering is not None:  # ColabFold's chain: expand representative hits, realign members
            it = params.n_iterations
            profile = str(tmp / "tmp" / "latest" / f"profile_{it - 2}") if it > 1 else qdb
            cmds += [["mmseqs", "expandaln", qdb, str(db.path / "rep"), res, str(db.path / "clu_aln"),
                      str(tmp / "exp"), "--expansion-mode", "0", "-e", "inf", "--expand-filter-clusters", "0",
                      "--threads", t, "-v", "2"],
                     ["mmseqs", "align", profile, str(db.path / "db"), str(tmp / "exp"), str(tmp / "realign"),
                      "-e", e, "--max-accept", str(params.max_seqs), "-a", "--threads", t, "-v", "2"]]
            res = str(tmp / "realign")
        cmds.append(["mmseqs", "result2msa", qdb, str(db.path / "db"), res, msa, "--msa-format-mode", "6",
                     "--threads", t, "-v", "2"])
        steps: dict[str, float] = {}
        logs: dict[str, str] = {}
        with clock() as c:
            for cmd in cmds:
                seconds, logs[cmd[1]] = _run(cmd)
                steps[f"mmseqs {cmd[1]}"] = round(steps.get(f"mmseqs {cmd[1]}", 0.0) + seconds, 3)
        hits: dict[str, set[str]] = {}
        for text in _read_mmseqs_db(Path(msa)).values():
            a3m = parse_a3m(text)
            hits[records[int(a3m.names[0])].sha256] = {n.split("/")[0] for n in a3m.names[1:]}
        extra = {"search_modules_s": parse_mmseqs_times(logs["search"])} if verbosity >= 3 else {}
        return {**c.to_dict(), "steps_s": steps, **extra, "commands": [shlex.join(x) for x in cmds], "hits": hits}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sto_hits(path: Path) -> set[str]:
    """Sequence names of a Stockholm file (alignment lines), ``/from-to`` suffixes removed."""
    names: set[str] = set()
    with path.open() as fh:
        for line in fh:
            if line.strip() and not line.startswith(("#", "//")):
                names.add(line.split(maxsplit=1)[0].split("/")[0])
    return names


def run_jackhmmer(records: list[Any], fasta: Path, settings: Settings, scratch: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="jackhmmer-", dir=scratch))
    per_query: list[dict[str, Any]] = []
    hits: dict[str, set[str]] = {}
    cmd0 = ""
    try:
        with clock() as c:
            for i, r in enumerate(records):
                q = tmp / f"q{i}.fasta"
                q.write_text(f">{r.accession}\n{r.sequence}\n")
                sto = tmp / f"q{i}.sto"
                cmd = ["jackhmmer", *JACKHMMER_FLAGS[:2], "-A", str(sto), *JACKHMMER_FLAGS[2:],
                       "--cpu", str(settings.threads), "-N", "1", str(q), str(fasta)]
                cmd0 = cmd0 or shlex.join(cmd)
                with clock() as qc:
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                found = _sto_hits(sto) - {r.accession}
                hits[r.sha256] = found
                per_query.append({"accession": r.accession, "length": len(r.sequence), **qc.to_dict(),
                                  "hits": len(found)})
                _log("(c) jackhmmer %d/%d %s (%d aa): %.1f s, %d hits", i + 1, len(records), r.accession,
                     len(r.sequence), qc.wall, len(found))
                sto.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    walls = [p["wall_s"] for p in per_query]
    return {**c.to_dict(), "queries": len(records), "per_query": per_query, "command_first_query": cmd0,
            "wall_per_query_s": {"mean": round(statistics.fmean(walls), 3),
                                 "median": round(statistics.median(walls), 3),
                                 "stdev": round(statistics.stdev(walls), 3) if len(walls) > 1 else 0.0,
                                 "min": round(min(walls), 3), "max": round(max(walls), 3)},
            "cpu_per_query_s": round(statistics.fmean(p["cpu_total_s"] for p in per_query), 3),
            "hits": hits}


# --------------------------------------------------------------------------------------------
# Agreement


def agreement(ref: dict[str, set[str]], other: dict[str, set[str]], label_ref: str, label_other: str,
              names: dict[str, str]) -> dict[str, Any]:
    """Per-query and overall recall of each hit set by the other, and Jaccard."""
    rows: list[dict[str, Any]] = []
    inter = n_ref = n_other = union = 0
    for sha in ref:
        r, o = ref[sha], other.get(sha, set())
        both = len(r & o)
        inter += both
        n_ref += len(r)
        n_other += len(o)
        union += len(r | o)
        rows.append({"query": names[sha], f"hits_{label_ref}": len(r), f"hits_{label_other}": len(o),
                     "shared": both,
                     f"recall_of_{label_ref}_by_{label_other}": round(both / len(r), 4) if r else None,
                     f"recall_of_{label_other}_by_{label_ref}": round(both / len(o), 4) if o else None,
                     "jaccard": round(both / len(r | o), 4) if (r | o) else None})
    return {
        "queries": len(rows),
        "queries_with_hits": {label_ref: sum(bool(ref[s]) for s in ref),
                              label_other: sum(bool(other.get(s)) for s in ref)},
        "hits": {label_ref: n_ref, label_other: n_other, "shared": inter},
        f"recall_of_{label_ref}_by_{label_other}": round(inter / n_ref, 4) if n_ref else None,
        f"recall_of_{label_other}_by_{label_ref}": round(inter / n_other, 4) if n_other else None,
        "jaccard": round(inter / union, 4) if union else None,
        "identical_sets": sum(ref[s] == other.get(s, set()) for s in ref),
        "per_query": rows,
    }


# --------------------------------------------------------------------------------------------
# Main


def family_index(fasta: Path, wanted: set[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """Parents of the ``wanted`` database sequences (from the ``p=`` header field that
    :mod:`benchmarks.make_msa_db` writes) and, for every parent, how many database sequences descend
    from it wholly or in part (recombinants count for both parents)."""
    parents_of: dict[str, tuple[str, ...]] = {}
    members: dict[str, int] = {}
    with fasta.open() as fh:
        for line in fh:
            if not line.startswith(">"):
                continue
            name, rest = line[1:].split(" ", 1)
            field = next((f for f in rest.split() if f.startswith("p=")), "p=")
            parents = tuple(dict.fromkeys(field[2:].split("+")))
            for p in parents:
                members[p] = members.get(p, 0) + 1
            if name in wanted:
                parents_of[name] = parents
    return parents_of, members


def family_agreement(ref: dict[str, set[str]], other: dict[str, set[str]], parents_of: dict[str, tuple[str, ...]],
                     members: dict[str, int], names: dict[str, str]) -> dict[str, Any]:
    """Hits grouped by the real parent they descend from: (c) = ``ref``, (a) = ``other``.

    For the parents that (c) hits (its homolog families, confirmed by jackhmmer), how many of their
    database descendants each tool found; and how many of (a)'s hits lie outside those families.
    """
    def fams(hits: set[str]) -> set[str]:
        return {p for h in hits for p in parents_of.get(h, ())}

    rows = []
    fam_members = found_a = found_c = a_in = a_out = 0
    for sha in ref:
        c_hits, a_hits = ref[sha], other.get(sha, set())
        fc, fa = fams(c_hits), fams(a_hits)
        size = sum(members.get(p, 0) for p in fc)
        in_c = sum(1 for h in a_hits if fc & set(parents_of.get(h, ())))
        fam_members += size
        found_c += sum(1 for h in c_hits if fc & set(parents_of.get(h, ())))
        found_a += in_c
        if c_hits:
            a_in += in_c
            a_out += len(a_hits) - in_c
        if c_hits or a_hits:
            rows.append({"query": names[sha], "families_c": len(fc), "families_a": len(fa),
                         "families_shared": len(fc & fa), "members_of_c_families": size,
                         "of_them_found_by_c": len(c_hits), "of_them_found_by_a": in_c,
                         "a_hits_outside_c_families": len(a_hits) - in_c})
    return {"members_of_c_families": fam_members, "found_by_c": found_c, "found_by_a": found_a,
            "a_hits_outside_c_families_where_c_has_hits": a_out,
            "a_hits_where_c_has_none": sum(len(other.get(s, set())) for s in ref if not ref[s]),
            "per_query_with_hits": rows}


def run(settings: Settings, out: Path) -> dict[str, Any]:
    from pipeline.msa import MSAParams

    wd = Path(settings.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    scratch = wd / "scratch"
    scratch.mkdir(exist_ok=True)
    os.environ["FOLDATLAS_SCRATCH"] = str(scratch)  # the stage's scratch_dir(); same disk as the floor
    result: dict[str, Any] = {"benchmark": "msa_search", "complete": False,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
                              "settings": asdict(settings), "loadavg": {"start": _loadavg()}}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")

    records = select_queries(Path(settings.queries_fasta), settings.n_queries, settings.seed)
    names = {r.sha256: r.accession for r in records}
    rng = np.random.default_rng(settings.seed + 1)
    jidx = sorted(rng.choice(len(records), size=min(settings.n_jackhmmer, len(records)), replace=False).tolist())
    jrecords = [records[i] for i in jidx]
    result["queries"] = {"source": settings.queries_fasta, "count": len(records),
                         "residues": sum(len(r.sequence) for r in records),
                         "selection": f"numpy.random.default_rng({settings.seed}).choice(n_unique, "
                                      f"{settings.n_queries}, replace=False), sorted into file order",
                         "accessions": [r.accession for r in records],
                         "jackhmmer_subset": [r.accession for r in jrecords],
                         "jackhmmer_subset_selection": f"numpy.random.default_rng({settings.seed + 1}).choice("
                                                       f"{len(records)}, {len(jrecords)}, replace=False)",
                         "jackhmmer_subset_residues": sum(len(r.sequence) for r in jrecords)}

    db, db_info = prepare_db(settings, wd)
    result["database"] = db_info
    params = MSAParams(tool="mmseqs2", iterations=settings.iterations, evalue=settings.evalue,
                       sensitivity=settings.sensitivity, max_seqs=settings.max_seqs, threads=settings.threads)
    result["params"] = {**asdict(params), "params_key": params.params_key()}
    result["warm_cache_s"] = round(warm_cache(Path(db.path), Path(db_info["fasta"])), 2)
    save()

    # (b) and (a) alternate, b a b' b a b' ... b, so that each stage run sits between two floor runs.
    floors: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []

    def floor() -> None:
        _log("(b) floor run %d: %d queries", len(floors) + 1, len(records))
        floors.append(run_floor(records, db, params, settings, scratch))
        _log("(b) floor run %d: %.1f s", len(floors), floors[-1]["wall_s"])

    sorted_floors: list[dict[str, Any]] = []  # (b'): the floor with the stage's query order
    for _ in range(settings.repeats):
        floor()
        _log("(a) stage run %d: %d queries", len(stages) + 1, len(records))
        stages.append(run_stage(records, db, params, settings))
        _log("(a) stage run %d: %.1f s", len(stages), stages[-1]["total"]["wall_s"])
        sorted_floors.append(run_floor(records, db, params, settings, scratch, longest_first=True))
        _log("(b') floor run %d, queries longest first: %.1f s", len(sorted_floors), sorted_floors[-1]["wall_s"])
    floor()
    flat: dict[str, Any] | None = None
    if settings.also_unclustered:  # the same stage on all sequences, for the cost and hits of clustering
        from dataclasses import replace

        flat_db, flat_info = prepare_db(replace(settings, cluster_min_seq_id=None), wd)
        warm_cache(Path(flat_db.path), Path(flat_info["fasta"]))
        _log("(a, unclustered) stage run: %d queries against %s", len(records), flat_db.path)
        flat = run_stage(records, flat_db, params, settings)
        flat["database"] = {k: flat_info[k] for k in ("mmseqs_db_dir", "mmseqs_db_bytes", "db_id")}
        _log("(a, unclustered) stage run: %.1f s", flat["total"]["wall_s"])
    result["loadavg"]["after_mmseqs"] = _loadavg()

    # (c) the timed subset first (the issue's measure), then the other queries for agreement.
    jack = run_jackhmmer(jrecords, Path(db_info["fasta"]), settings, scratch)
    jack_hits = jack.pop("hits")
    rest = [r for r in records if r.sha256 not in jack_hits] if settings.jackhmmer_all else []
    jack_rest = run_jackhmmer(rest, Path(db_info["fasta"]), settings, scratch) if rest else None
    result["loadavg"]["after_jackhmmer"] = _loadavg()

    # Diagnostics, outside the ratios: the floor once more with -v 3 for MMseqs2's per-module times,
    # and once with the queries longest first, the order the stage gives MMseqs2.
    _log("(b) diagnostic floor run with -v 3")
    diag = run_floor(records, db, params, settings, scratch, verbosity=3)
    diag.pop("hits")
    result["loadavg"]["end"] = _loadavg()

    stage_hits = [{sha: _hits_a3m(text) for sha, text in st.pop("a3m").items()} for st in stages]
    floor_hits = [f.pop("hits") for f in floors]
    sorted_hits = [f.pop("hits") for f in sorted_floors]
    b_sorted_wall = statistics.fmean(f["wall_s"] for f in sorted_floors)
    hits_a, hits_b = stage_hits[0], floor_hits[0]
    stable = all(h == hits_a for h in stage_hits) and all(h == hits_b for h in floor_hits)
    a_walls = [st["total"]["wall_s"] for st in stages]
    a_cpus = [st["total"]["cpu_total_s"] for st in stages]
    a_tools = [sum(u["mmseqs_s"] for u in st["per_unit"]) for st in stages]
    b_walls = [f["wall_s"] for f in floors]
    b_cpus = [f["cpu_total_s"] for f in floors]
    a_wall, b_wall = statistics.fmean(a_walls), statistics.fmean(b_walls)
    n = len(records)
    c_scaled = jack["wall_per_query_s"]["mean"] * n
    c_res_scaled = jack["wall_s"] / result["queries"]["jackhmmer_subset_residues"] * result["queries"]["residues"]
    c_cpu_scaled = jack["cpu_per_query_s"] * n
    c_all = jack["wall_s"] + (jack_rest["wall_s"] if jack_rest else 0.0)
    first = stages[0]
    result["timings"] = {
        "a_stage": {"runs": [{"total": st["total"], "per_unit_sum_wall_s": st["per_unit_sum_wall_s"],
                              "mmseqs_s": round(tools, 3), "steps_s": st["steps_s"]}
                             for st, tools in zip(stages, a_tools, strict=True)],
                    "wall_s_mean": round(a_wall, 3), "wall_s_min": round(min(a_walls), 3),
                    "cpu_total_s_mean": round(statistics.fmean(a_cpus), 3),
                    "units": first["units"], "per_unit_first_run": first["per_unit"],
                    "commands_first_unit": first["commands_first_unit"], "depth": first["depth"],
                    "neff": first["neff"]},
        "b_floor": {"runs": floors, "wall_s_mean": round(b_wall, 3), "wall_s_min": round(min(b_walls), 3),
                    "cpu_total_s_mean": round(statistics.fmean(b_cpus), 3)},
        "c_jackhmmer": {**jack, "scaled_to_all_queries_wall_s": round(c_scaled, 3),
                        "scaled_by_residues_wall_s": round(c_res_scaled, 1),
                        "scaled_to_all_queries_cpu_s": round(c_cpu_scaled, 1)},
        "c_jackhmmer_other_queries": ({k: v for k, v in jack_rest.items() if k != "hits"} if jack_rest else None),
        "c_jackhmmer_all_queries_measured_wall_s": round(c_all, 1) if jack_rest or len(jrecords) == n else None,
        "b_diagnostic_v3": diag,
        "b_floor_longest_first": {"runs": sorted_floors, "wall_s_mean": round(b_sorted_wall, 3),
                                  "hits_equal_b": all(h == hits_b for h in sorted_hits)},
        "hit_sets_identical_across_repeats": stable,
    }
    flat_hits: dict[str, set[str]] = {}
    if flat is not None:
        flat_hits = {sha: _hits_a3m(text) for sha, text in flat.pop("a3m").items()}
        result["timings"]["a_stage_unclustered"] = {
            "total": flat["total"], "mmseqs_s": round(sum(u["mmseqs_s"] for u in flat["per_unit"]), 3),
            "steps_s": flat["steps_s"], "database": flat["database"], "depth": flat["depth"], "neff": flat["neff"]}
    result["ratios"] = {
        "a_over_b_wall": round(a_wall / b_wall, 3),
        # each stage run against the mean of the two floor runs around it
        "a_over_b_wall_per_run": [round(a / statistics.fmean(b_walls[i:i + 2]), 3) for i, a in enumerate(a_walls)],
        "a_over_b_wall_min_over_min": round(min(a_walls) / min(b_walls), 3),
        "a_over_b_cpu": round(statistics.fmean(a_cpus) / statistics.fmean(b_cpus), 3),
        "a_mmseqs_only_over_b_wall": round(statistics.fmean(a_tools) / b_wall, 3),
        # against the by-hand runs given the queries in the stage's order (b')
        "a_over_b_longest_first_wall": round(a_wall / b_sorted_wall, 3),
        "b_over_b_longest_first_wall": round(b_wall / b_sorted_wall, 3),
        "c_over_a_wall": round(c_scaled / a_wall, 2),
        "c_over_a_wall_residue_scaled": round(c_res_scaled / a_wall, 2),
        "c_over_a_cpu": round(c_cpu_scaled / statistics.fmean(a_cpus), 2),
        "c_over_a_wall_all_queries_measured": (round(c_all / a_wall, 2)
                                               if jack_rest or len(jrecords) == n else None),
    }
    if flat is not None:
        result["ratios"]["a_unclustered_over_a_wall"] = round(flat["total"]["wall_s"] / a_wall, 3)
        result["ratios"]["c_over_a_unclustered_wall"] = round(c_scaled / flat["total"]["wall_s"], 2)
    result["targets"] = {"a_over_b_max": 1.15, "c_over_a_min": 20.0,
                         "a_over_b_met": result["ratios"]["a_over_b_wall"] <= 1.15,
                         "c_over_a_met": result["ratios"]["c_over_a_wall"] >= 20.0}

    all_jack = {**jack_hits, **(jack_rest["hits"] if jack_rest else {})}
    jsub = {r.sha256: hits_a.get(r.sha256, set()) for r in jrecords}
    agree: dict[str, Any] = {"a_vs_c_jackhmmer_subset": agreement(jack_hits, jsub, "c", "a", names)}
    if jack_rest:
        full = agreement({r.sha256: all_jack.get(r.sha256, set()) for r in records}, hits_a, "c", "a", names)
        full["per_query"] = [row for row in full["per_query"] if row["hits_c"] or row["hits_a"]]
        agree["a_vs_c_all_queries"] = full
    wanted = set().union(*all_jack.values(), *hits_a.values())
    parents_of, members = family_index(Path(db_info["fasta"]), wanted)
    agree["families_c_vs_a"] = family_agreement({r.sha256: all_jack.get(r.sha256, set()) for r in records
                                                 if r.sha256 in all_jack}, hits_a, parents_of, members, names)
    agree["a_vs_b_all_queries"] = {k: v for k, v in agreement(
        {r.sha256: hits_b.get(r.sha256, set()) for r in records}, hits_a, "b", "a", names).items()
        if k != "per_query"}
    if flat is not None:
        agree["a_unclustered_vs_c_all_queries"] = {k: v for k, v in agreement(
            {r.sha256: all_jack.get(r.sha256, set()) for r in records}, flat_hits, "c", "a_unclustered",
            names).items() if k != "per_query"}
        agree["a_unclustered_vs_a"] = {k: v for k, v in agreement(
            {r.sha256: flat_hits.get(r.sha256, set()) for r in records}, hits_a, "a_unclustered", "a",
            names).items() if k != "per_query"}
    result["agreement"] = agree
    result["complete"] = True
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, set):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    ap = argparse.ArgumentParser(description="MSA search benchmark (see the module docstring).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "msa_search.json")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run from tests/data (2,000-sequence db, 5 queries, 2 jackhmmer queries)")
    ap.add_argument("--workdir", type=Path, default=None, help=f"database and scratch (default {DEFAULT_WORKDIR})")
    ap.add_argument("--queries-fasta", type=Path, default=None)
    ap.add_argument("--parents", nargs="+", type=Path, default=None, help="FASTA files the database descends from")
    ap.add_argument("--n-db", type=int, default=None, help="database sequences (default 1,000,000)")
    ap.add_argument("--n-queries", type=int, default=None, help="default 200")
    ap.add_argument("--n-jackhmmer", type=int, default=None, help="queries timed with jackhmmer (default 20)")
    ap.add_argument("--seed", type=int, default=7, help="query selection seed")
    ap.add_argument("--db-seed", type=int, default=GenParams.seed, help="database generation seed")
    ap.add_argument("--sensitivity", type=float, default=5.7, help="mmseqs -s (default 5.7)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--evalue", type=float, default=0.1)
    ap.add_argument("--max-seqs", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index", action=argparse.BooleanOptionalAction, default=None,
                    help="build the MMseqs2 precomputed index (createindex; default: yes)")
    ap.add_argument("--unit-max-residues", type=int, default=None, help="plan's unit size (default 8000)")
    ap.add_argument("--units-per-search", type=int, default=1,
                    help="plan units per search call in (a), as msa.units_per_search (default 1)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of (a); (b) runs once more, alternating b a b' b a b' b (default 2)")
    ap.add_argument("--jackhmmer-all", action=argparse.BooleanOptionalAction, default=True,
                    help="after the timed subset, run jackhmmer on the other queries too, for agreement")
    ap.add_argument("--cluster-min-seq-id", type=float, default=None,
                    help="search a clustered database (msa-db build --cluster-min-seq-id), ColabFold's way")
    ap.add_argument("--cluster-method", choices=("cluster", "linclust"), default="cluster")
    ap.add_argument("--cluster-coverage", type=float, default=0.8)
    ap.add_argument("--also-unclustered", action="store_true",
                    help="with --cluster-min-seq-id: also time the stage once on the unclustered database "
                         "(built if missing) and compare its hits, side by side in the same run")
    a = ap.parse_args(argv)
    smoke = dict(SMOKE) if a.smoke else {}

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else smoke.get(key, default)

    settings = Settings(
        mode="smoke" if a.smoke else "full",
        queries_fasta=str(a.queries_fasta or (SMOKE_QUERIES if a.smoke else DEFAULT_QUERIES)),
        parent_fastas=tuple(str(p) for p in (a.parents or (SMOKE_PARENTS if a.smoke else DEFAULT_PARENTS))),
        workdir=str(a.workdir or DEFAULT_WORKDIR),
        n_db=pick(a.n_db, "n_db", 1_000_000), n_queries=pick(a.n_queries, "n_queries", 200),
        n_jackhmmer=pick(a.n_jackhmmer, "n_jackhmmer", 20), seed=a.seed, db_seed=a.db_seed,
        sensitivity=a.sensitivity, iterations=a.iterations, evalue=a.evalue, max_seqs=a.max_seqs,
        threads=a.threads, index=pick(a.index, "index", True),
        unit_max_residues=pick(a.unit_max_residues, "unit_max_residues", 8000),
        repeats=pick(a.repeats, "repeats", 2), jackhmmer_all=a.jackhmmer_all, units_per_search=a.units_per_search,
        cluster_min_seq_id=a.cluster_min_seq_id, cluster_method=a.cluster_method,
        cluster_coverage=a.cluster_coverage, also_unclustered=a.also_unclustered and a.cluster_min_seq_id is not None,
    )
    return settings, a.out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    settings, out = parse_args(argv)
    result = run(settings, out)
    summary = {k: result[k] for k in ("ratios", "targets")}
    summary["agreement_a_vs_c"] = {k: v for k, v in result["agreement"]["a_vs_c_jackhmmer_subset"].items()
                                   if k != "per_query"}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
