"""A small real atlas for the release tests: 11 records folded by the tiny ESMFold on local Ray.

Ten short UniProt records of ``tests/data/uniprot/sample.fasta`` (ten taxa) plus one record with
a plain, non-UniProt header (``contig_7``, no taxId) whose sequence repeats A0A1D5P1X9's, so two
entries share one structure and the release must re-label the mmCIF for the second. Built once
per session through the real pipeline (``pipeline.runner.run``) with real MSAs (pyhmmer
jackhmmer against the 1,000 UniRef90 sequences of ``tests/data/msa``, ~3 s of searching), ~30-60 s
on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_end_to_end import tiny_config

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = DATA / "uniprot" / "sample.fasta"
UNIREF = DATA / "msa" / "af3_testdata_uniref90__subsampled_1000.fasta"
ACCESSIONS = ["A0A1D5P1X9", "G3MBJ6", "A0A371WXQ8", "A0A5B7FTI9", "A0A3A8NX55", "A0A140H1J1", "B8CSY5",
              "A0A4D9CK05", "W1INK5", "T1TFT7"]
SHARED = ("contig_7", "A0A1D5P1X9")  # plain-header record, UniProt record with the same sequence


def _input_fasta(path: Path) -> Path:
    records = {r.split("|")[1]: ">" + r for r in SAMPLE.read_text().split(">")[1:]}
    chosen = [records[a] for a in ACCESSIONS]
    shared_seq = records[SHARED[1]].split("\n", 1)[1]
    path.write_text("".join(chosen) + f">{SHARED[0]} unknown organism\n{shared_seq}")
    return path


@pytest.fixture(scope="session")
def release_atlas(tmp_path_factory, ray_session) -> Path:
    from pipeline.config import load_config
    from pipeline.msa_db import build_msa_db
    from pipeline.runner import run

    tmp = tmp_path_factory.mktemp("release_atlas")
    build_msa_db([str(UNIREF)], str(tmp / "uniref90"), tool="hmmer")
    cfg = tiny_config(tmp, 400, msa={"tool": "hmmer", "db": tmp / "uniref90", "iterations": 1})
    atlas = tmp / "atlas"
    run([_input_fasta(tmp / "input.fasta")], atlas, load_config(cfg), progress=False)
    return atlas


@pytest.fixture(scope="session")
def release(release_atlas, tmp_path_factory) -> Path:
    """A release of the whole atlas in plain numbered shards of 4 entries (read-only: copy to corrupt)."""
    from storage.release import ExportOptions, export_release

    dest = tmp_path_factory.mktemp("release") / "release"
    export_release(str(release_atlas), str(dest), ExportOptions(by="none", shard_size=4, engine="threads"))
    return dest
