"""Long sequences: AFDB-style fragments F1..Fn, and the separate chunked fold pool."""

from __future__ import annotations

from pathlib import Path

import duckdb
import gemmi
import pytest
from pydantic import ValidationError

from pipeline.config import load_config
from pipeline.ingest import IngestPolicy, fragment_record, fragment_windows, ingest_many
from pipeline.plan import WorkUnit, unit_id_for
from pipeline.runner import route_long, run
from storage.entry import fetch_entry
from storage.mmcif import validate_modelcif
from tests.test_end_to_end import DICTIONARY, SAMPLE, tiny_config


def test_fragment_windows_cover_the_sequence_like_afdb():
    # AFDB: 1,400-residue fragments every 200 residues; the last one ends at the sequence end
    w = fragment_windows(3000, 1400, 200)
    assert w[0] == (0, 1400) and w[-1] == (1600, 3000)
    assert [s for s, _ in w] == [0, 200, 400, 600, 800, 1000, 1200, 1400, 1600]
    assert all(e - s == 1400 for s, e in w)
    covered = set().union(*(range(s, e) for s, e in w))
    assert covered == set(range(3000))
    assert fragment_windows(1400, 1400, 200) == [(0, 1400)]
    assert fragment_windows(1401, 1400, 200) == [(0, 1400), (1, 1401)]


def test_fragment_record_keeps_accession_and_numbers_fragments():
    policy = IngestPolicy(max_length=10_000, fragment_above=300, fragment_window=200, fragment_step=100)
    rec = next(r for r in ingest_many([SAMPLE]).accepted if r.accession == "A3CWV2")  # 333 residues
    frags = fragment_record(rec, policy)
    assert [(f.fragment, f.start, f.length) for f in frags] == [(1, 1, 200), (2, 101, 200), (3, 134, 200)]
    assert all(f.accession == "A3CWV2" and f.sequence == rec.sequence[f.start - 1:f.start + 199] for f in frags)
    assert len({f.sha256 for f in frags}) == 3 and frags[0].sha256 != rec.sha256
    meta = frags[2].afdb_metadata()
    assert (meta["uniprotStart"], meta["uniprotEnd"]) == (134, 333)
    assert fragment_record(rec, IngestPolicy()) == [rec]


@pytest.mark.parametrize("kwargs", [{"fragment_above": 100, "fragment_window": 200},
                                    {"fragment_above": 500, "fragment_window": 200, "fragment_step": 300}])
def test_fragment_policy_is_validated(kwargs):
    with pytest.raises(ValidationError):
        IngestPolicy(**kwargs)


def test_route_long_cuts_a_straddling_unit_deterministically():
    recs = [r for r in ingest_many([SAMPLE]).accepted][:6]
    seqs = tuple(sorted({r.sequence for r in recs}, key=len))
    unit = WorkUnit(unit_id_for("m", {r.sha256 for r in recs}), "m", seqs, tuple(recs))
    above = 200
    normal, long = route_long([unit], above)
    assert all(len(s) <= above for u in normal for s in u.sequences)
    assert all(len(s) > above for u in long for s in u.sequences)
    assert sorted(s for u in normal + long for s in u.sequences) == sorted(seqs)
    assert sorted(r.accession for u in normal + long for r in u.records) == sorted(r.accession for r in recs)
    assert route_long([unit], above) == (normal, long) and route_long([unit], None) == ([unit], [])


@pytest.mark.slow
def test_run_with_fragments_and_a_long_pool(tmp_path: Path, ray_session):
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(">" + r for r in SAMPLE.read_text().split(">")[1:6]))  # 255, 243, 214, 333, 162 aa
    cfg_path = tiny_config(
        tmp_path, 8000,
        ingest={"max_length": 10000, "fragment_above": 300, "fragment_window": 200, "fragment_step": 100},
        long_sequences={"chunked_above": 230, "chunk_size": 16, "max_tokens_per_batch": 600})
    cfg = load_config(cfg_path)
    atlas = tmp_path / "atlas"
    summary = run([fasta], atlas, cfg, progress=False)
    assert summary.read == 5 and summary.accepted == 5 and summary.fragments == 3
    assert summary.units_long >= 1 and summary.units_published == summary.units_planned
    rows = duckdb.connect().execute(
        f"SELECT entryId, accession, uniprotStart, uniprotEnd, status FROM read_parquet('{atlas}/entries/*.parquet') "
        "ORDER BY entryId").fetchall()
    frags = [r for r in rows if r[1] == "A3CWV2"]
    assert frags == [("FA-A3CWV2-F1", "A3CWV2", 1, 200, "predicted"), ("FA-A3CWV2-F2", "A3CWV2", 101, 300, "predicted"),
                     ("FA-A3CWV2-F3", "A3CWV2", 134, 333, "predicted")]
    assert len(rows) == 7 and all(r[4] == "predicted" for r in rows)
    # a fragment's mmCIF says which residues of the UniProt sequence it models, and validates
    text = fetch_entry(atlas, "FA-A3CWV2-F2").mmcif()
    assert validate_modelcif(text, str(DICTIONARY)) == []
    block = gemmi.cif.read_string(text).sole_block()
    assert block.find_value("_ma_target_ref_db_details.seq_db_align_begin") == "101"
    assert block.find_value("_ma_target_ref_db_details.seq_db_align_end") == "300"
    again = run([fasta], atlas, cfg, progress=False)
    assert again.sequences_planned == 0 and again.entries_written == 0
