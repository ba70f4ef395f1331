"""Per-stage progress of a run: what each stage has finished, how busy it was, what waits before it.

Stage actors (MSA, fold, write) report each finished unit to one :class:`StageTracker` (a Ray
actor with no CPU reservation, fire-and-forget calls); the driver publishes and reports the
``publish`` stage itself. The driver polls :meth:`StageTracker.snapshot` from a thread to drive one
progress bar per stage (count, rate, ETA) and to sample a timeline: cumulative sequences per stage
and the queue in front of each stage (finished by the previous stage, not yet by this one). The
timeline and per-stage totals go into the run summary and the run report.

The class is plain Python so that it is tested without Ray; :func:`remote_tracker` puts it on Ray.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

STAGE_ORDER = ("msa", "fold", "write", "publish")


@dataclass
class StageStats:
    units: int = 0
    sequences: int = 0
    residues: int = 0
    busy_seconds: float = 0.0  # summed over the stage's actors
    first_done: float | None = None  # seconds since the tracker started
    last_done: float | None = None


@dataclass
class StageTracker:
    """Counts per stage; ``record`` is called once per unit and stage."""

    stages: tuple[str, ...] = STAGE_ORDER
    started: float = field(default_factory=time.time)
    stats: dict[str, StageStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = {s: StageStats() for s in self.stages}

    def record(self, stage: str, sequences: int, residues: int, seconds: float) -> None:
        st = self.stats[stage]
        now = time.time() - self.started
        st.units += 1
        st.sequences += sequences
        st.residues += residues
        st.busy_seconds += seconds
        st.first_done = now if st.first_done is None else st.first_done
        st.last_done = now

    def snapshot(self) -> dict[str, Any]:
        return {"t": time.time() - self.started, "stages": {s: asdict(v) for s, v in self.stats.items()}}


def remote_tracker(stages: tuple[str, ...]) -> Any:
    """A :class:`StageTracker` as a Ray actor that reserves no CPU (it only counts).

    It is placed on the driver's node when possible, so losing a worker node does not lose the
    counts, and it is restarted if it dies anyway (counting then starts again from zero).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    options = {"num_cpus": 0, "max_restarts": -1, "scheduling_strategy": here}
    return ray.remote(StageTracker).options(**options).remote(stages)


def report_stage(tracker: Any, stage: str, sequences: int, residues: int, seconds: float) -> None:
    """Fire-and-forget report from a stage actor (no-op without a tracker)."""
    if tracker is not None:
        tracker.record.remote(stage, sequences, residues, seconds)


def _planned(planned: int | Mapping[str, int], stage: str) -> int:
    return planned if isinstance(planned, int) else planned[stage]


def timeline_point(snapshot: dict[str, Any], stages: tuple[str, ...], planned: int | Mapping[str, int]
                   ) -> dict[str, Any]:
    """One sample: cumulative sequences per stage and the queue in front of each stage.

    ``planned``: the sequences each stage will handle in the whole run, one number for all stages or
    one per stage (they differ once out-of-memory passes fold sequences again, see
    :func:`grow_planned`). In front of the first stage the queue is what is planned for it and not
    yet handled; in front of a later one, what it has left minus what the stage before still has to
    hand it (with one total for all stages: what the stage before has handled and this one has not).
    """
    done = {s: snapshot["stages"][s]["sequences"] for s in stages}
    queue = {}
    upstream_left = 0  # what the stage before has still to handle
    for s in stages:
        left = max(0, _planned(planned, s) - done[s])
        queue[s] = max(0, left - upstream_left)
        upstream_left = left
    return {"t": round(snapshot["t"], 2), "done": done, "queue": queue}


def grow_planned(planned: dict[str, int], folded_again: int, published: int) -> None:
    """A later pass of the run (out of memory: chunked pool, fragments) adds work: every stage but
    ``publish`` handles its ``folded_again`` sequences once more; ``publish`` changes by
    ``published`` (fragments publish one entry each in place of their whole sequence, which was
    planned once; a whole sequence that is only linked is not published by the stream)."""
    for stage in planned:
        planned[stage] += published if stage == "publish" else folded_again


def progress_line(snapshot: dict[str, Any], stages: tuple[str, ...], planned: int | Mapping[str, int]) -> str:
    """One line for logs: sequences done per stage of planned, rate and ETA of the last stage."""
    t = snapshot["t"]
    parts = [f"{s} {snapshot['stages'][s]['sequences']}/{_planned(planned, s)}" for s in stages]
    done = snapshot["stages"][stages[-1]]["sequences"]
    if done and t > 0:
        rate = done / t
        eta = max(0, _planned(planned, stages[-1]) - done) / rate
        parts.append(f"{rate * 3600:,.0f} seq/h, ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")
    return ", ".join(parts)


def stage_summary(snapshot: dict[str, Any], actors: dict[str, int], wall_seconds: float,
                  planned: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per-stage totals for the run summary: throughput per busy second and per wall second, and
    (with ``planned``) the sequences the stage was to handle, out-of-memory passes included."""
    out = {}
    for stage, st in snapshot["stages"].items():
        busy = st["busy_seconds"]
        n_actors = actors.get(stage, 1)
        out[stage] = {
            **st, "actors": n_actors,
            **({"planned": planned[stage]} if planned is not None and stage in planned else {}),
            "sequences_per_hour_wall": round(3600 * st["sequences"] / wall_seconds, 1) if wall_seconds else 0.0,
            "sequences_per_busy_hour": round(3600 * st["sequences"] / busy, 1) if busy else None,
            # share of the stage's actor time spent working: near 1 marks the bottleneck stage
            "utilisation": round(busy / (n_actors * wall_seconds), 3) if wall_seconds and busy else None,
        }
    return out
