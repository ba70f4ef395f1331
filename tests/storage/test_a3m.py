"""Tests for storage.a3m: A3M read/write, Stockholm -> A3M, depth and Neff.

Expected values come from the real files (ColabFold's A3M bytes, HHblits A3M query rows), from an
independent Stockholm reader (pyhmmer's Easel) and from a slow direct Neff computation.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import storage.a3m as a3m_mod
from storage.a3m import (
    A3M,
    MSAError,
    msa_depth,
    msa_neff,
    neff_of_aligned,
    parse_a3m,
    stockholm_to_a3m,
    write_a3m,
)

MSA = Path(__file__).resolve().parent.parent / "data" / "msa"
COLABFOLD = MSA / "colabfold_test_fab41" / "test_fab41_first500.a3m"
OPENFOLD = MSA / "openfold_alphafold2_pipeline"


# ---------------------------------------------------------------------------- A3M read / write


def test_colabfold_a3m_round_trips_byte_for_byte():
    raw = COLABFOLD.read_bytes()
    a3m = parse_a3m(raw.decode())
    assert write_a3m(a3m).encode() == raw
    assert a3m.header_comment == "59\t1"
    assert len(a3m) == msa_depth(a3m) == 500
    assert a3m.names[0] == "101" and a3m.descriptions[0] == ""
    assert a3m.query == "PIAQIHILEGRSDEQKETLIREVSEAISRSLDAPLTSVRVIITEMAKGHFGIGGELASK"
    assert a3m.names[1] == "A0A7C4BER2"
    assert a3m.descriptions[1] == "87\t0.406\t6.001E-18\t0\t58\t59\t1\t59\t65"


def test_colabfold_aligned_rows_have_query_length():
    a3m = parse_a3m(COLABFOLD.read_text())
    lines = COLABFOLD.read_text().splitlines()
    seqs = [line for line in lines[1:] if not line.startswith(">")]
    expected = [re.sub("[a-z]", "", s) for s in seqs]  # independent: drop lower case
    assert a3m.aligned() == expected
    assert {len(r) for r in a3m.aligned()} == {59}
    assert any(any(c.islower() for c in row) for row in a3m.rows)  # the file does have insertions


def test_hhblits_a3m_round_trips_byte_for_byte():
    raw = (OPENFOLD / "1psm_A" / "bfd_uniclust_hits.a3m").read_text()
    a3m = parse_a3m(raw)
    assert write_a3m(a3m) == raw
    assert a3m.header_comment is None
    assert a3m.names[1] == "tr|A0A024VQI0|A0A024VQI0_PLAFA"
    assert a3m.descriptions[1].startswith("Uncharacterized protein OS=Plasmodium falciparum")


def test_name_only_headers_lose_only_their_trailing_space():
    raw = (OPENFOLD / "example_query" / "bfd_uniclust_hits.a3m").read_text()
    a3m = parse_a3m(raw)
    assert ">SRR6202048_823629 \n" in raw
    expected = re.sub(r"(?m)^(>\S+)[ \t]+$", r"\1", raw)
    assert write_a3m(a3m) == expected
    assert parse_a3m(write_a3m(a3m)) == a3m


def test_wrapped_crlf_and_blank_lines_are_read():
    text = ">q desc\r\nMKV\r\nLA\r\n\r\n>h1\r\n-Kv\r\nLa-A\r\n"
    a3m = parse_a3m(text)
    assert a3m.names == ("q", "h1") and a3m.descriptions == ("desc", "")
    assert a3m.rows == ("MKVLA", "-KvLa-A")
    assert a3m.aligned() == ["MKVLA", "-KL-A"]


def test_lists_become_tuples_and_records_are_hashable():
    a = A3M(names=["q", "h"], descriptions=["", "x"], rows=["MK", "M-"])
    assert a.names == ("q", "h") and isinstance(hash(a), int)
    assert a == parse_a3m(write_a3m(a))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no sequences"),
        ("MKV\n>q\nMKV\n", "text before the first"),
        (">q\nMKV\n>h\n", "has no sequence"),
        (">q\nMkV\n>h\nMKV\n", "upper-case residues only"),
        (">q\nM-V\n", "upper-case residues only"),
        (">q\nMKV\n>h\nMK\n", "has 2 aligned columns, the query has 3"),
        (">q\nMKV\n>h\nMKVL\n", "has 4 aligned columns"),
        (">q\nMKV\n>h\nM1V\n", "invalid characters ['1']"),
        (">q\nMKV\n\x00>q2\nMKV\n", "NUL"),
        (">\nMKV\n", "header without a name"),
    ],
)
def test_malformed_a3m_raises_clear_msa_error(text, message):
    with pytest.raises(MSAError) as info:
        parse_a3m(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("names", "descriptions", "rows", "message"),
    [
        (("q", "a\nb"), ("", ""), ("MKV", "MKV"), "name 'a\\nb' must be non-empty"),
        (("q", ""), ("", ""), ("MKV", "MKV"), "name '' must be non-empty"),
        (("q", "h"), ("", "x\ry"), ("MKV", "MKV"), "description contains a line break"),
        (("q", "h", "g"), ("", "", ""), ("MKV", "MKV\nMKV", "MKV"), "invalid characters ['\\n']"),
        (("q", "h"), ("", ""), ("MKV", "MKÉ"), "invalid characters ['É']"),
        (("q", "h"), ("", ""), ("MKV", "MKVa-"), "has 4 aligned columns"),
    ],
)
def test_a3m_checks_every_record(names, descriptions, rows, message):
    """Construction checks all records at once; the error still names the first bad one."""
    with pytest.raises(MSAError) as info:
        A3M(names=names, descriptions=descriptions, rows=rows)
    assert message in str(info.value)
    good = A3M(names=("q", *[f"h{i}" for i in range(200)]), descriptions=("",) * 201,
               rows=("MKV", *["mK-aV"] * 200))
    assert good.aligned() == ["MKV"] + ["K-V"] * 200


def test_msa_error_is_a_foldatlas_error():
    from pipeline.errors import FoldAtlasError

    assert issubclass(MSAError, FoldAtlasError)


_names = st.from_regex(r"[A-Za-z0-9_|.:/\-]{1,12}", fullmatch=True)
_descs = st.one_of(st.just(""), st.from_regex(r"[ -~]{0,20}(\t[ -~]{0,8}){0,3}", fullmatch=True))


@st.composite
def a3m_records(draw):
    width = draw(st.integers(1, 12))
    query = draw(st.text("ACDEFGHIKLMNPQRSTVWYX", min_size=width, max_size=width))
    n = draw(st.integers(0, 6))
    rows = [query]
    for _ in range(n):
        cols = draw(st.lists(st.sampled_from("ACDKLW-"), min_size=width, max_size=width))
        out = []
        for c in cols:
            out.append(draw(st.text("acdklw.", max_size=2)))
            out.append(c)
        out.append(draw(st.text("acdklw", max_size=2)))
        rows.append("".join(out))
    names = draw(st.lists(_names, min_size=n + 1, max_size=n + 1))
    descs = draw(st.lists(_descs, min_size=n + 1, max_size=n + 1))
    comment = draw(st.one_of(st.none(), st.from_regex(r"[0-9,]{1,8}\t[0-9,]{1,5}", fullmatch=True)))
    return A3M(names=names, descriptions=descs, rows=rows, header_comment=comment)


@settings(max_examples=100, deadline=None)
@given(a3m_records())
def test_write_then_parse_is_identity(a3m):
    text = write_a3m(a3m)
    assert parse_a3m(text) == a3m
    assert write_a3m(parse_a3m(text)) == text
    assert all(len(r) == len(a3m.query) for r in a3m.aligned())


# ---------------------------------------------------------------------------- Stockholm -> A3M


def _easel_reference(path: Path) -> dict[str, str]:
    """Independent conversion: pyhmmer/Easel reads the Stockholm file, we apply AlphaFold's rule."""
    from pyhmmer import easel

    with easel.MSAFile(str(path), format="stockholm") as fh:
        msa = fh.read()
    rows = dict(zip(msa.names, msa.alignment, strict=True))
    return rows


def _convert(rows: dict[str, str], query_name: str) -> dict[str, str]:
    query = rows[query_name]
    out = {}
    for name, seq in rows.items():
        out[name] = "".join(
            (c.upper() if c not in "-." else "-") if q not in "-." else (c.lower() if c not in "-." else "")
            for q, c in zip(query, seq, strict=True)
        )
    return out


@pytest.mark.parametrize(
    ("path", "query_name", "same_query_a3m"),
    [
        ("example_query/uniref90_hits.sto", "query", "example_query/bfd_uniclust_hits.a3m"),
        ("1psm_A/uniref90_hits.sto", "query", "1psm_A/bfd_uniclust_hits.a3m"),
        ("1psm_A/hmm_output.sto", "1psm_A/1-38", "1psm_A/bfd_uniclust_hits.a3m"),
        ("2crb_A/mgnify_hits.sto", "query", None),
    ],
)
def test_stockholm_to_a3m_matches_easel_reading(path, query_name, same_query_a3m):
    sto = OPENFOLD / path
    a3m = stockholm_to_a3m(sto.read_text())
    assert a3m.names[0] == query_name  # the first sequence line, not the first '#=GS' line
    expected = _convert(_easel_reference(sto), query_name)
    assert dict(zip(a3m.names, a3m.rows, strict=True)) == expected
    assert len(a3m) == len(expected)
    assert {len(r) for r in a3m.aligned()} == {len(a3m.query)}
    if same_query_a3m:  # the HHblits A3M of the same query starts with the same query sequence
        assert a3m.query == parse_a3m((OPENFOLD / same_query_a3m).read_text()).query
    assert parse_a3m(write_a3m(a3m)) == a3m


def test_stockholm_descriptions_and_query_gap_columns():
    a3m = stockholm_to_a3m((OPENFOLD / "example_query" / "uniref90_hits.sto").read_text())
    assert a3m.descriptions[0] == ""
    assert a3m.names[1] == "UniRef90_D7BIZ4/1-73"
    assert a3m.descriptions[1].startswith("[subseq from] Uncharacterized protein n=1 Tax=Meiothermus silvanus")
    mgnify = stockholm_to_a3m((OPENFOLD / "2crb_A" / "mgnify_hits.sto").read_text())
    assert "-" not in mgnify.query and len(mgnify.query) == 97
    assert any(any(c.islower() for c in r) for r in mgnify.rows)  # residues in the query's gap column


def test_stockholm_max_sequences_and_bad_input():
    a3m = stockholm_to_a3m((OPENFOLD / "example_query" / "uniref90_hits.sto").read_text(), max_sequences=5)
    assert len(a3m) == 5
    with pytest.raises(MSAError):
        stockholm_to_a3m(">q\nMKV\n")


# ---------------------------------------------------------------------------- depth and Neff


def _slow_neff(rows: list[str], threshold: float) -> float:
    """Direct definition: identity over columns non-gap in either row; weight 1/cluster size."""

    def identity(a: str, b: str) -> float:
        union = sum(1 for x, y in zip(a, b, strict=True) if x != "-" or y != "-")
        same = sum(1 for x, y in zip(a, b, strict=True) if x != "-" and x == y)
        return 1.0 if union == 0 else same / union

    return sum(1.0 / sum(1 for b in rows if identity(a, b) >= threshold) for a in rows)


@st.composite
def alignments(draw):
    width = draw(st.integers(1, 14))
    base = draw(st.text("ACDX", min_size=width, max_size=width))
    n = draw(st.integers(1, 14))
    rows = []
    for _ in range(n):
        mutate = draw(st.lists(st.booleans(), min_size=width, max_size=width))
        letters = draw(st.text("ACDX-", min_size=width, max_size=width))
        rows.append("".join(m if flip else b for b, m, flip in zip(base, letters, mutate, strict=True)))
    return rows


@settings(max_examples=300, deadline=None)
@given(alignments(), st.sampled_from([0.0, 0.3, 0.5, 0.62, 0.8, 0.9, 1.0]), st.sampled_from([1, 2, 5, 64]),
       st.sampled_from([0, 1, 3, 16]))
def test_neff_equals_direct_computation(rows, threshold, chunk, pivots):
    old = a3m_mod._NEFF_CHUNK, a3m_mod._NEFF_PIVOTS
    try:
        a3m_mod._NEFF_CHUNK = chunk  # columns per early-termination test of a pair
        a3m_mod._NEFF_PIVOTS = pivots  # rows for the triangle-inequality test (0: none)
        assert neff_of_aligned(rows, threshold) == pytest.approx(_slow_neff(rows, threshold), rel=1e-12)
    finally:
        a3m_mod._NEFF_CHUNK, a3m_mod._NEFF_PIVOTS = old


def test_pivot_test_prunes_unrelated_rows_only():
    """Two families of near-identical rows: the pivots separate them (a bound above the close-pair
    limit for every cross-family pair) and never rule out a pair within a family."""
    rng = np.random.default_rng(3)
    fams = [rng.integers(65, 85, size=60, dtype=np.uint8) for _ in range(2)]
    rows = []
    for f in fams:
        for _ in range(20):
            r = f.copy()
            r[rng.choice(60, size=3, replace=False)] = 90  # 3 substitutions: >= 90 % identical
            rows.append(r)
    codes = np.stack(rows)
    dist = a3m_mod._pivot_distances(codes, 4)
    lower = np.abs(dist[:, None, :] - dist[None, :, :]).max(axis=2)
    same = np.equal.outer(np.arange(40) // 20, np.arange(40) // 20)
    true = (codes[:, None, :] != codes[None, :, :]).sum(axis=2)
    assert (lower <= true).all()  # a lower bound of the distance
    assert (lower[~same] > 0.25 * 60).all() and (lower[same] <= 0.25 * 60).all()
    assert neff_of_aligned([r.tobytes().decode() for r in codes]) == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(alignments())
def test_neff_blocks_do_not_change_the_result(rows):
    full = neff_of_aligned(rows, 0.8)
    old = a3m_mod._NEFF_ROW_BLOCK, a3m_mod._NEFF_CHUNK
    try:
        for block, chunk in ((1, 1), (1, 3), (2, 64)):  # early termination after every column, ...
            a3m_mod._NEFF_ROW_BLOCK, a3m_mod._NEFF_CHUNK = block, chunk
            assert neff_of_aligned(rows, 0.8) == pytest.approx(full, rel=1e-12)
    finally:
        a3m_mod._NEFF_ROW_BLOCK, a3m_mod._NEFF_CHUNK = old


def test_neff_simple_values():
    assert neff_of_aligned(["MKV"] * 7) == pytest.approx(1.0)
    assert neff_of_aligned(["MKVL", "AAAA", "CCCC", "----"]) == pytest.approx(4.0)
    # 4/5 identical over the union of 5 columns: exactly at the 0.8 threshold -> one cluster
    assert neff_of_aligned(["MKVLA", "MKVLC"]) == pytest.approx(1.0)
    assert neff_of_aligned(["MKVLA", "MKVCC"]) == pytest.approx(2.0)
    # a gap in one row still counts in the union: 3 same / 4 -> 0.75 < 0.8
    assert neff_of_aligned(["MKVL", "MKV-"]) == pytest.approx(2.0)
    assert neff_of_aligned([]) == 0.0


def test_colabfold_neff_against_row_by_row_numpy_reference():
    a3m = parse_a3m(COLABFOLD.read_text())
    rows = a3m.aligned()
    mat = np.array([list(r) for r in rows])
    res = mat != "-"
    cluster = []
    for i in range(len(rows)):
        union = (res[i] | res).sum(axis=1)
        same = ((mat == mat[i]) & res[i] & res).sum(axis=1)
        ident = np.where(union > 0, same / np.maximum(union, 1), 1.0)
        cluster.append(int((ident >= 0.8).sum()))
    expected = float(np.sum(1.0 / np.array(cluster)))
    neff = msa_neff(a3m)
    assert neff == pytest.approx(expected, rel=1e-12)
    assert msa_depth(a3m) >= neff >= 1.0
    assert neff == pytest.approx(414.934, abs=0.001)  # this file's value, as a regression anchor
