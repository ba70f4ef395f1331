"""Tests for pipeline.msa_db (database build/load) and pipeline.msa (MMseqs2 and HMMER search, parameters).

The database is a real 1,000-sequence UniRef90 sample; the MMseqs2 hits are checked against the
same mmseqs commands run by hand here, the HMMER rows against the database sequences themselves.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from Bio import SeqIO

import pipeline.msa as msa_mod
from pipeline.errors import FoldAtlasError, InputError
from pipeline.msa import MMSEQS_MAX_SEQ_LEN, MSAParams, QueryTooLong, search, search_hmmer, search_mmseqs
from pipeline.msa_db import (
    IDENTITY_FILE,
    MSADatabase,
    available_tool,
    build_msa_db,
    load_msa_db,
    search_tool_ready,
)
from pipeline.tools import SCRATCH_ENV, ToolError, ToolNotFound
from storage.a3m import MSAError, parse_a3m

DATA = Path(__file__).resolve().parent.parent / "data" / "msa"
UNIREF = DATA / "af3_testdata_uniref90__subsampled_1000.fasta"
QUERIES = DATA / "queries.fasta"
IN_DB = {"UniRef90_A0A2G2LVQ5", "UniRef90_A0A651EH65", "UniRef90_UPI001EF2088A"}

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs not installed")

# Small and fast for tests; the production defaults are ColabFold's (3 iterations, -s 8).
MMSEQS_TEST = {"iterations": 2, "sensitivity": 2.0, "evalue": 0.1, "max_seqs": 300, "threads": 2}


def read_fasta(path: Path) -> list[tuple[str, str]]:
    return [(rec.id, str(rec.seq)) for rec in SeqIO.parse(path, "fasta")]


@pytest.fixture(scope="module")
def mmseqs_db(tmp_path_factory) -> MSADatabase:
    if shutil.which("mmseqs") is None:
        pytest.skip("mmseqs not installed")
    return build_msa_db([UNIREF], tmp_path_factory.mktemp("mmseqs") / "uniref90_sample", tool="mmseqs2")


@pytest.fixture(scope="module")
def hmmer_db(tmp_path_factory) -> MSADatabase:
    return build_msa_db([UNIREF], tmp_path_factory.mktemp("hmmer") / "uniref90_sample", tool="hmmer")


@pytest.fixture(scope="module")
def mmseqs_result(mmseqs_db, tmp_path_factory) -> tuple[dict[str, str], Path]:
    """One search_mmseqs call over all queries, with scratch in a directory we can inspect."""
    scratch = tmp_path_factory.mktemp("scratch")
    mp = pytest.MonkeyPatch()
    mp.setenv(SCRATCH_ENV, str(scratch))
    try:
        found = search_mmseqs(read_fasta(QUERIES), mmseqs_db, MSAParams(tool="mmseqs2", **MMSEQS_TEST))
    finally:
        mp.undo()
    return found, scratch


# ---------------------------------------------------------------------------- MMseqs2 search


@needs_mmseqs
def test_mmseqs_hits_equal_direct_run(mmseqs_db, mmseqs_result, tmp_path):
    queries = read_fasta(QUERIES)
    found, _ = mmseqs_result
    ours = {qid: set(parse_a3m(found[qid]).names[1:]) for qid, _ in queries}

    # The same commands by hand: createdb, iterative search, then the hit list with convertalis.
    def mmseqs(*args: object) -> None:
        subprocess.run(["mmseqs", *map(str, args)], check=True, capture_output=True)

    shutil.copy(QUERIES, tmp_path / "q.fasta")
    target = mmseqs_db.path / "db"
    mmseqs("createdb", tmp_path / "q.fasta", tmp_path / "qdb", "--dbtype", "1")
    mmseqs("search", tmp_path / "qdb", target, tmp_path / "res", tmp_path / "tmp",
           "--num-iterations", "2", "-a", "-e", "0.1", "--max-seqs", "300", "-s", "2", "--threads", "2")
    mmseqs("convertalis", tmp_path / "qdb", target, tmp_path / "res", tmp_path / "res.tsv",
           "--format-output", "qheader,theader")
    direct: dict[str, set[str]] = {qid: set() for qid, _ in queries}
    for line in (tmp_path / "res.tsv").read_text().splitlines():
        qheader, theader = line.split("\t")
        direct[qheader.split()[0]].add(theader.split()[0])

    assert ours == direct
    assert sum(len(h) for h in direct.values()) > 2 * len(queries)  # a real test: several hits
    for qid in IN_DB:
        assert qid in ours[qid]  # database members find themselves
    assert ours["sp|P07658|FDHF_ECOLI"] == set()


def test_longest_first_order():
    assert msa_mod.longest_first([("a", "MKV"), ("b", "MKVLA"), ("c", "MKVLC"), ("d", "M")]) == [1, 2, 0, 3]
    assert msa_mod.longest_first([]) == []


@needs_mmseqs
def test_mmseqs_gets_queries_longest_first_and_results_map_back(mmseqs_db, monkeypatch):
    """The query DB holds the longest query first; every A3M still comes back under its own id,
    with its own sequence as the first row, equal to a search of that query alone."""
    queries = sorted(read_fasta(QUERIES), key=lambda q: len(q[1]))  # as plan units hold them
    assert len({len(s) for _, s in queries}) > 2
    seen: list[list[str]] = []
    real = msa_mod.run_tool

    def spy(cmd, **kw):
        if cmd[1] == "createdb":
            seen.append([line for line in Path(cmd[2]).read_text().splitlines() if not line.startswith(">")])
        return real(cmd, **kw)

    monkeypatch.setattr(msa_mod, "run_tool", spy)
    params = MSAParams(tool="mmseqs2", **MMSEQS_TEST)
    found = search_mmseqs(queries, mmseqs_db, params)
    assert seen[0] == sorted((s for _, s in queries), key=len, reverse=True)
    assert list(found) == [qid for qid, _ in queries]
    for qid, seq in queries:
        assert parse_a3m(found[qid]).rows[0] == seq
    shortest, longest = queries[0], queries[-1]
    assert search_mmseqs([longest], mmseqs_db, params)[longest[0]] == found[longest[0]]
    assert search_mmseqs([shortest], mmseqs_db, params)[shortest[0]] == found[shortest[0]]


@needs_mmseqs
def test_mmseqs_a3m_first_row_is_the_query(mmseqs_result):
    found, _ = mmseqs_result
    queries = read_fasta(QUERIES)
    assert list(found) == [qid for qid, _ in queries]
    for qid, seq in queries:
        a3m = parse_a3m(found[qid])
        assert a3m.names[0] == qid and a3m.descriptions[0] == ""
        assert a3m.query == seq
        assert {len(r) for r in a3m.aligned()} == {len(seq)}
    # MMseqs2 prints selenocysteine as X; the A3M keeps the input's U
    assert "U" in parse_a3m(found["sp|P07658|FDHF_ECOLI"]).query


@needs_mmseqs
def test_mmseqs_scratch_is_removed(mmseqs_result):
    _, scratch = mmseqs_result
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------------------- HMMER search


def test_hmmer_finds_itself_and_rows_are_database_subsequences(hmmer_db):
    queries = read_fasta(QUERIES)
    found = search_hmmer(queries, hmmer_db, MSAParams(tool="hmmer", threads=2))
    db_seqs = dict(read_fasta(UNIREF))
    assert list(found) == [qid for qid, _ in queries]
    for qid, seq in queries:
        a3m = parse_a3m(found[qid])
        assert a3m.names[0] == qid and a3m.query == seq
        assert {len(r) for r in a3m.aligned()} == {len(seq)}
        for name, row in zip(a3m.names[1:], a3m.rows[1:], strict=True):
            target, span = name.rsplit("/", 1)
            start, end = (int(x) for x in span.split("-"))
            assert row.replace("-", "").upper() == db_seqs[target][start - 1:end]
        if qid in IN_DB:
            assert a3m.rows[a3m.names.index(f"{qid}/1-{len(seq)}")] == seq
    assert len(parse_a3m(found["sp|P0AF28|NARL_ECOLI"])) > 2  # NarL has response-regulator homologs


def test_hmmer_max_seqs_and_default_parameters(hmmer_db):
    query = read_fasta(QUERIES)[:1]
    found = search(query, hmmer_db, MSAParams(tool="hmmer", max_seqs=2, threads=1))
    assert len(parse_a3m(found[query[0][0]])) == 3
    default = search(query, hmmer_db)  # params from the database's tool
    assert len(parse_a3m(default[query[0][0]])) > 3


def test_hmmer_streamed_database_gives_the_same_alignments(hmmer_db, monkeypatch):
    queries = read_fasta(QUERIES)[:2]
    params = MSAParams(tool="hmmer", threads=1)
    in_memory = search_hmmer(queries, hmmer_db, params)
    monkeypatch.setattr(msa_mod, "HMMER_IN_MEMORY_MAX_BYTES", 0)  # stream the FASTA file instead
    assert search_hmmer(queries, hmmer_db, params) == in_memory


@needs_mmseqs
def test_crashed_mmseqs_search_raises_tool_error(mmseqs_db, tmp_path):
    broken = Path(shutil.copytree(mmseqs_db.path, tmp_path / "broken"))
    (broken / "db.dbtype").unlink()
    db = MSADatabase.from_dict(mmseqs_db.to_dict(), path=broken)  # as if loaded before the damage
    with pytest.raises(ToolError) as info:
        search_mmseqs(read_fasta(QUERIES)[:1], db, MSAParams(tool="mmseqs2", **MMSEQS_TEST))
    err = info.value
    assert err.tool == "mmseqs" and err.returncode not in (0, None)
    assert err.stderr_tail and "mmseqs search" in err.command


# ---------------------------------------------------------------------------- build and load


@needs_mmseqs
def test_same_input_gives_same_db_id(mmseqs_db, hmmer_db, tmp_path):
    moved = tmp_path / "elsewhere.fasta"
    shutil.copy(UNIREF, moved)
    again = build_msa_db([moved], tmp_path / "again", tool="mmseqs2")
    assert again.db_id == mmseqs_db.db_id and len(again.db_id) == 16
    assert again.sequence_count == mmseqs_db.sequence_count == 1000
    assert again.inputs[0].sha256 == mmseqs_db.inputs[0].sha256
    assert build_msa_db([UNIREF], tmp_path / "h2", tool="hmmer").db_id == hmmer_db.db_id
    assert hmmer_db.db_id != mmseqs_db.db_id
    assert mmseqs_db.tool_version == subprocess.run(["mmseqs", "version"], capture_output=True, text=True,
                                                   check=True).stdout.strip()
    assert hmmer_db.tool_version.startswith("pyhmmer ")


def test_identity_record_round_trips_through_json(hmmer_db):
    loaded = load_msa_db(hmmer_db.path)
    assert loaded == hmmer_db
    record = json.loads((hmmer_db.path / IDENTITY_FILE).read_text())
    assert record["db_id"] == hmmer_db.db_id and record["tool"] == "hmmer" and "path" not in record
    assert MSADatabase.from_dict(record, path=hmmer_db.path) == hmmer_db


@pytest.mark.parametrize("tool", ["hmmer", pytest.param("mmseqs2", marks=needs_mmseqs)])
def test_gzipped_fasta_input(tool, tmp_path):
    gz = tmp_path / "db.fasta.gz"
    gz.write_bytes(gzip.compress(UNIREF.read_bytes()))
    db = build_msa_db([gz], tmp_path / "db", tool=tool)
    assert db.sequence_count == 1000
    if tool == "hmmer":
        assert (db.path / "sequences.fasta").read_bytes() == UNIREF.read_bytes()


@needs_mmseqs
def test_mmseqs_refuses_gzip_without_gz_suffix(tmp_path):
    hidden = tmp_path / "db.fasta"
    hidden.write_bytes(gzip.compress(UNIREF.read_bytes()))
    with pytest.raises(InputError, match="gzip"):
        build_msa_db([hidden], tmp_path / "db", tool="mmseqs2")


def test_build_input_and_output_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        build_msa_db([tmp_path / "missing.fasta"], tmp_path / "db", tool="hmmer")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(MSAError, match="not empty"):
        build_msa_db([UNIREF], tmp_path / "full", tool="hmmer")
    bad = tmp_path / "bad.fasta"
    bad.write_text(">x\nMKV1LL\n")
    with pytest.raises(MSAError, match="protein"):
        build_msa_db([bad], tmp_path / "bad_db", tool="hmmer")
    assert not (tmp_path / "bad_db").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    with pytest.raises(MSAError, match="unknown MSA tool"):
        build_msa_db([UNIREF], tmp_path / "x", tool="blast")


def test_load_errors_say_how_to_build(hmmer_db, tmp_path):
    with pytest.raises(MSAError, match="directory not found") as info:
        load_msa_db(tmp_path / "nope")
    assert "foldatlas msa-db build" in str(info.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(MSAError, match=f"{IDENTITY_FILE} is missing") as info:
        load_msa_db(tmp_path / "empty")
    assert "foldatlas msa-db build" in str(info.value)

    def copy(name: str) -> Path:
        return Path(shutil.copytree(hmmer_db.path, tmp_path / name))

    corrupt = copy("corrupt")
    (corrupt / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(MSAError, match="not JSON"):
        load_msa_db(corrupt)

    partial = copy("partial")
    record = json.loads((partial / IDENTITY_FILE).read_text())
    del record["db_id"]
    (partial / IDENTITY_FILE).write_text(json.dumps(record))
    with pytest.raises(MSAError, match="invalid MSA database record"):
        load_msa_db(partial)

    missing = copy("missing")
    (missing / "sequences.fasta").unlink()
    with pytest.raises(MSAError, match=r"sequences\.fasta missing") as info:
        load_msa_db(missing)
    assert "foldatlas msa-db build" in str(info.value)

    truncated = copy("truncated")
    (truncated / "sequences.fasta").write_text(">x\nMKV\n")
    with pytest.raises(MSAError, match="bytes, expected"):
        load_msa_db(truncated)


# ---------------------------------------------------------------------------- missing tools, bad queries


@needs_mmseqs
def test_missing_mmseqs_gives_clear_errors(mmseqs_db, tmp_path, monkeypatch):
    msa_mod._installed_mmseqs_version.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    try:
        assert available_tool() == "hmmer"
        with pytest.raises(ToolNotFound, match="apt-get install mmseqs2"):
            build_msa_db([UNIREF], tmp_path / "db", tool="mmseqs2")
        assert not (tmp_path / "db").exists()
        with pytest.raises(ToolNotFound, match="mmseqs"):
            search_tool_ready("mmseqs2")
        search_tool_ready("hmmer")
        with pytest.raises(ToolNotFound):
            search(read_fasta(QUERIES)[:1], mmseqs_db, MSAParams(tool="mmseqs2", **MMSEQS_TEST))
        # too long is refused before anything runs (not a ToolNotFound)
        with pytest.raises(QueryTooLong) as info:
            search([("long", "M" * (MMSEQS_MAX_SEQ_LEN + 1))], mmseqs_db)
        assert info.value.query_id == "long" and info.value.limit == MMSEQS_MAX_SEQ_LEN
    finally:
        msa_mod._installed_mmseqs_version.cache_clear()


def test_available_tool_prefers_mmseqs():
    assert available_tool() == ("mmseqs2" if shutil.which("mmseqs") else "hmmer")


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ([], "no queries"),
        ([("a", "MKV"), ("a", "MKL")], "duplicate query id"),
        ([("a b", "MKV")], "without whitespace"),
        ([("a", "mkv")], "upper-case letters"),
        ([("a", "MK-V")], "upper-case letters"),
        ([("a", "")], "upper-case letters"),
    ],
)
def test_bad_queries_are_refused(hmmer_db, queries, message):
    with pytest.raises(MSAError, match=message):
        search(queries, hmmer_db)


def test_params_for_another_tool_are_refused(hmmer_db):
    with pytest.raises(MSAError, match="parameters are for mmseqs2"):
        search([("a", "MKV")], hmmer_db, MSAParams(tool="mmseqs2"))


# ---------------------------------------------------------------------------- parameters


def test_params_defaults_and_key():
    mm = MSAParams()
    assert (mm.tool, mm.iterations, mm.evalue, mm.sensitivity, mm.max_seqs) == ("mmseqs2", 3, 0.1, 8.0, 10000)
    hm = MSAParams(tool="hmmer")
    assert (hm.iterations, hm.evalue) == (1, 1e-4)
    assert mm.params_key() == MSAParams().params_key() == MSAParams(threads=7).params_key()
    assert mm.params_key() != MSAParams(evalue=0.01).params_key()
    assert mm.params_key() != MSAParams(iterations=2).params_key()
    assert mm.params_key() != MSAParams(sensitivity=7.5).params_key()
    assert hm.params_key() == MSAParams(tool="hmmer", sensitivity=2).params_key()  # unused by HMMER
    assert hm.params_key() != mm.params_key()
    assert len(mm.params_key()) == 16
    for bad in ({"tool": "blast"}, {"iterations": 0}, {"evalue": 0.0}, {"max_seqs": 0}, {"sensitivity": 0.0}):
        with pytest.raises(MSAError):
            MSAParams(**bad)


def test_errors_are_foldatlas_errors():
    assert issubclass(QueryTooLong, MSAError) and issubclass(MSAError, FoldAtlasError)
    assert issubclass(ToolNotFound, FoldAtlasError)


def test_units_searched_together_equal_separate_searches(hmmer_db):
    """search_units: one call for several units; split results equal per-unit calls."""
    from pipeline.config import MSAConfig
    from pipeline.ingest import sequence_hashes
    from pipeline.msa_stage import make_spec, search_unit, search_units

    spec = make_spec(MSAConfig(tool="hmmer", db=str(hmmer_db.path), iterations=1))
    recs = [(sequence_hashes(seq)[0], seq) for _, seq in read_fasta(QUERIES)[:3]]
    units = [(dict(recs[:2]), {}), (dict(recs[1:]), {})]  # the middle sequence is in both units
    joint = search_units(units, spec)
    alone = [search_unit(seqs, cached, spec) for seqs, cached in units]
    assert [set(r.a3m) for r in joint] == [set(r.a3m) for r in alone] == [set(u[0]) for u in units]
    for j, a in zip(joint, alone, strict=True):
        assert j.a3m == a.a3m and j.stats == a.stats and not j.failed
        assert j.searched == len(a.a3m)
