"""Clustered MMseqs2 databases: ``build_msa_db(..., cluster=...)`` and ColabFold-style searches.

The database is 3,000 sequences generated from 100 sequences of the real UniRef90 sample by the
benchmark's recipe (``benchmarks/make_msa_db.py``: point substitutions, indels, recombinants), so
that families exist and clustering at 30 % identity really merges sequences. The stage's hits are
checked against the same MMseqs2 chain run by hand here (search against the representatives,
``expandaln``, realignment of the last profile), and against a plain search of all sequences.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from Bio import SeqIO

from benchmarks.make_msa_db import GenParams, generate
from pipeline.msa import MSAParams, search
from pipeline.msa_db import IDENTITY_FILE, Clustering, MSADatabase, build_msa_db, load_msa_db
from storage.a3m import MSAError, parse_a3m

DATA = Path(__file__).resolve().parent.parent / "data" / "msa"
UNIREF = DATA / "af3_testdata_uniref90__subsampled_1000.fasta"

pytestmark = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs not installed")

PARAMS = {"iterations": 2, "sensitivity": 4.0, "evalue": 0.1, "max_seqs": 1000, "threads": 2}
CLUSTER = Clustering("cluster", 0.3, 0.8)


@pytest.fixture(scope="module")
def family_fasta(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("families")
    parents = d / "parents.fasta"
    SeqIO.write(list(SeqIO.parse(UNIREF, "fasta"))[:100], parents, "fasta")
    out = d / "families.fasta"
    generate([parents], out, GenParams(n=3000, seed=11))  # about 30 descendants per parent
    return out


@pytest.fixture(scope="module")
def queries(family_fasta) -> list[tuple[str, str]]:
    """Eight database members (every 375th) and one sequence of the real sample."""
    recs = list(SeqIO.parse(family_fasta, "fasta"))
    picked = [(r.id, str(r.seq)) for r in recs[::375]]
    first = next(SeqIO.parse(UNIREF, "fasta"))
    return [*picked, ("uniref_" + first.id.split("_", 1)[1], str(first.seq))]


@pytest.fixture(scope="module")
def clustered(family_fasta, tmp_path_factory) -> MSADatabase:
    return build_msa_db([family_fasta], tmp_path_factory.mktemp("clu") / "families30", cluster=CLUSTER, threads=2)


@pytest.fixture(scope="module")
def flat(family_fasta, tmp_path_factory) -> MSADatabase:
    return build_msa_db([family_fasta], tmp_path_factory.mktemp("flat") / "families", threads=2)


def _hits(found: dict[str, str]) -> dict[str, set[str]]:
    return {qid: set(parse_a3m(text).names[1:]) for qid, text in found.items()}


def test_build_records_the_clustering_and_plain_files(clustered, flat):
    c = clustered.clustering
    assert c is not None and (c.method, c.min_seq_id, c.coverage) == ("cluster", 0.3, 0.8)
    assert 0 < c.clusters < clustered.sequence_count == 3000  # families really merge
    assert c.clusters == sum(1 for _ in (clustered.path / "rep.index").open())
    assert clustered.target.name == "rep" and clustered.members.name == "db"
    assert not [f for f in clustered.path.iterdir() if f.is_symlink()]
    # same inputs, other build: another id; the unclustered id is what it always was
    assert clustered.db_id != flat.db_id and flat.clustering is None
    record = json.loads((clustered.path / IDENTITY_FILE).read_text())
    assert record["clustering"] == {"method": "cluster", "min_seq_id": 0.3, "coverage": 0.8, "clusters": c.clusters}
    assert json.loads((flat.path / IDENTITY_FILE).read_text())["clustering"] is None
    assert load_msa_db(clustered.path) == clustered


def test_hits_equal_the_same_chain_run_by_hand(clustered, queries, tmp_path):
    ours = _hits(search(queries, clustered, MSAParams(**PARAMS)))

    def mmseqs(*args: object) -> None:
        subprocess.run(["mmseqs", *map(str, args)], check=True, capture_output=True)

    (tmp_path / "q.fasta").write_text("".join(f">{qid}\n{seq}\n" for qid, seq in queries))
    reps, members, aln = (clustered.path / n for n in ("rep", "db", "clu_aln"))
    t = tmp_path
    mmseqs("createdb", t / "q.fasta", t / "qdb", "--dbtype", "1")
    mmseqs("search", t / "qdb", reps, t / "res", t / "tmp", "--num-iterations", "2", "-a", "-e", "0.1",
           "--max-seqs", "1000", "-s", "4", "--threads", "2")
    mmseqs("expandaln", t / "qdb", reps, t / "res", aln, t / "exp", "-e", "inf", "--expansion-mode", "0")
    # the query profile of the last (second) iteration, realigned against every member
    mmseqs("align", t / "tmp" / "latest" / "profile_0", members, t / "exp", t / "realn", "-e", "0.1", "-a",
           "--max-accept", "1000")
    mmseqs("convertalis", t / "qdb", members, t / "realn", t / "hits.tsv", "--format-output", "qheader,theader")
    direct: dict[str, set[str]] = {qid: set() for qid, _ in queries}
    for line in (t / "hits.tsv").read_text().splitlines():
        q, target = line.split("\t")
        direct[q.split()[0]].add(target.split()[0])

    assert ours == direct
    assert sum(len(h) for h in ours.values()) > 10 * len(queries)  # families of members, not single hits
    for qid, _ in queries[:-1]:
        assert qid in ours[qid]  # members find themselves through their representative


def test_expansion_reaches_members_the_representatives_do_not_hold(clustered, flat, queries):
    params = MSAParams(**PARAMS)
    via_reps = _hits(search(queries, clustered, params))
    plain = _hits(search(queries, flat, params))
    rep_keys = {line.split("\t")[0] for line in (clustered.path / "rep.index").open()}
    names = dict(line.split("\t")[:2] for line in (clustered.path / "db.lookup").open())
    rep_names = {names[k] for k in rep_keys}
    assert len(rep_names) == clustered.clustering.clusters
    found = set().union(*via_reps.values())
    assert found - rep_names  # members that only the expansion brings in
    # the clustered search keeps (nearly) every hit of the plain search of all 3,000 sequences
    shared = sum(len(via_reps[q] & plain[q]) for q in plain)
    total = sum(len(h) for h in plain.values())
    assert total > 0 and shared / total >= 0.9, (shared, total)


@pytest.mark.parametrize("iterations", [1, 3])
def test_one_and_three_iterations_run(clustered, queries, iterations):
    found = search(queries[:2], clustered, MSAParams(**{**PARAMS, "iterations": iterations}))
    for qid, seq in queries[:2]:
        a3m = parse_a3m(found[qid])
        assert a3m.names[0] == qid and a3m.query == seq and len(a3m.names) > 1


def test_a_moved_database_still_searches(clustered, queries, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(clustered.path, moved)
    db = load_msa_db(moved)
    assert db.db_id == clustered.db_id
    assert _hits(search(queries[:1], db, MSAParams(**PARAMS))) == _hits(
        search(queries[:1], clustered, MSAParams(**PARAMS)))


def test_clustering_errors(family_fasta, clustered, tmp_path):
    with pytest.raises(MSAError, match="unknown clustering method"):
        Clustering("hclust", 0.3, 0.8)
    with pytest.raises(MSAError, match="min_seq_id"):
        Clustering("cluster", 0.0, 0.8)
    with pytest.raises(MSAError, match="coverage"):
        Clustering("linclust", 0.9, 1.5)
    with pytest.raises(MSAError, match="mmseqs2"):
        build_msa_db([family_fasta], tmp_path / "h", tool="hmmer", cluster=CLUSTER)
    broken = tmp_path / "broken"
    shutil.copytree(clustered.path, broken)
    for f in broken.glob("clu_aln*"):
        f.unlink()
    with pytest.raises(MSAError, match="clu_aln"):
        load_msa_db(broken)


def test_cli_builds_a_clustered_database(family_fasta, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "c50"
    result = CliRunner().invoke(app, ["msa-db", "build", str(family_fasta), "--out", str(out), "--tool", "mmseqs2",
                                      "--cluster-min-seq-id", "0.5", "--cluster-method", "linclust",
                                      "--cluster-coverage", "0.7", "--threads", "2"])
    assert result.exit_code == 0, result.output
    db = load_msa_db(out)
    assert db.clustering is not None and (db.clustering.method, db.clustering.min_seq_id,
                                          db.clustering.coverage) == ("linclust", 0.5, 0.7)
    assert f"{db.clustering.clusters} clusters at 0.5 identity" in result.output
    bad = CliRunner().invoke(app, ["msa-db", "build", str(family_fasta), "--out", str(tmp_path / "h"),
                                   "--tool", "hmmer", "--cluster-min-seq-id", "0.5"])
    assert bad.exit_code != 0 and "mmseqs2" in bad.output
