"""Query speed of the atlas: point lookups, a full-table aggregate and ``get``, two layouts side by side.

Reads a synthetic atlas made by :mod:`benchmarks.make_synthetic_atlas` (made first if ``--data``
has none) and measures, in one warm process, for

* ``layout``: the chosen layout (:mod:`storage.layout`) at full size, and
* ``naive``: today's per-work-unit shards (unsorted, no bloom filters, 10k-row groups) for a subset
  of the entries, measured at two file counts (all naive files and the first half, as explicit file
  lists) so the per-file cost can be fitted (``a + b * files``) and extrapolated to the file count
  the full atlas would have written (``entries / unit_size`` per table);

with the views FoldAtlas itself defines (``storage.query.connect``: plain ``read_parquet`` of the
table glob), DuckDB defaults (one connection, warm: one warm-up query before timing):

``lookup_accession``        ``SELECT * FROM entries WHERE accession = ?``
``lookup_structure_sha``    ``SELECT * FROM structures WHERE sequence_sha256 = ? AND model = ?``
``lookup_entries_sha``      ``SELECT * FROM entries WHERE sequence_sha256 = ?`` (bloom filter only)
``lookup_projected``        the accession lookup selecting 6 columns instead of ``*``
``*_metadata_cache``        the accession and structure lookups again after ``SET parquet_metadata_cache = true``
``get_warm``                accession lookup + structure lookup + one byte-range read of the mmCIF
                            member from its real tar shard + gunzip, on the warm connection
``get_fetch_entry``         ``storage.entry.fetch_entry(atlas, accession).mmcif()`` as ``foldatlas get``
                            runs it: a new DuckDB connection per call (cold metadata)
``aggregate_histogram``     pLDDT histogram (10-point bins of ``globalMetricValue``) by ``taxId`` over the
                            whole ``entries`` table

Medians over ``--keys`` random sampled keys (``--naive-keys`` for the naive layout, whose lookups
are slow), aggregate median of 3. Writes JSON (``--out``).

    nice -n 10 python -m benchmarks.query_speed --data /tmp/foldatlas-qbench --out benchmarks/results/query_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TARGETS_MS = {"lookup_accession": 50.0, "lookup_structure_sha": 50.0, "get_warm": 100.0,
              "aggregate_histogram": 2000.0}
HISTOGRAM_SQL = ("SELECT taxId, CAST(floor(globalMetricValue / 10) AS INTEGER) * 10 AS plddt_bin, count(*) AS n "
                 "FROM entries WHERE status = 'predicted' GROUP BY ALL")
LOOKUPS = {
    "lookup_accession": ("SELECT * FROM entries WHERE accession = ?", "acc"),
    "lookup_structure_sha": ("SELECT * FROM structures WHERE sequence_sha256 = ? AND model = 'esmfold'", "sha"),
    "lookup_entries_sha": ("SELECT * FROM entries WHERE sequence_sha256 = ?", "sha"),
    "lookup_projected": ("SELECT accession, sequence_sha256, model, mean_plddt, ptm, taxId FROM entries "
                         "WHERE accession = ?", "acc"),
}


def _ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(values), 2), "min_ms": round(min(values), 2),
            "max_ms": round(max(values), 2), "n": len(values)}


def _params(kind: str, acc: str, sha: str) -> list[str]:
    return {"acc": [acc], "sha": [sha]}[kind]


def _connect(root: Path, files: dict[str, list[str]] | None = None) -> Any:
    """The views FoldAtlas defines, or (``files``) views over explicit file lists."""
    import duckdb

    from storage.query import connect

    if files is None:
        return connect(root)
    con = duckdb.connect()
    for table, paths in files.items():
        lst = "[" + ", ".join(f"'{p}'" for p in paths) + "]"
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({lst}, union_by_name = true)")
    return con


def _time_lookups(con: Any, sql: str, kind: str, keys: list[tuple[str, str]]) -> dict[str, Any]:
    con.execute(sql, _params(kind, *keys[0])).fetchall()  # warm-up
    times, found = [], 0
    for acc, sha in keys:
        t1 = time.perf_counter()
        found += len(con.execute(sql, _params(kind, acc, sha)).fetchall())
        times.append((time.perf_counter() - t1) * 1000)
    return {**_stats(times), "rows_found": found}


def measure_layout(root: Path, keys: list[tuple[str, str]], *, files: dict[str, list[str]] | None = None,
                   fetch_entry_calls: bool = True, aggregate_runs: int = 3) -> dict[str, Any]:
    from storage.entry import fetch_entry
    from storage.mmcif_shard import read_shard_member

    con = _connect(root, files)
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        out["files"] = {t: len(files[t]) if files else len(list((root / t).glob("*.parquet")))
                        for t in ("entries", "structures")}
        out["rows"] = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("entries", "structures")}
        out["count_s"] = round(time.perf_counter() - t0, 3)
        acc0 = keys[0][0]
        for name, (sql, kind) in LOOKUPS.items():
            out[name] = _time_lookups(con, sql, kind, keys)
        con.execute("SET parquet_metadata_cache = true")
        for name in ("lookup_accession", "lookup_structure_sha"):
            out[f"{name}_metadata_cache"] = _time_lookups(con, *LOOKUPS[name], keys)
        con.execute("SET parquet_metadata_cache = false")

        def get_warm(acc: str) -> int:
            entry = con.execute("SELECT sequence_sha256, model FROM entries WHERE accession = ?", [acc]).fetchone()
            s = con.execute("SELECT mmcif_shard, mmcif_offset, mmcif_size FROM structures "
                            "WHERE sequence_sha256 = ? AND model = ?", [entry[0], entry[1]]).fetchone()
            return len(read_shard_member(root / s[0], int(s[1]), int(s[2])))

        get_warm(acc0)
        times, sizes = [], []
        for acc, _ in keys:
            t1 = time.perf_counter()
            sizes.append(get_warm(acc))
            times.append((time.perf_counter() - t1) * 1000)
        out["get_warm"] = {**_stats(times), "mmcif_bytes_median": int(statistics.median(sizes))}
        if fetch_entry_calls and files is None:
            fetch_entry(root, acc0).mmcif()
            times = [_ms(lambda a=acc: fetch_entry(root, a).mmcif()) for acc, _ in keys]  # type: ignore[misc]
            out["get_fetch_entry"] = _stats(times)
        con.execute(HISTOGRAM_SQL).fetchall()
        times = [_ms(lambda: con.execute(HISTOGRAM_SQL).fetchall()) for _ in range(aggregate_runs)]
        out["aggregate_histogram"] = {**_stats(times), "groups": len(con.execute(HISTOGRAM_SQL).fetchall())}
    finally:
        con.close()
    return out


def measure_compaction(naive: Path, keys: list[tuple[str, str]], target_rows: int) -> dict[str, Any]:
    """``storage.layout.compact`` on a hard-linked copy of the naive atlas, then its lookups."""
    import shutil
    import subprocess

    from storage.layout import compact

    work = naive.parent / "naive-compacted"
    if work.exists():
        shutil.rmtree(work)
    subprocess.run(["cp", "-al", str(naive), str(work)], check=True)  # compaction never edits files
    try:
        t0 = time.perf_counter()
        report = compact(work, tables=("entries", "structures"), target_rows=target_rows, grace_s=0)
        seconds = time.perf_counter() - t0
        after = measure_layout(work, keys, fetch_entry_calls=False, aggregate_runs=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": round(seconds, 2),
            "tables": [{"table": t.table, "files_merged": t.files_merged, "rows": t.rows_merged,
                        "files_after": t.files_after, "seconds": round(t.seconds, 2)} for t in report.tables],
            "after": after}


def _failed_accessions(root: Path, accessions: list[str]) -> set[str]:
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(f"SELECT accession FROM read_parquet('{root}/entries/*.parquet') "
                           "WHERE accession IN (SELECT unnest(?)) AND status <> 'predicted'", [accessions]).fetchall()
    finally:
        con.close()
    return {a for (a,) in rows}


def _fit(points: list[tuple[int, float]], at: int) -> dict[str, float]:
    """Least-squares line through (files, ms) points, evaluated at ``at`` files."""
    (x1, y1), (x2, y2) = points
    b = (y2 - y1) / (x2 - x1) if x2 != x1 else 0.0
    a = y1 - b * x1
    return {"fixed_ms": round(a, 2), "per_file_ms": round(b, 4), "extrapolated_ms": round(a + b * at, 1)}


def run(data: Path, n_keys: int, naive_keys: int) -> dict[str, Any]:
    import duckdb
    import pyarrow

    gen = json.loads((data / "generated.json").read_text())
    keys_all = json.loads((data / "keys.json").read_text())
    failed = _failed_accessions(data / "layout", keys_all["accessions"])
    pairs = [(a, s) for a, s in zip(keys_all["accessions"], keys_all["sequence_sha256"], strict=True)
             if a not in failed]  # failed entries have no structure to get
    res: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "duckdb": duckdb.__version__, "pyarrow": pyarrow.__version__, "loadavg_before": os.getloadavg()},
        "data": gen,
        "settings": {"keys": min(n_keys, len(pairs)), "naive_keys": min(naive_keys, len(pairs)),
                     "duckdb": "defaults (threads = cores, no parquet_metadata_cache), one warm connection"},
    }
    t0 = time.perf_counter()
    res["layout"] = measure_layout(data / "layout", pairs[:n_keys])
    naive = data / "naive"
    all_files = {t: sorted(str(p) for p in (naive / t).glob("*.parquet")) for t in ("entries", "structures")}
    half = {t: v[: max(2, len(v) // 2)] for t, v in all_files.items()}
    half_set = {Path(p).name for p in half["entries"]}
    # keys of the half set: sampled entries whose unit shard is in the first half of the files
    res["naive"] = measure_layout(naive, pairs[:naive_keys])
    half_keys = [(a, s) for a, s, unit in zip(keys_all["accessions"], keys_all["sequence_sha256"],
                                               keys_all["unit_ids"], strict=True)
                 if f"{unit}.parquet" in half_set and a not in failed][:naive_keys] or pairs[:1]
    res["naive_half"] = measure_layout(naive, half_keys, files=half, fetch_entry_calls=False, aggregate_runs=1)
    full_files = gen["entries"] // gen["unit_size"]
    n_all, n_half = res["naive"]["files"]["entries"], res["naive_half"]["files"]["entries"]
    extrap: dict[str, Any] = {"files_per_table": full_files}
    for q in ("lookup_accession", "lookup_structure_sha", "lookup_entries_sha", "lookup_projected", "get_warm"):
        extrap[q] = _fit([(n_half, res["naive_half"][q]["median_ms"]), (n_all, res["naive"][q]["median_ms"])],
                         full_files)
    agg = _fit([(n_half, res["naive_half"]["aggregate_histogram"]["median_ms"]),
                (n_all, res["naive"]["aggregate_histogram"]["median_ms"])], full_files)
    # the aggregate also scales with rows: use the per-row rate of the full naive set as a floor
    per_row = res["naive"]["aggregate_histogram"]["median_ms"] / max(1, res["naive"]["rows"]["entries"])
    agg["rows_floor_ms"] = round(per_row * gen["entries"], 1)
    extrap["aggregate_histogram"] = agg
    res["naive_extrapolated_to_full_size"] = extrap
    res["compaction_of_naive"] = measure_compaction(naive, pairs[:naive_keys], gen["target_rows"])
    res["targets"] = {q: {"target_ms": t, "layout_ms": res["layout"][q]["median_ms"],
                          "met": res["layout"][q]["median_ms"] <= t} for q, t in TARGETS_MS.items()}
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    res["machine"]["loadavg_after"] = os.getloadavg()
    res["complete"] = True
    return res


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/foldatlas-qbench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "query_speed.json")
    ap.add_argument("--keys", type=int, default=50)
    ap.add_argument("--naive-keys", type=int, default=10)
    ap.add_argument("--entries", type=int, default=10_000_000, help="when generating")
    ap.add_argument("--naive-entries", type=int, default=200_000, help="when generating")
    ap.add_argument("--target-rows", type=int, default=1_000_000, help="when generating")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI): 4,000 entries, 8 keys")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.smoke:
        args.entries, args.naive_entries, args.target_rows, args.keys, args.naive_keys = 4000, 1000, 1500, 8, 4
    if not (args.data / "generated.json").exists():
        from benchmarks.make_synthetic_atlas import generate

        generate(args.data, args.entries, args.naive_entries, target_rows=args.target_rows,
                 sample=max(args.keys, args.naive_keys), plddt=args.smoke)
    res = run(args.data, args.keys, args.naive_keys)
    res["settings"]["mode"] = "smoke" if args.smoke else "full"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"layout": res["layout"], "naive_extrapolated": res["naive_extrapolated_to_full_size"],
                      "targets": res["targets"]}, indent=1))
    return res


if __name__ == "__main__":
    main()
