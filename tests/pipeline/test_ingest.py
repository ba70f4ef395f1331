"""Tests for pipeline.ingest: reading, header parsing, the validation gate, hashes.

Expected values are written by hand from the files (line numbers, header fields), come from
AlphaFold DB (CRC64 ``sequenceChecksum``) or from the ``md5sum``/``sha256sum`` commands.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import tempfile
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.errors import InputError
from pipeline.ingest import (
    REJECT_REASONS,
    AcceptedRecord,
    IngestPolicy,
    RejectedRecord,
    ingest,
    ingest_many,
    iter_records,
    iter_records_many,
    parse_header,
    sequence_hashes,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "uniprot"
SAMPLE = DATA / "sample.fasta"
MALFORMED = DATA / "malformed.fasta"
ECOLI = Path(__file__).resolve().parents[2] / "examples" / "ecoli_sample.fasta"

P00221_HEADER = (
    "sp|P00221|FER1_SPIOL Ferredoxin-1, chloroplastic OS=Spinacia oleracea OX=3562 GN=PETF PE=1 SV=1"
)
P00221_SEQ = (
    "MAATTTTMMGMATTFVPKPQAPPMMAALPSNTGRSLFGLKTGSRGGRMTMAAYKVTLVTPTGNVEFQCPDDVYILDAAEEEGIDLPYS"
    "CRAGSCSSCAGKLKTGSLNQDDQSFLDDDQIDEGWVLTCAAYPVSDVTIETHKEEELTA"
)

# Every record of malformed.fasta under the default policy: (record_index, header line, outcome).
MALFORMED_EXPECTED: list[tuple[int, int, str]] = [
    (0, 1, "malformed_record"),
    (1, 4, "empty_sequence"),
    (2, 5, "malformed_header"),
    (3, 7, "invalid_character"),
    (4, 10, "invalid_character"),
    (5, 12, "invalid_character"),
    (6, 14, "internal_stop"),
    (7, 16, "accepted"),
    (8, 18, "accepted"),
    (9, 22, "accepted"),
    (10, 24, "too_short"),
    (11, 26, "too_long"),
    (12, 73, "nonstandard_residue"),
    (13, 75, "nonstandard_residue"),
    (14, 77, "nonstandard_residue"),
    (15, 79, "accepted"),
    (16, 83, "duplicate_accession"),
    (17, 85, "accepted"),
    (18, 88, "internal_stop"),
    (19, 91, "accepted"),
]


def outcome(rec: AcceptedRecord | RejectedRecord) -> str:
    return "accepted" if isinstance(rec, AcceptedRecord) else rec.code


def by_index(records: list[AcceptedRecord | RejectedRecord]) -> dict[int, AcceptedRecord | RejectedRecord]:
    return {r.record_index: r for r in records}


# ------------------------------------------------------------------------------------------
# malformed.fasta: every reject code, with line numbers


def test_malformed_every_record_outcome_and_line() -> None:
    records = list(iter_records(MALFORMED))
    assert [(r.record_index, r.line, outcome(r)) for r in records] == MALFORMED_EXPECTED


def test_malformed_covers_every_reject_code() -> None:
    codes = {r.code for r in ingest(MALFORMED).rejected}
    codes |= {r.code for r in ingest(MALFORMED, IngestPolicy(terminal_stop="reject")).rejected}
    assert codes == set(REJECT_REASONS)


def test_malformed_details_and_raw_text() -> None:
    recs = by_index(list(iter_records(MALFORMED)))
    stray = recs[0]
    assert isinstance(stray, RejectedRecord)
    assert stray.header is None and stray.accession is None
    assert stray.raw_sequence.startswith("FoldAtlas ingest test file")
    assert stray.raw_sequence.endswith("must become a malformed_record reject.")

    expected_details = {
        2: "header line has no accession after '>'",
        3: "character '1' at position 16 (line 9)",
        4: "character '-' at position 14 (line 11)",
        5: "character '.' at position 14 (line 13)",
        6: "'*' at position 11 of 23 (line 15)",
        10: "length 15 < min_length 16",
        11: "length 2701 > max_length 2700",
        12: "letter 'X' at position 18 (line 74; policy for X is 'reject')",
        13: "letter 'U' at position 23 (line 76; policy for U is 'reject')",
        14: "letter 'O' at position 11 (line 78; policy for O is 'reject')",
        18: "'*' at position 18 of 23 (line 90)",
    }
    for index, detail in expected_details.items():
        rec = recs[index]
        assert isinstance(rec, RejectedRecord)
        assert rec.detail == detail
        assert rec.source == str(MALFORMED)

    digits = recs[3]
    assert isinstance(digits, RejectedRecord)
    assert digits.header == "digits1 digits in the sequence"
    assert digits.accession == "digits1"
    assert digits.raw_sequence == "MKTAYIAKQR\nQISFV1KSHFSRQ"  # nothing lost, line breaks kept

    header_only = recs[2]
    assert isinstance(header_only, RejectedRecord)
    assert header_only.header == "" and header_only.raw_sequence == "MKTAYIAKQRQISFVKSHFSRQ"

    dup = recs[16]
    assert isinstance(dup, RejectedRecord)
    assert dup.accession == "P00221"
    assert "record 8 (line 18)" in dup.detail and "identical sequence" in dup.detail
    assert dup.raw_sequence == P00221_SEQ


def test_malformed_accepted_records_are_normalised() -> None:
    recs = by_index(list(iter_records(MALFORMED)))
    stop2, lower, blank, crlf = recs[7], recs[9], recs[15], recs[17]
    assert isinstance(stop2, AcceptedRecord)
    assert stop2.sequence == "MKTAYIAKQRQISFVKSHFSRQLEER" and stop2.length == 26
    assert stop2.notes == ("stripped terminal *",)
    assert isinstance(lower, AcceptedRecord)
    assert lower.sequence == "MKTAYIAKQRQISFVKSHFSRQLEERLGLIE"
    assert lower.notes == ("upper-cased 31 lower-case residues",)
    assert isinstance(blank, AcceptedRecord)
    assert blank.sequence == "MKTAYIAKQRQISFVKSHFSRQLEERLGLIE"
    assert isinstance(crlf, AcceptedRecord)
    assert crlf.header == "crlf1 Windows line endings, accepted"  # no '\r'
    assert crlf.sequence == "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
    mgyp = recs[19]
    assert isinstance(mgyp, AcceptedRecord)
    assert (mgyp.accession, mgyp.description, mgyp.is_reviewed) == ("MGYP000123456789", "FL=1", None)
    p00221 = recs[8]
    assert isinstance(p00221, AcceptedRecord)
    assert p00221.sequence == P00221_SEQ and p00221.header == P00221_HEADER


def test_terminal_stop_reject_policy() -> None:
    rec = by_index(list(iter_records(MALFORMED, IngestPolicy(terminal_stop="reject"))))[7]
    assert isinstance(rec, RejectedRecord)
    assert (rec.code, rec.line, rec.detail) == (
        "terminal_stop",
        16,
        "terminal '*' at position 27 (terminal_stop = 'reject')",
    )
    assert rec.raw_sequence == "MKTAYIAKQRQISFVKSHFSRQLEER*"


# ------------------------------------------------------------------------------------------
# Policy variants


def test_policy_map() -> None:
    policy = IngestPolicy.model_validate(
        {"nonstandard": {"U": "map", "O": "map", "B": "map", "Z": "map", "J": "map", "X": "map"}}
    )
    recs = by_index(list(iter_records(MALFORMED, policy)))
    sec, pyl, xres = recs[13], recs[14], recs[12]
    assert isinstance(sec, AcceptedRecord)
    assert sec.sequence == "MKTAYIAKQRQISFVKSHFSRQCEERLGLIE"
    assert sec.notes == ("mapped U->C at 23",)
    assert sec.sha256 == hashlib.sha256(b"MKTAYIAKQRQISFVKSHFSRQCEERLGLIE").hexdigest()
    assert isinstance(pyl, AcceptedRecord)
    assert pyl.sequence == "MKTAYIAKQRKISFVKSDFSRQEEERLGLIE"
    assert pyl.notes == ("mapped O->K at 11", "mapped B->D at 18", "mapped Z->E at 23", "mapped J->L at 27")
    assert isinstance(xres, RejectedRecord)  # X cannot be mapped
    assert xres.code == "nonstandard_residue" and "X cannot be mapped" in xres.detail


def test_policy_allow() -> None:
    recs = by_index(list(iter_records(MALFORMED, IngestPolicy.model_validate({"nonstandard": "allow"}))))
    xres, pyl = recs[12], recs[14]
    assert isinstance(xres, AcceptedRecord) and xres.sequence == "MKTAYIAKQRQISFVKSXFSRQLEER"
    assert xres.notes == ("kept X at 18",)
    assert isinstance(pyl, AcceptedRecord) and pyl.sequence == "MKTAYIAKQROISFVKSBFSRQZEERJGLIE"

    sample = ingest(SAMPLE, IngestPolicy.model_validate({"nonstandard": {"X": "allow"}}))
    assert len(sample.accepted) == 38
    assert sample.reject_counts() == {"too_short": 1, "too_long": 1}


def test_policy_keep_duplicates() -> None:
    recs = by_index(list(iter_records(MALFORMED, IngestPolicy(duplicate_accessions="keep"))))
    dup = recs[16]
    assert isinstance(dup, AcceptedRecord)
    assert dup.accession == "P00221" and dup.line == 83
    assert dup.notes == (f"duplicate accession: also record 8 (line 18) of {MALFORMED}, identical sequence",)


def test_policy_length_bounds() -> None:
    result = ingest(
        SAMPLE, IngestPolicy.model_validate({"min_length": 13, "max_length": 7096, "nonstandard": "allow"})
    )
    assert result.rejected == [] and len(result.accepted) == 40


def test_policy_validation() -> None:
    assert IngestPolicy().nonstandard.U == "reject"
    assert (IngestPolicy().min_length, IngestPolicy().max_length) == (16, 2700)
    with pytest.raises(ValidationError):
        IngestPolicy(min_length=100, max_length=50)
    with pytest.raises(ValidationError):
        IngestPolicy.model_validate({"nonstandard": {"U": "convert"}})
    with pytest.raises(ValidationError):
        IngestPolicy.model_validate({"nonstandard": {"Q": "map"}})
    with pytest.raises(ValidationError):
        IngestPolicy.model_validate({"terminal_stop": "keep"})
    with pytest.raises(ValidationError):
        IngestPolicy.model_validate({"min_lenght": 10})


# ------------------------------------------------------------------------------------------
# Headers


def test_uniprot_header_p00221() -> None:
    h = parse_header(">" + P00221_HEADER)
    assert h.accession == "P00221"
    assert h.uniprot_id == "FER1_SPIOL"
    assert h.description == "Ferredoxin-1, chloroplastic"
    assert h.organism == "Spinacia oleracea"
    assert h.tax_id == 3562
    assert h.gene == "PETF"
    assert h.is_reviewed is True
    assert h.protein_existence == 1
    assert h.sequence_version == 1


def test_uniprot_headers_from_sample_file() -> None:
    recs = {r.accession: r for r in ingest(SAMPLE).accepted}
    fen = recs["A3CWV2"]
    assert (fen.uniprot_id, fen.description) == ("FEN_METMJ", "Flap endonuclease 1")
    assert fen.organism == "Methanoculleus marisnigri (strain ATCC 35101 / DSM 1498 / JR1)"
    assert (fen.tax_id, fen.gene, fen.is_reviewed, fen.protein_existence, fen.sequence_version) == (
        368407, "fen", True, 3, 1,
    )  # fmt: skip
    fha = recs["A0A1D5P1X9"]
    assert (fha.description, fha.organism, fha.tax_id, fha.gene) == (
        "FHA domain-containing protein", "Gallus gallus", 9031, None,
    )  # fmt: skip
    assert (fha.is_reviewed, fha.protein_existence) == (False, 4)
    bif = recs["A0A432QAS4"]
    assert bif.description == (
        "Bifunctional 4'-phosphopantothenoylcysteine decarboxylase/phosphopantothenoylcysteine synthetase (Fragment)"
    )
    assert (bif.organism, bif.tax_id, bif.gene) == ("Desulfobulbus sp.", 895, "DSY50_03665")
    assert recs["B8CSY5"].organism == "Shewanella piezotolerans (strain WP3 / JCM 13877)"


def test_uniprot_header_edge_cases() -> None:
    quoted = parse_header(
        ">tr|A0A2L2NMZ0|A0A2L2NMZ0_9NOSO Histidine kinase OS=Nostoc sp. 'Lobaria pulmonaria (5183) "
        "cyanobiont' OX=1618022 GN=NLP_1471 PE=4 SV=1"
    )
    assert quoted.organism == "Nostoc sp. 'Lobaria pulmonaria (5183) cyanobiont'"
    assert (quoted.tax_id, quoted.gene, quoted.is_reviewed) == (1618022, "NLP_1471", False)

    reordered = parse_header("sp|P12345|ABC_HUMAN Some protein GN=ABC OX=9606 SV=2 OS=Homo sapiens PE=1")
    assert (reordered.description, reordered.organism, reordered.tax_id) == (
        "Some protein",
        "Homo sapiens",
        9606,
    )
    assert (reordered.gene, reordered.sequence_version, reordered.protein_existence) == ("ABC", 2, 1)

    # '=' inside the description, and a key-like word that does not fit (GN with spaces)
    odd = parse_header("tr|Q0|Q0_X Ratio a=b GN=not a gene name OS=Mus musculus OX=10090 PE=4 SV=1")
    assert odd.description == "Ratio a=b GN=not a gene name"
    assert (odd.organism, odd.tax_id, odd.gene) == ("Mus musculus", 10090, None)

    bare = parse_header(">sp|P00221|FER1_SPIOL")
    assert (bare.accession, bare.uniprot_id, bare.description, bare.organism) == (
        "P00221",
        "FER1_SPIOL",
        "",
        None,
    )
    isoform = parse_header(">sp|P00221-2|FER1_SPIOL Isoform 2 of Ferredoxin-1 OS=Spinacia oleracea OX=3562")
    assert (isoform.accession, isoform.description, isoform.tax_id) == (
        "P00221-2",
        "Isoform 2 of Ferredoxin-1",
        3562,
    )


@pytest.mark.parametrize(
    ("header", "accession", "description"),
    [
        (
            ">UniRef90_A0A5A9P0L4 Peptidylprolyl isomerase n=1 Tax=Triplophysa tibetana TaxID=1572043 RepID=A0A5A9P0L4_9TELE",
            "UniRef90_A0A5A9P0L4",
            "Peptidylprolyl isomerase n=1 Tax=Triplophysa tibetana TaxID=1572043 RepID=A0A5A9P0L4_9TELE",
        ),
        (">MGYP000166713049 FL=1 CR=0", "MGYP000166713049", "FL=1 CR=0"),
        (">my_protein some text", "my_protein", "some text"),
        (">  spaced   id  ", "spaced", "id"),
        (">sp|P00221 two fields only", "sp|P00221", "two fields only"),
    ],
)
def test_other_headers(header: str, accession: str, description: str) -> None:
    h = parse_header(header)
    assert (h.accession, h.description) == (accession, description)
    assert (h.uniprot_id, h.organism, h.tax_id, h.gene, h.is_reviewed) == (None, None, None, None, None)
    assert (h.protein_existence, h.sequence_version) == (None, None)


def test_header_without_accession() -> None:
    assert parse_header(">").accession is None
    assert parse_header(">   ").accession is None


# ------------------------------------------------------------------------------------------
# Hashes


def test_crc64_matches_alphafold_db() -> None:
    # AFDB v4 sequenceChecksum of AF-P00221-F1 and AF-O05023-F1 (from their mmCIF files)
    assert sequence_hashes(P00221_SEQ)[1] == "76045050A0AA8697"
    o05023 = (
        "MRGRTRIGKFTTCGERNPKKVARTQPTKKDLKTQNPILHSDQGWLYQMVGYQAILRENSIQQNMSRKGNYLDNNAMENFFGRLKTE"
        "CYYDKRFETFKQLKKQLMSIFIITTMITFRGN"
    )
    assert sequence_hashes(o05023)[1] == "040C20A2D5BAA5C7"


def test_md5_and_sha256_independent_values() -> None:
    # from: printf '%s' <P00221 sequence> | md5sum   (and | sha256sum)
    sha256, crc, md5 = sequence_hashes(P00221_SEQ)
    assert md5 == "a7b34ef8d9bad1daabfb333c432d3496"
    assert sha256 == "ba793706314dc09c65f1cca24fca8b855023e8f8a4c50e9f08f0fb5ec0093c70"
    assert len(crc) == 16 and crc == crc.upper()


@pytest.mark.parametrize("seq", ["A", "MKV", "ACDEFGHIKLMNPQRSTVWY" * 5])
def test_hashes_match_hashlib(seq: str) -> None:
    sha256, _, md5 = sequence_hashes(seq)
    assert sha256 == hashlib.sha256(seq.encode()).hexdigest()
    assert md5 == hashlib.md5(seq.encode()).hexdigest()


def test_accepted_record_hashes_and_afdb_metadata() -> None:
    rec = by_index(list(iter_records(MALFORMED)))[8]
    assert isinstance(rec, AcceptedRecord)
    assert (rec.sha256, rec.crc64, rec.md5) == sequence_hashes(P00221_SEQ)
    meta = rec.afdb_metadata()
    assert meta["uniprotAccession"] == "P00221" and meta["uniprotId"] == "FER1_SPIOL"
    assert meta["sequenceChecksum"] == "76045050A0AA8697"
    assert meta["organismScientificName"] == "Spinacia oleracea" and meta["taxId"] == 3562
    assert (meta["isReviewed"], meta["uniprotStart"], meta["uniprotEnd"]) == (True, 1, 147)
    mgyp = by_index(list(iter_records(MALFORMED)))[19]
    assert isinstance(mgyp, AcceptedRecord)
    assert mgyp.afdb_metadata()["uniprotAccession"] is None


# ------------------------------------------------------------------------------------------
# The real sample files


def test_sample_counts_and_extremes() -> None:
    result = ingest(SAMPLE)
    assert result.n_read == 40
    assert len(result.accepted) == 35
    assert result.reject_counts() == {"too_short": 1, "too_long": 1, "nonstandard_residue": 3}
    rejected = {r.accession: r for r in result.rejected}
    assert rejected["Q8X4F5"].code == "too_short"
    assert rejected["Q8X4F5"].detail == "length 13 < min_length 16"
    assert rejected["A0A8A9J5M6"].code == "too_long"
    assert rejected["A0A8A9J5M6"].detail == "length 7096 > max_length 2700"
    assert {a for a, r in rejected.items() if r.code == "nonstandard_residue"} == {
        "A0A2E5T8Y9", "A0A1Q7VVJ2", "A0A159KM53",
    }  # fmt: skip
    assert sum(r.length for r in result.accepted) == 5562
    assert max(r.length for r in result.accepted) == 333
    assert min(r.length for r in result.accepted) == 17
    assert all(r.notes == () for r in result.accepted)


def test_sample_accessions_match_file() -> None:
    headers = [
        ln[1:].rstrip("\n") for ln in SAMPLE.read_text().splitlines(keepends=True) if ln.startswith(">")
    ]
    records = list(iter_records(SAMPLE))
    assert [r.header for r in records] == headers
    assert [r.accession for r in records] == [h.split("|")[1] for h in headers]
    assert [r.line for r in records] == list(range(1, 80, 2))


def test_ecoli_example() -> None:
    result = ingest(ECOLI)
    assert (result.n_read, len(result.accepted), result.rejected) == (100, 100, [])
    assert all(16 <= r.length <= 400 for r in result.accepted)
    assert all(r.is_reviewed and r.tax_id == 83333 for r in result.accepted)
    assert {r.organism for r in result.accepted} == {"Escherichia coli (strain K12)"}
    assert len({r.accession for r in result.accepted}) == 100


@pytest.mark.parametrize("path", [SAMPLE, MALFORMED, ECOLI], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "policy",
    [IngestPolicy(), IngestPolicy.model_validate({"nonstandard": "allow", "duplicate_accessions": "keep"})],
)
def test_accepted_plus_rejected_equals_read(path: Path, policy: IngestPolicy) -> None:
    text = path.read_text()
    n_headers = sum(1 for ln in text.splitlines() if ln.startswith(">"))
    n_stray = 0 if text.lstrip().startswith(">") else 1
    result = ingest(path, policy)
    assert result.n_read == n_headers + n_stray
    assert len(result.accepted) + len(result.rejected) == result.n_read
    indices = sorted([r.record_index for r in result.accepted] + [r.record_index for r in result.rejected])
    assert indices == list(range(result.n_read))


# ------------------------------------------------------------------------------------------
# Reading: gzip, streaming, multiple files, unreadable inputs


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    plain = ingest(SAMPLE)
    for name in ("sample.fasta.gz", "sample_no_extension"):
        target = tmp_path / name
        target.write_bytes(gzip.compress(SAMPLE.read_bytes()))
        zipped = ingest(target)
        assert [dataclasses.replace(r, source="") for r in zipped.accepted] == [
            dataclasses.replace(r, source="") for r in plain.accepted
        ]
        assert zipped.n_read == plain.n_read


def test_plain_file_with_gz_extension_is_read(tmp_path: Path) -> None:
    target = tmp_path / "not_really.fasta.gz"
    target.write_bytes(SAMPLE.read_bytes())
    assert len(ingest(target).accepted) == 35


def test_iter_records_streams(tmp_path: Path) -> None:
    # A truncated gzip: the records before the cut arrive first, then InputError.
    data = gzip.compress(ECOLI.read_bytes())
    target = tmp_path / "truncated.fasta.gz"
    target.write_bytes(data[: len(data) // 2])
    it = iter_records(target)
    assert isinstance(it, types.GeneratorType)
    first = next(it)
    assert isinstance(first, AcceptedRecord) and first.record_index == 0
    with pytest.raises(InputError, match="truncated"):
        list(it)


def test_ingest_many_duplicates_span_files(tmp_path: Path) -> None:
    copy = tmp_path / "copy.fasta"
    copy.write_bytes(SAMPLE.read_bytes())
    result = ingest_many([SAMPLE, copy])
    assert result.n_read == 80
    assert len(result.accepted) == 35
    second = [r for r in result.rejected if r.source == str(copy)]
    assert [r.code for r in second].count("duplicate_accession") == 35
    assert {r.record_index for r in second} == set(range(40))  # indices restart per file
    kept = ingest_many([SAMPLE, copy], IngestPolicy(duplicate_accessions="keep"))
    assert len(kept.accepted) == 70
    streamed = list(iter_records_many([SAMPLE, copy]))
    assert [outcome(r) for r in streamed] == [outcome(r) for r in [*iter_records(SAMPLE)]] + [
        "duplicate_accession" if isinstance(r, AcceptedRecord) else r.code for r in iter_records(SAMPLE)
    ]


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        ingest(tmp_path / "missing.fasta")
    with pytest.raises(InputError, match="directory"):
        ingest(tmp_path)
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    with pytest.raises(InputError, match="no FASTA record"):
        ingest(empty)
    text = tmp_path / "notes.txt"
    text.write_text("accession,sequence\nP00221,MAAT\n")
    with pytest.raises(InputError, match="no FASTA record") as err:
        ingest(text)
    assert "hint:" in str(err.value)
    bz = tmp_path / "sample.fasta.bz2"
    bz.write_bytes(bz2.compress(SAMPLE.read_bytes()))
    with pytest.raises(InputError, match="bzip2"):
        ingest(bz)
    bad_gzip = tmp_path / "bad.fasta.gz"
    bad_gzip.write_bytes(b"\x1f\x8b" + b"this is not a deflate stream" * 10)
    with pytest.raises(InputError, match="gzip"):
        ingest(bad_gzip)
    binary = tmp_path / "binary.fasta"
    binary.write_bytes(b">x\n" + bytes(range(256)))
    with pytest.raises(InputError, match="binary"):
        ingest(binary)


def test_blank_preamble_is_not_a_record(tmp_path: Path) -> None:
    target = tmp_path / "blank_lead.fasta"
    target.write_text("\n   \n>a1 x\nMKTAYIAKQRQISFVKSHFSRQ\n")
    records = list(iter_records(target))
    assert [(r.record_index, r.line, outcome(r)) for r in records] == [(0, 3, "accepted")]


def test_star_only_sequence_is_empty(tmp_path: Path) -> None:
    target = tmp_path / "star.fasta"
    target.write_text(">a1\n*\n")
    (rec,) = list(iter_records(target))
    assert isinstance(rec, RejectedRecord) and rec.code == "empty_sequence"


# ------------------------------------------------------------------------------------------
# Property: layout does not change what is accepted

_residues = st.text(alphabet="ACDEFGHIKLMNPQRSTVWY", min_size=16, max_size=300)
_record = st.tuples(_residues, st.booleans(), st.booleans())  # sequence, lower-case, terminal '*'


def _write_fasta(
    path: Path,
    records: list[tuple[str, str]],
    wrap: int | None,
    endings: list[str],
    compress: bool,
    blank_between: bool,
) -> None:
    lines: list[str] = []
    for header, seq in records:
        lines.append(">" + header)
        step = wrap or max(len(seq), 1)
        lines.extend(seq[i : i + step] for i in range(0, len(seq), step))
        if blank_between:
            lines.append("")
    text = "".join(line + endings[i % len(endings)] for i, line in enumerate(lines))
    data = text.encode("ascii")
    path.write_bytes(gzip.compress(data) if compress else data)


def _comparable(rec: AcceptedRecord) -> AcceptedRecord:
    # Line numbers and the source path depend on the layout; everything else must not.
    return dataclasses.replace(rec, source="", line=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recs=st.lists(_record, min_size=1, max_size=8),
    wrap=st.one_of(st.none(), st.integers(min_value=1, max_value=120)),
    endings=st.lists(st.sampled_from(["\n", "\r\n"]), min_size=1, max_size=5),
    compress=st.booleans(),
    blank_between=st.booleans(),
)
def test_layout_roundtrip(
    recs: list[tuple[str, bool, bool]],
    wrap: int | None,
    endings: list[str],
    compress: bool,
    blank_between: bool,
) -> None:
    records = [
        (f"sp|Q{i:05d}|T{i}_TEST Test protein {i} OS=Testus organismus (strain T) OX={1000 + i} GN=tst{i} PE=3 SV=1",
         (seq.lower() if lower else seq) + ("*" if stop else ""))
        for i, (seq, lower, stop) in enumerate(recs)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        base, variant = Path(tmp) / "base.fasta", Path(tmp) / "variant.fasta"
        _write_fasta(base, records, None, ["\n"], compress=False, blank_between=False)
        _write_fasta(variant, records, wrap, endings, compress, blank_between)
        expected = ingest(base)
        got = ingest(variant)
    assert got.n_read == expected.n_read == len(records)
    assert [_comparable(r) for r in got.accepted] == [_comparable(r) for r in expected.accepted]
    assert len(got.accepted) == len(records)
    for rec, (seq, _lower, stop) in zip(got.accepted, recs, strict=True):
        assert rec.sequence == seq
        assert rec.sha256 == hashlib.sha256(seq.encode()).hexdigest()
        assert ("stripped terminal *" in rec.notes) == stop
        assert rec.tax_id == 1000 + rec.record_index
