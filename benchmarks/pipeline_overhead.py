"""Pipeline overhead: the whole Ray pipeline against the same stages in a plain loop, same run.

What it runs
------------
* **Workload**: ``--n`` (2,000) proteins from ``--fasta`` (default: the E. coli K-12 reference
  proteome UP000000625, ``../shared/data/uniprot/UP000000625_83333.fasta``), by default the
  ``--n`` shortest of at least 16 residues, the ingest policy's minimum (``--pick shortest``;
  on UP000000625: 16-252 residues, mean 148, 295,455 in all), or ``--pick random`` with
  ``--seed``. Short proteins make the fixed per-unit and per-sequence costs of the pipeline weigh
  the most against the model time, so the ratio measured on them bounds the one on longer
  proteins from above. Records are copied verbatim to a work FASTA.
* **Model**: the tiny random-weight ESMFold (``--model esmfold-tiny``), on the CPU.
* **(a) pipeline**: ``pipeline.runner.run`` with the embedded defaults (one fold actor using all
  cores, one write actor, a local Ray started by the run itself, progress off), into a fresh
  atlas: ingest, plan, Ray Data fold -> write, publish, summary and report.
* **(b) loop**: the same stage functions called one after the other in this process, into
  another fresh atlas: ``ingest_to_parquet`` and ``plan_run`` (the streamed ingest and plan, one
  process: ``workers=1``), then for each work unit of ``plan.iter_units()``
  ``Folder.fold`` -> ``write_unit`` -> ``Atlas.publish_unit``; torch uses all cores; no Ray, no
  summary or report (those count as pipeline overhead).
* Both modes get the same config file; runs alternate ``loop, pipeline`` ``--repeats`` times so
  machine drift hits both. The two atlases are compared: the same entries and structures (same
  sequence hashes), and the same mean pLDDT per structure (the tiny model is deterministic per
  sequence and batch composition is the same).

Output (JSON, ``--out``): wall seconds per mode and repeat, the overhead ratio (a)/(b) per
repeat and of the medians, sequences per hour, and the machine.

Run
---
    . .venv/bin/activate
    nice -n 5 python -m benchmarks.pipeline_overhead --out benchmarks/results/pipeline_overhead.json
    # quick check (< 2 minutes)
    python -m benchmarks.pipeline_overhead --n 60 --repeats 1 --out /tmp/overhead_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FASTA = ROOT.parent / "shared" / "data" / "uniprot" / "UP000000625_83333.fasta"
OUT = ROOT / "benchmarks" / "results" / "pipeline_overhead.json"


def pick_records(fasta: Path, n: int, how: str, seed: int, min_length: int = 16) -> list[str]:
    """``n`` FASTA records (header + lines, verbatim) of ``fasta`` of at least ``min_length``
    residues (the ingest policy's default minimum): the shortest, or a seeded sample."""
    records: list[tuple[int, int, str]] = []  # (length, source order, text)
    text: list[str] = []
    length = 0
    for line in fasta.read_text().splitlines(keepends=True):
        if line.startswith(">"):
            if text:
                records.append((length, len(records), "".join(text)))
            text, length = [line], 0
        else:
            text.append(line)
            length += len(line.strip())
    if text:
        records.append((length, len(records), "".join(text)))
    records = [r for r in records if r[0] >= min_length]
    if how == "shortest":
        chosen = sorted(records)[:n]
    else:
        chosen = random.Random(seed).sample(records, min(n, len(records)))
    return [t for _, _, t in sorted(chosen, key=lambda r: r[1])]


def run_loop(inputs: list[str], atlas_root: Path, cfg: Any) -> dict[str, Any]:
    """The stages in a plain loop: ingest, plan, then fold -> write -> publish per unit."""
    import torch

    from model.esmfold import load_backend
    from pipeline.fold import Folder, FoldSettings
    from pipeline.plan import plan_run
    from pipeline.runner import _model_settings, new_run_id
    from pipeline.spill import ingest_to_parquet
    from pipeline.write import WriteContext, write_unit
    from storage.atlas import Atlas

    torch.set_num_threads(os.cpu_count() or 1)
    atlas = Atlas(atlas_root)
    run_id = new_run_id()
    counts = {"units": 0, "predicted": 0, "failed": 0}
    with atlas.locked():
        atlas.init()
        scratch = atlas.staging_dir(run_id) / "_plan"  # as the runner's; removed with staging
        spill = ingest_to_parquet(inputs, cfg.ingest, scratch / "ingest", workers=1,
                                  memory_limit=cfg.plan.memory_limit)
        plan = plan_run(spill, atlas, cfg.model.name, cfg.plan, scratch / "plan", workers=1,
                        memory_limit=cfg.plan.memory_limit)
        staging = atlas.staging_dir(run_id)
        staging.mkdir(parents=True, exist_ok=True)
        ctx = WriteContext(staging=str(staging), atlas=atlas.uri, run_id=run_id, policy=cfg.confidence,
                           provenance={"run_id": run_id, "model": cfg.model.name},
                           is_reference_proteome=cfg.is_reference_proteome, msa=None)
        backend = load_backend(_model_settings(cfg))
        folder = Folder(backend, FoldSettings(cfg.plan.max_tokens_per_batch, cfg.plan.max_batch_size))
        for unit in plan.iter_units():
            folder.batch_sizes.clear()
            outcomes = folder.fold(list(unit.sequences))
            manifest = write_unit(unit, outcomes, backend.info, dict(folder.batch_sizes), ctx)
            atlas.publish_unit(run_id, manifest.unit_id, atlas.upload_staged(run_id, manifest.staged),
                               manifest.counts)
            counts["units"] += 1
            counts["predicted"] += manifest.counts["structures"]
            counts["failed"] += manifest.counts["failures"]
        atlas.clean_staging()
    return counts


def run_pipeline(inputs: list[str], atlas_root: Path, cfg: Any) -> dict[str, Any]:
    from pipeline.runner import run

    s = run(inputs, atlas_root, cfg, progress=False)
    return {"units": s.units_published, "predicted": s.predicted, "failed": s.failed}


def atlas_digest(atlas_root: Path) -> dict[str, Any]:
    """What must agree between the two modes: entry accessions, structure hashes, mean pLDDT per structure."""
    import duckdb

    con = duckdb.connect()
    entries = sorted(a for (a,) in con.execute(
        f"SELECT accession FROM read_parquet('{atlas_root}/entries/*.parquet')").fetchall())
    plddt = dict(con.execute(
        f"SELECT sequence_sha256, mean_plddt FROM read_parquet('{atlas_root}/structures/*.parquet')").fetchall())
    return {"entries": entries, "plddt": plddt}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    same_structures = set(a["plddt"]) == set(b["plddt"])
    diffs = [abs(a["plddt"][k] - b["plddt"][k]) for k in a["plddt"] if k in b["plddt"]]
    return {"same_entries": a["entries"] == b["entries"], "same_structures": same_structures,
            "entries": len(a["entries"]), "structures": len(a["plddt"]),
            "max_mean_plddt_difference": max(diffs) if diffs else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--pick", choices=("shortest", "random"), default="shortest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="loop/pipeline pairs, alternating")
    parser.add_argument("--config", type=Path, default=None, help="run config TOML (default: tiny model, defaults)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from pipeline.config import RunConfig, load_config

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cfg = load_config(args.config) if args.config else RunConfig.model_validate({"model": {"name": "esmfold-tiny"}})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="foldatlas-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "input.fasta"
    records = pick_records(args.fasta, args.n, args.pick, args.seed)
    fasta.write_text("".join(records))
    residues = sum(len(line.strip()) for r in records for line in r.splitlines()[1:])
    print(f"{len(records)} proteins, {residues} residues -> {fasta}", flush=True)

    times: dict[str, list[float]] = {"loop": [], "pipeline": []}
    counts: dict[str, Any] = {}
    agreement = None
    for rep in range(args.repeats):
        digests = {}
        for mode, fn in (("loop", run_loop), ("pipeline", run_pipeline)):
            atlas = work / f"atlas-{mode}-{rep}"
            shutil.rmtree(atlas, ignore_errors=True)
            t0 = time.perf_counter()
            counts[mode] = fn([str(fasta)], atlas, cfg)
            times[mode].append(time.perf_counter() - t0)
            print(f"repeat {rep + 1} {mode}: {times[mode][-1]:.1f} s {counts[mode]}", flush=True)
            digests[mode] = atlas_digest(atlas)
        agreement = compare(digests["loop"], digests["pipeline"])
        for mode in times:
            shutil.rmtree(work / f"atlas-{mode}-{rep}", ignore_errors=True)
    ratios = [p / lo for p, lo in zip(times["pipeline"], times["loop"], strict=True)]
    med = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "benchmark": "pipeline_overhead", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.pipeline_overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workload": {"fasta": str(args.fasta), "pick": args.pick, "n": len(records), "residues": residues,
                     "seed": args.seed},
        "seconds": times, "median_seconds": med, "ratio_per_repeat": ratios,
        "overhead_ratio": med["pipeline"] / med["loop"], "target_ratio": 1.3,
        "sequences_per_hour": {m: len(records) * 3600 / v for m, v in med.items()},
        "counts": counts, "agreement": agreement,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"overhead ratio (pipeline / loop): {result['overhead_ratio']:.3f}  per repeat: "
          + ", ".join(f"{r:.3f}" for r in ratios))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
