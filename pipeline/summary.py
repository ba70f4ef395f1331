"""Run summary: counts per state, throughput, pLDDT histogram; saved in the atlas and printed."""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunSummary:
    run_id: str
    atlas: str
    model: str
    model_trained: bool | None = None
    inputs: list[str] = field(default_factory=list)
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    new_rejects: int = 0
    already_in_atlas: int = 0  # accepted records whose entry existed before this run
    linked: int = 0  # entries pointing to predictions made earlier
    fragments: int = 0  # fragment records F1..Fn made from long sequences (ingest.fragment_above)
    sequences_planned: int = 0
    units_planned: int = 0
    units_published: int = 0
    units_long: int = 0  # units folded in the long-sequence pool (long_sequences.chunked_above)
    oom_rerouted: int = 0  # sequences that ran out of memory in their pool and were re-routed (pipeline.oom_route)
    oom_routes: dict[str, int] = field(default_factory=dict)  # where they ended: chunked | fragments | failed
    oom_fragments: int = 0  # fragment records made from sequences that ran out of memory whole
    predicted: int = 0  # new structures
    failed: int = 0  # new failure rows
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    entries_written: int = 0
    structures_published: int = 0  # structures whose mmCIF went into a shard (policy)
    msa_searched: int = 0  # queries sent to the MSA search tool in this run
    msa_cached: int = 0  # sequences of this run's units whose MSA came from the atlas cache
    msa_failed: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    residues_predicted: int = 0
    fold_wall_seconds: float = 0.0
    model_seconds: float = 0.0
    total_seconds: float = 0.0
    mean_plddts: list[float] = field(default_factory=list)
    # per stage (msa, fold, write, publish): units, sequences, busy seconds, throughput, utilisation
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    # samples over the run: t (s since the stream started), cumulative sequences and queue per stage
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sequences_per_hour(self) -> float:
        return 3600 * self.predicted / self.fold_wall_seconds if self.fold_wall_seconds else 0.0

    @property
    def residues_per_second(self) -> float:
        return self.residues_predicted / self.fold_wall_seconds if self.fold_wall_seconds else 0.0

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        d.pop("mean_plddts")
        d["sequences_per_hour"] = round(self.sequences_per_hour, 1)
        d["residues_per_second"] = round(self.residues_per_second, 1)
        d["plddt_histogram"] = plddt_histogram_counts(self.mean_plddts)
        return json.dumps(d, indent=2, sort_keys=True)


BIN_EDGES = list(range(0, 101, 5))


def plddt_histogram_counts(values: list[float]) -> dict[str, int]:
    import numpy as np

    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=BIN_EDGES)
    return {f"{lo}-{lo + 5}": int(c) for lo, c in zip(BIN_EDGES[:-1], counts, strict=True)}


def plddt_histogram_png(values: list[float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    colors = {50: "#ff7d45", 70: "#ffdb13", 90: "#65cbf3", 101: "#0053d6"}  # AFDB band colours
    for lo, hi in itertools.pairwise(BIN_EDGES):
        n = sum(1 for v in values if lo <= v < hi or (hi == 100 and v == 100))
        color = next(c for edge, c in colors.items() if lo < edge)
        ax.bar(lo, n, width=5, align="edge", color=color, edgecolor="white")
    ax.set_xlim(0, 100)
    ax.set_xlabel("mean pLDDT per structure")
    ax.set_ylabel("structures")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_text(s: RunSummary) -> str:
    lines = [
        f"run {s.run_id} -> {s.atlas} (model {s.model}{'' if s.model_trained else ', UNTRAINED: not real predictions'})",
        f"  records read {s.read}: accepted {s.accepted}, rejected {s.rejected} {s.rejected_by_reason or ''}",
        f"  already in atlas {s.already_in_atlas}, linked to earlier predictions {s.linked}",
        f"  sequences predicted {s.predicted}, failed {s.failed} {s.failed_by_reason or ''}",
        *([f"  out of memory, re-routed {s.oom_rerouted}: {s.oom_routes} ({s.oom_fragments} fragments)"]
          if s.oom_rerouted else []),
        f"  entries written {s.entries_written}, mmCIF published {s.structures_published}, tiers {s.tiers}",
        f"  MSAs searched {s.msa_searched}, from cache {s.msa_cached}, failed {s.msa_failed}",
        f"  units {s.units_published}/{s.units_planned}; fold wall {s.fold_wall_seconds:.1f} s, "
        f"{s.sequences_per_hour:.0f} sequences/h, {s.residues_per_second:.0f} residues/s; total {s.total_seconds:.1f} s",
    ]
    for name, st in s.stages.items():
        util = st.get("utilisation")
        lines.append(f"  stage {name:<7} {st['sequences']} sequences, busy {st['busy_seconds']:.1f} s on "
                     f"{st['actors']} actor(s)" + (f", utilisation {util:.0%}" if util is not None else ""))
    return "\n".join(lines)
