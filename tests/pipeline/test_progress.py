"""Stage tracking without Ray: counts, timeline samples (queues between stages), per-stage summary."""

from __future__ import annotations

import pytest

from pipeline.progress import StageTracker, grow_planned, progress_line, stage_summary, timeline_point


def test_tracker_counts_and_queues():
    tr = StageTracker(("fold", "write", "publish"))
    tr.record("fold", 10, 3000, 4.0)
    tr.record("fold", 5, 1000, 2.0)
    tr.record("write", 10, 3000, 0.5)
    snap = tr.snapshot()
    assert snap["stages"]["fold"]["units"] == 2 and snap["stages"]["fold"]["sequences"] == 15
    assert snap["stages"]["fold"]["busy_seconds"] == pytest.approx(6.0)
    point = timeline_point(snap, ("fold", "write", "publish"), planned=20)
    # 5 not folded yet; 5 folded but not written; 10 written but not published
    assert point["done"] == {"fold": 15, "write": 10, "publish": 0}
    assert point["queue"] == {"fold": 5, "write": 5, "publish": 10}


def test_stage_summary_utilisation_marks_the_bottleneck():
    tr = StageTracker(("fold", "write"))
    tr.record("fold", 100, 30000, 90.0)
    tr.record("write", 100, 30000, 9.0)
    out = stage_summary(tr.snapshot(), {"fold": 1, "write": 2}, wall_seconds=100.0)
    assert out["fold"]["utilisation"] == pytest.approx(0.9)
    assert out["write"]["utilisation"] == pytest.approx(9.0 / 200.0)
    assert out["fold"]["sequences_per_busy_hour"] == pytest.approx(3600 * 100 / 90, rel=1e-3)
    assert out["fold"]["sequences_per_hour_wall"] == pytest.approx(3600.0)


def test_unknown_stage_is_an_error():
    with pytest.raises(KeyError):
        StageTracker(("fold",)).record("msa", 1, 1, 1.0)


def test_progress_line_for_logs():
    tr = StageTracker(("fold", "write", "publish"))
    tr.started -= 100.0  # 100 s into the stream
    tr.record("fold", 30, 9000, 50.0)
    tr.record("publish", 20, 6000, 0.1)
    line = progress_line(tr.snapshot(), ("fold", "write", "publish"), planned=100)
    assert line.startswith("fold 30/100, write 0/100, publish 20/100, ")
    assert "720 seq/h" in line and "ETA 0:06:4" in line  # 80 left at 0.2/s: 400 s


def test_planned_per_stage_grows_with_later_passes():
    planned = {"fold": 10, "write": 10, "publish": 10}
    grow_planned(planned, folded_again=2, published=0)  # two handed back, folded again in the chunked pool
    grow_planned(planned, folded_again=3, published=3 - 1)  # one sequence split into three fragments
    assert planned == {"fold": 15, "write": 15, "publish": 12}
    tr = StageTracker(("fold", "write", "publish"))
    tr.started -= 10.0
    tr.record("fold", 15, 4500, 5.0)
    tr.record("write", 12, 3600, 1.0)
    tr.record("publish", 6, 1800, 0.1)
    snap = tr.snapshot()
    # publish has 6 left, 3 of which write has yet to hand it: 3 wait (written minus published, 6,
    # would count the sequences write handed back to the later passes, which never publish)
    assert timeline_point(snap, ("fold", "write", "publish"), planned)["queue"] == {"fold": 0, "write": 3, "publish": 3}
    line = progress_line(snap, ("fold", "write", "publish"), planned)
    assert line.startswith("fold 15/15, write 12/15, publish 6/12, ") and "ETA 0:00:10" in line  # 6 left at 0.6/s
    out = stage_summary(snap, {}, wall_seconds=10.0, planned=planned)
    assert [out[s]["planned"] for s in ("fold", "write", "publish")] == [15, 15, 12]
    assert "planned" not in stage_summary(snap, {}, wall_seconds=10.0)["fold"]
