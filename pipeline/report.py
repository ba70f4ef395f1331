"""The run report: one self-contained HTML page per run, saved as ``_runs/<run_id>/report.html``.

It shows the run's counts per state, each stage's throughput and utilisation, and four plots
(PNG, embedded): sequences finished per stage over time with the queue in front of each stage,
the mean-pLDDT histogram, sequence length against model time per protein, and failures by reason.
Everything comes from the run's ``summary.json`` and its rows in the ``structures`` and ``failures``
tables, so ``foldatlas report`` can rebuild it for any past run.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from typing import Any

from pipeline.errors import AtlasError
from pipeline.progress import STAGE_ORDER
from storage.atlas import Atlas


def _stage_rank(name: str) -> int:
    return STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figures(summary: dict[str, Any], structures: list[dict[str, Any]], failures: Counter[str]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.summary import plddt_histogram_png

    out = {}
    timeline = summary.get("timeline") or []
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    if timeline:
        t = [p["t"] for p in timeline]
        for stage in (s for s in STAGE_ORDER if s in timeline[0]["done"]):
            ax1.plot(t, [p["done"][stage] for p in timeline], label=stage)
            ax2.plot(t, [p["queue"][stage] for p in timeline], label=stage)
        ax1.legend(fontsize=8)
    ax1.set_ylabel("sequences finished")
    ax1.set_title("Throughput over time (per stage)", fontsize=10)
    ax2.set_ylabel("queued before stage")
    ax2.set_xlabel("seconds since the stream started")
    out["throughput"] = _png(fig)

    title = f"{summary.get('model')}: {len(structures)} new structures"
    out["plddt"] = "data:image/png;base64," + base64.b64encode(
        plddt_histogram_png([s["mean_plddt"] for s in structures if s["mean_plddt"] is not None], title)).decode()

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.scatter([s["sequence_length"] for s in structures], [s["model_seconds"] or 0 for s in structures], s=8)
    ax.set_xlabel("sequence length (residues)")
    ax.set_ylabel("model seconds")
    ax.set_title("Length against model time per protein", fontsize=10)
    out["length_time"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    if failures:
        reasons = sorted(failures, key=lambda r: -failures[r])
        ax.barh(reasons, [failures[r] for r in reasons], color="#c0392b")
    else:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("failure rows")
    ax.set_title("Failures by reason", fontsize=10)
    out["failures"] = _png(fig)
    return out


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def render_report(summary: dict[str, Any], structures: list[dict[str, Any]], failures: Counter[str]) -> str:
    """The HTML page for one run."""
    figs = _figures(summary, structures, failures)
    counts = [(k, summary.get(k)) for k in ("read", "accepted", "rejected", "already_in_atlas", "linked",
                                              "predicted", "failed", "entries_written", "structures_published",
                                              "msa_searched", "msa_cached", "units_published", "units_planned",
                                              "sequences_per_hour", "residues_per_second", "fold_wall_seconds",
                                              "total_seconds")]
    stage_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            name, st.get("actors"), st.get("units"), st.get("sequences"), round(st.get("busy_seconds", 0.0), 1),
            st.get("sequences_per_hour_wall"), st.get("sequences_per_busy_hour"), st.get("utilisation"))) + "</tr>"
        for name, st in sorted((summary.get("stages") or {}).items(), key=lambda kv: _stage_rank(kv[0])))
    untrained = ("<p class='warn'>UNTRAINED model (random weights): these structures are not predictions "
                 "of anything.</p>" if summary.get("model_trained") is False else "")
    plots = "".join(f"<figure><img alt='{k}' src='{v}'></figure>" for k, v in figs.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FoldAtlas run {html.escape(summary['run_id'])}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} .warn{{color:#b00;font-weight:bold}}
figure{{margin:1em 0}}</style></head><body>
<h1>Run {html.escape(summary['run_id'])}</h1>
<p>Atlas {html.escape(str(summary.get('atlas')))}, model {html.escape(str(summary.get('model')))}</p>{untrained}
<h2>Counts</h2>{_table(counts)}
<h2>Stages</h2><table><tr><th>stage</th><th>actors</th><th>units</th><th>sequences</th><th>busy s</th>
<th>sequences/h (wall)</th><th>sequences/h (busy)</th><th>utilisation</th></tr>{stage_rows}</table>
<h2>Plots</h2>{plots}
<h2>Failures by reason</h2>{_table(sorted(failures.items()))}
</body></html>
"""


def latest_run(atlas: Atlas) -> str:
    runs = sorted({e.path.split("/")[1] for e in atlas.store.list("_runs", suffix="summary.json")})
    if not runs:
        raise AtlasError(f"{atlas.uri} has no finished run", hint="Runs write _runs/<run_id>/summary.json at the end.")
    return runs[-1]


def build_report(atlas: Atlas, run_id: str, summary: dict[str, Any] | None = None) -> str:
    """The report of ``run_id`` from its summary and its rows in the atlas."""
    if summary is None:
        try:
            summary = json.loads(atlas.store.read_text(f"_runs/{run_id}/summary.json"))
        except FileNotFoundError as e:
            raise AtlasError(f"{atlas.uri}: run {run_id} has no summary.json",
                             hint="List runs with: foldatlas query ATLAS \"SELECT DISTINCT run_id FROM entries\"") from e
    con = atlas.duckdb()
    try:
        structures = con.sql(
            f"SELECT sequence_length, model_seconds, mean_plddt FROM read_parquet('{atlas.glob('structures')}', "
            "union_by_name=true) WHERE run_id = ?", params=[run_id]).to_arrow_table().to_pylist()
        failures = Counter(dict(con.execute(
            f"SELECT reason, count(*) FROM read_parquet('{atlas.glob('failures')}', union_by_name=true) "
            "WHERE run_id = ? GROUP BY 1", [run_id]).fetchall()))
    finally:
        con.close()
    return render_report(summary, structures, failures)
