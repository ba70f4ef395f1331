"""Planning at scale: ingest + plan of a synthetic N-sequence UniProt FASTA against an atlas holding half of it.

Inputs, generated (``generate``), seeded (``--seed``, default 11), under ``--workdir``:

``input.fasta``  N records, UniProt style: ``>tr|A0A...|A0A..._SYNTH <description> OS=.. OX=.. GN=..
    PE=.. SV=1`` with unique synthetic accessions (increasing, ``A0A`` + 7 characters of the
    UniProt pattern) and description/OS/OX/GN taken from the real headers of the UniProt FASTA
    files in ``/work/shared/data/uniprot`` (E. coli proteome + AF3 test subsets; fallback
    ``tests/data/uniprot/sample.fasta``); sequences wrapped at 60. Lengths are drawn with
    replacement from the lengths of the same real files (6,401 sequences, mean ~330, 9 to >2,700:
    the too_short/too_long rejects are theirs); residues at UniProtKB/TrEMBL background frequencies
    (``make_synthetic_atlas.AA_FREQ``); 0.5 % of sequences carry one ``X`` (rejected:
    nonstandard_residue). 10 % of records are exact duplicates of another record's sequence (new
    accession, same 2,000-record block, shuffled in), 0.01 % repeat an earlier accession.
``atlas/``  an atlas (``Atlas.init`` + shards written with ``storage.layout.write_shard``, one per
    100,000 rows) where a random half of the (accession, sequence) pairs already have an ``entries``
    row (model ``esmfold``, status predicted) and their sequences a ``structures`` row (metrics,
    the sequence; no pLDDT lists, no structure shards: planning never reads them).

Measured (``run``): ``foldatlas run``'s planning path in a fresh process: :func:`pipeline.spill.ingest_to_parquet`
(scan, validation, hashes, duplicate accessions) and :func:`pipeline.plan.plan_run` (new rejects,
already-done, link entries, reuse lookup, dedupe by sequence, unit cutting, unit payloads), then
the driver's link-entry rows in bounded batches (built, written to scratch, not published). Peak
memory: the largest sum of RSS over the process tree (driver + scan workers; DuckDB's threads are
in the driver), sampled every 0.2 s with psutil. Load average is recorded: the machine is shared,
so the CPU seconds of the process tree (``getrusage``; ``cpu_s_per_core``: divided by the cores,
the wall time the work needs on an otherwise idle machine if both cores are kept busy) are
reported beside the wall time.

    nice -n 5 python -m benchmarks.plan_scale --n 1000000 --workdir /tmp/plan-bench-1m
    nice -n 5 python -m benchmarks.plan_scale --n 10000000 --workdir /tmp/plan-bench-10m
    python -m benchmarks.plan_scale --smoke   # 20,000 records, seconds, nothing written to results

Results go to ``benchmarks/results/plan_scale.json`` (one entry per N, merged).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.make_synthetic_atlas import (
    AA,
    AA_FREQ,
    accession_chars,
    default_length_sources,
    fasta_lengths,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "plan_scale.json"
MODEL = "esmfold"
BLOCK = 2_000  # duplicates copy a sequence of the same block of records
TARGETS = {"peak_rss_gb": 4.0, "total_s": 300.0}


def _real_headers(paths: Sequence[Path]) -> list[str]:
    """The part after the entry name of real UniProt headers (description OS= OX= GN=)."""
    out = []
    for p in paths:
        for line in p.read_text().splitlines():
            if line.startswith((">sp|", ">tr|")) and " " in line and " PE=" in line:
                rest = line.split(" ", 1)[1]
                out.append(rest[: rest.index(" PE=")])
    return out or ["Uncharacterized protein OS=Escherichia coli (strain K12) OX=83333"]


def generate(workdir: Path, n: int, seed: int = 11, dup_fraction: float = 0.10, x_fraction: float = 0.005,
             dup_accession_fraction: float = 0.0001) -> dict[str, Any]:
    """Write ``input.fasta`` and ``atlas/``; returns what was generated."""
    import pyarrow as pa

    from storage.atlas import Atlas
    from storage.layout import write_shard
    from storage.schema import ENTRIES_SCHEMA, STRUCTURES_SCHEMA

    t0 = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    sources = default_length_sources()
    pool = fasta_lengths(sources)
    headers = _real_headers(sources)
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    aa = np.repeat(np.frombuffer(AA.encode(), dtype=np.uint8),
                   np.round(np.array(AA_FREQ) / sum(AA_FREQ) * 1000).astype(int))
    atlas = Atlas(workdir / "atlas")
    atlas.init()
    now = datetime.now(UTC)
    entries: list[tuple[str, str, int]] = []
    structures: dict[str, str] = {}
    shard = [0]

    def flush(final: bool = False) -> None:
        if len(entries) < 100_000 and not (final and entries):
            return
        rows = {name: [None] * len(entries) for name in ENTRIES_SCHEMA.names}
        rows.update(entryId=[f"FA-{a}-F1" for a, _, _ in entries], accession=[a for a, _, _ in entries],
                    model=[MODEL] * len(entries), status=["predicted"] * len(entries),
                    sequence_sha256=[s for _, s, _ in entries], sequence_length=[n for _, _, n in entries],
                    uniprotAccession=[a for a, _, _ in entries], globalMetricValue=[80.0] * len(entries),
                    run_id=["bench"] * len(entries), created_at=[now] * len(entries))
        write_shard("entries", pa.table(rows, schema=ENTRIES_SCHEMA),
                    atlas.table_dir("entries") / f"bench-{shard[0]:05d}.parquet")
        srows = {name: [None] * len(structures) for name in STRUCTURES_SCHEMA.names}
        srows.update(sequence_sha256=list(structures), model=[MODEL] * len(structures),
                     sequence=list(structures.values()), sequence_length=[len(s) for s in structures.values()],
                     mean_plddt=[80.0] * len(structures), global_metric_value=[80.0] * len(structures),
                     ptm=[0.7] * len(structures), tier=["confident"] * len(structures),
                     published=[True] * len(structures), run_id=["bench"] * len(structures),
                     created_at=[now] * len(structures))
        write_shard("structures", pa.table(srows, schema=STRUCTURES_SCHEMA),
                    atlas.table_dir("structures") / f"bench-{shard[0]:05d}.parquet")
        shard[0] += 1
        entries.clear()
        structures.clear()

    stats = {"records": 0, "duplicate_sequences": 0, "duplicate_accessions": 0, "with_x": 0, "residues": 0,
             "in_atlas": 0}
    accessions = accession_chars(np.arange(n, dtype=np.int64))
    with open(workdir / "input.fasta", "wb") as fh:
        for b0 in range(0, n, BLOCK):
            m = min(BLOCK, n - b0)
            n_dup = round(m * dup_fraction)
            lengths = rng.choice(pool, m - n_dup)
            data = aa[rng.integers(0, len(aa), int(lengths.sum()))]
            offs = np.concatenate([[0], np.cumsum(lengths)])
            seqs = [data[offs[i]:offs[i + 1]].tobytes() for i in range(len(lengths))]
            for i in np.flatnonzero(rng.random(len(seqs)) < x_fraction):
                s = bytearray(seqs[i])
                s[len(s) // 2] = ord("X")
                seqs[i] = bytes(s)
                stats["with_x"] += 1
            seqs += [seqs[j] for j in rng.integers(0, len(seqs), n_dup)]
            order = rng.permutation(m)
            in_atlas = rng.random(m) < 0.5
            out = []
            for k, idx in enumerate(order):
                seq = seqs[idx]
                r = b0 + k
                acc = accessions[r].tobytes().decode()
                if r > 0 and pyrng.random() < dup_accession_fraction:
                    acc = accessions[pyrng.randrange(r)].tobytes().decode()
                    stats["duplicate_accessions"] += 1
                db = "sp" if r % 20 == 0 else "tr"
                out.append(f">{db}|{acc}|{acc}_SYNTH {headers[r % len(headers)]} PE=4 SV=1\n".encode())
                out.append(b"\n".join([seq[i:i + 60] for i in range(0, len(seq), 60)]) + b"\n")
                if in_atlas[k]:
                    sha = hashlib.sha256(seq).hexdigest()
                    entries.append((acc, sha, len(seq)))
                    structures[sha] = seq.decode()
                    stats["in_atlas"] += 1
            fh.write(b"".join(out))
            stats["records"] += m
            stats["duplicate_sequences"] += n_dup
            stats["residues"] += int(lengths.sum()) + sum(len(seqs[j]) for j in range(len(lengths), len(seqs)))
            flush()
    flush(final=True)
    return {**stats, "fasta_bytes": (workdir / "input.fasta").stat().st_size, "seed": seed,
            "length_pool": {"sequences": len(pool), "mean": float(pool.mean()), "median": float(np.median(pool)),
                            "sources": [p.name for p in sources]},
            "atlas_bytes": sum(f.stat().st_size for f in (workdir / "atlas").rglob("*.parquet")),
            "generate_s": time.perf_counter() - t0}


def plan_once(workdir: Path) -> dict[str, Any]:
    """The planning path (run in a fresh process by :func:`measure`)."""
    import resource

    from pipeline.config import RunConfig
    from pipeline.plan import plan_run
    from pipeline.spill import ingest_to_parquet
    from pipeline.write import WriteContext, entry_rows_for_links
    from storage.atlas import Atlas
    from storage.layout import write_shard

    def cpu() -> float:  # this process and its joined workers (scan and payload pools)
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    cfg = RunConfig()
    scratch = workdir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    atlas = Atlas(workdir / "atlas")
    t0, c0 = time.perf_counter(), cpu()
    spill = ingest_to_parquet([str(workdir / "input.fasta")], cfg.ingest, scratch / "ingest",
                              workers=cfg.plan.ingest_workers, memory_limit=cfg.plan.memory_limit)
    t1, c1 = time.perf_counter(), cpu()
    plan = plan_run(spill, atlas, MODEL, cfg.plan, scratch / "plan", reuse_models=cfg.plan.reuse_models,
                    long_above=cfg.long_sequences.chunked_above, memory_limit=cfg.plan.memory_limit)
    t2, c2 = time.perf_counter(), cpu()
    ctx = WriteContext(staging=str(scratch / "staging"), atlas=atlas.uri, run_id="bench", policy=cfg.confidence,
                       provenance={})
    links = 0
    for model, records, structures, msa in plan.iter_entry_batches("link"):
        table = entry_rows_for_links(records, structures, model, ctx, msa)
        write_shard("entries", table, scratch / "staging" / f"link-{links}.parquet")
        links += len(records)
    t3, c3 = time.perf_counter(), cpu()
    return {
        "ingest_s": t1 - t0, "plan_s": t2 - t1, "total_s": t2 - t0, "link_entries_s": t3 - t2,
        "cpu_ingest_s": c1 - c0, "cpu_plan_s": c2 - c1, "cpu_link_entries_s": c3 - c2,
        "counts": {"read": spill.n_read, "accepted": spill.accepted, "rejected_by_reason": spill.rejected_by_reason,
                   "already_in_atlas": plan.already_done, "linked": plan.linked, "reused": plan.reused,
                   "new_rejects": plan.new_rejects, "units": plan.units, "sequences_to_predict": plan.sequences_to_predict,
                   "residues_to_predict": plan.residues_to_predict, "link_rows_written": links},
        "scratch_bytes": sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()),
    }


def measure(workdir: Path) -> dict[str, Any]:
    """Run :func:`plan_once` in a fresh process; sample the RSS of its process tree."""
    import psutil

    out_file = workdir / "plan_once.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    import resource

    load_before = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.plan_scale", "--plan-once", str(workdir)],
                            cwd=ROOT, env=env)
    peak = [0, 0]  # tree, driver
    stop = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not stop.wait(0.2):
            try:
                tree = [p, *p.children(recursive=True)]
                rss = []
                for q in tree:
                    try:
                        rss.append(q.memory_info().rss)
                    except psutil.Error:
                        rss.append(0)
                peak[0] = max(peak[0], sum(rss))
                peak[1] = max(peak[1], rss[0])
            except psutil.Error:
                return

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if rc != 0:
        raise SystemExit(f"planning process failed with exit code {rc}")
    result = json.loads(out_file.read_text())
    return {**result, "process_wall_s": wall, "cpu_s": cpu, "cpu_s_per_core": cpu / (os.cpu_count() or 1), "peak_rss_bytes": peak[0], "peak_rss_gb": round(peak[0] / 2**30, 3),
            "peak_rss_driver_bytes": peak[1], "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/foldatlas-plan-bench"))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--smoke", action="store_true", help="20,000 records; writes --out only when given")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--reuse-input", action="store_true",
                    help="measure on the files a previous --keep (or generate()) left in --workdir; keeps them")
    ap.add_argument("--plan-once", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.plan_once:
        res = plan_once(args.plan_once)
        (args.plan_once / "plan_once.json").write_text(json.dumps(res))
        return res
    n = 20_000 if args.smoke else args.n
    saved = args.workdir / "generated.json"
    if args.reuse_input and saved.exists():
        generated = json.loads(saved.read_text())
        n = generated["records"]
    else:
        generated = generate(args.workdir, n, args.seed)
        saved.write_text(json.dumps(generated))
    measured = measure(args.workdir)
    entry = {"n": n, "generated": generated, "measured": measured, "targets": TARGETS,
             "met": {"peak_rss": measured["peak_rss_gb"] <= TARGETS["peak_rss_gb"],
                     "time": measured["total_s"] <= TARGETS["total_s"]},
             "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
             "date": datetime.now(UTC).date().isoformat(),
             "command": f"python -m benchmarks.plan_scale --n {n} --workdir {args.workdir}"}
    print(json.dumps(entry, indent=1))
    if not args.smoke or "--out" in (argv or sys.argv):
        results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
        results["runs"][str(n)] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if not args.keep and not args.reuse_input:  # files a run was asked to reuse stay for the next one
        shutil.rmtree(args.workdir, ignore_errors=True)
    return entry


if __name__ == "__main__":
    main()
