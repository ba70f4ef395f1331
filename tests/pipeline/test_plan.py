"""Plan stage: content dedupe, skip-what-the-atlas-holds, link entries, deterministic units."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import PlanConfig
from pipeline.ingest import AcceptedRecord, RejectedRecord, sequence_hashes
from pipeline.plan import cut_units, make_plan, reject_key
from storage.atlas import Atlas, write_parquet
from storage.schema import ENTRIES_SCHEMA, REJECTS_SCHEMA, STRUCTURES_SCHEMA


def rec(acc: str, seq: str, index: int = 0) -> AcceptedRecord:
    sha, crc, md5 = sequence_hashes(seq)
    return AcceptedRecord(source="in.fasta", record_index=index, line=1 + 2 * index, header=acc, accession=acc,
                          uniprot_id=None, description="", organism=None, tax_id=None, gene=None, is_reviewed=None,
                          protein_existence=None, sequence_version=None, sequence=seq, length=len(seq),
                          sha256=sha, crc64=crc, md5=md5)


def rows(schema: pa.Schema, **values) -> pa.Table:
    row = {n: None for n in schema.names} | values
    return pa.Table.from_pylist([row], schema=schema)


def test_identical_sequences_are_predicted_once(tmp_path):
    atlas = Atlas(tmp_path / "a")
    atlas.init()
    records = [rec("A1", "MKTAYIAKQRQISFVK", 0), rec("A2", "MKTAYIAKQRQISFVK", 1), rec("B", "MAATTTTMMGMATTFVPKPQ", 2)]
    plan = make_plan(records, [], atlas, "esmfold-tiny", PlanConfig())
    assert plan.sequences_to_predict == 2
    (unit,) = plan.units
    assert {r.accession for r in unit.records} == {"A1", "A2", "B"}
    assert list(unit.sequences) == sorted(unit.sequences, key=len)


def test_skips_entries_links_structures_and_known_rejects(tmp_path):
    atlas = Atlas(tmp_path / "a")
    atlas.init()
    done, linked, new = rec("DONE", "MKTAYIAKQRQISFVK"), rec("LINK", "MAATTTTMMGMATTFVPKPQ"), rec("NEW", "GSHMSLFDFFKNKGSA")
    now = datetime.now(UTC)
    write_parquet(rows(ENTRIES_SCHEMA, entryId="FA-DONE-F1", accession="DONE", model="esmfold-tiny",
                       status="predicted", sequence_sha256=done.sha256, run_id="r0", created_at=now),
                  atlas.table_dir("entries") / "x.parquet")
    for r in (done, linked):  # LINK's sequence was predicted for another accession
        write_parquet(rows(STRUCTURES_SCHEMA, sequence_sha256=r.sha256, model="esmfold-tiny", sequence=r.sequence,
                           run_id="r0", created_at=now), atlas.table_dir("structures") / f"{r.accession}.parquet")
    bad = RejectedRecord(source="in.fasta", record_index=9, line=19, code="too_short", detail="", header="S",
                         raw_sequence="MK", accession="S")
    write_parquet(rows(REJECTS_SCHEMA, reject_key=reject_key(bad), reason="too_short", run_id="r0"),
                  atlas.table_dir("rejects") / "r.parquet")
    plan = make_plan([done, linked, new], [bad], atlas, "esmfold-tiny", PlanConfig())
    assert plan.already_done == 1 and plan.known_rejects == 1 and not plan.new_rejects
    assert [r.accession for r in plan.link_records] == ["LINK"]
    assert [s for u in plan.units for s in u.sequences] == [new.sequence]
    # another model has nothing yet: everything is predicted
    other = make_plan([done, linked, new], [], atlas, "esmfold", PlanConfig())
    assert other.sequences_to_predict == 3 and other.already_done == 0


@given(st.lists(st.text(alphabet="ACDEFGHIKLMNPQRSTVWY", min_size=16, max_size=300), min_size=1, max_size=40,
                unique=True), st.integers(100, 3000))
@settings(max_examples=50, deadline=None)
def test_units_are_deterministic_length_sorted_and_within_budget(seqs, budget):
    by_sha = {r.sha256: [r] for r in (rec(f"P{i}", s, i) for i, s in enumerate(seqs))}
    cfg = PlanConfig(unit_max_residues=budget)
    units = cut_units(by_sha, "m", cfg)
    again = cut_units(dict(reversed(list(by_sha.items()))), "m", cfg)
    assert [u.unit_id for u in units] == [u.unit_id for u in again]
    flat = [s for u in units for s in u.sequences]
    assert sorted(flat) == sorted(seqs) and [len(s) for s in flat] == sorted(len(s) for s in flat)
    assert all(u.residues <= budget or len(u.sequences) == 1 for u in units)
    assert len({u.unit_id for u in units}) == len(units)
