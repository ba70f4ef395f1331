"""The block scanner (pipeline/scan.py) reads exactly what the line reader reads.

Expected values come from the line reader (``_raw_records`` + ``_check``, unchanged) and, for the
header fields, from the original regular-expression implementation kept here as the reference;
CRC64 from Biopython.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from Bio.SeqUtils.CheckSum import crc64 as bio_crc64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import IngestPolicy, _check, _raw_records, crc64_hex, header_fields, record_from_lite
from pipeline.scan import BLOCK, reread, scan, scan_blocks

_KEY_RE = re.compile(r"(?:^|\s)(OS|OX|GN|PE|SV)=")


def reference_header(header: str) -> tuple:
    """parse_header as first written: a regex scan of the tail, read from the right."""
    title = header[1:] if header.startswith(">") else header
    parts = title.split(None, 1)
    if not parts:
        return (None, None, "", None, None, None, None, None, None)
    token, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    ids = token.split("|")
    if len(ids) != 3 or ids[0] not in ("sp", "tr") or not ids[1]:
        return (token, None, rest.strip(), None, None, None, None, None, None)
    values: dict[str, str] = {}
    end = len(rest)
    for m in reversed(list(_KEY_RE.finditer(rest))):
        key, value = m.group(1), rest[m.end():end].strip()
        ok = (re.fullmatch(r"\d+", value) is not None if key in ("OX", "PE", "SV")
              else (bool(value) and len(value.split()) == 1) if key == "GN" else bool(value))
        if key in values or not ok:
            break
        values[key] = value
        end = m.start()
    return (ids[1], ids[2] or None, rest[:end].strip(), values.get("OS"),
            int(values["OX"]) if "OX" in values else None, values.get("GN"), ids[0] == "sp",
            int(values["PE"]) if "PE" in values else None, int(values["SV"]) if "SV" in values else None)


_words = st.sampled_from(["Protein", "kinase", "OS=", "OX=", "GN=", "PE=", "SV=", "=", "a=b", "9606", "Homo",
                          "sapiens", "(strain K12)", " ", "  ", "\t", "x", "1", "GN=abc", "OX=12", "PE=1", "SV=2",
                          "OS=Mus musculus", "٣"])


@settings(max_examples=400, deadline=None)
@given(db=st.sampled_from(["sp", "tr", "xx"]), words=st.lists(_words, max_size=14))
def test_header_fields_equal_the_regex_reading(db: str, words: list[str]) -> None:
    header = f"{db}|P12345|NAME_HUMAN " + " ".join(words)
    assert header_fields(header) == reference_header(header)
    canonical = f"{db}|Q1|Q1_X Some protein " + "".join(words) + " OS=Homo sapiens OX=9606 GN=ABC PE=1 SV=1"
    assert header_fields(canonical) == reference_header(canonical)


def test_crc64_equals_biopython() -> None:
    for seq in ("", "M", "MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY" * 150):
        assert crc64_hex(seq.encode()) == bio_crc64(seq)[4:]


_residues = st.text(alphabet="ACDEFGHIKLMNPQRSTVWYacdxXBZU*-1 ", min_size=0, max_size=120)
_header = st.one_of(st.just(""), st.just("   "), st.builds(lambda a, d: f"sp|{a}|N_X {d} OS=Org OX=1 PE=1 SV=1",
                                                            st.sampled_from(["P1", "P2", "Q3"]), st.text("ab =", max_size=6)),
                    st.sampled_from(["plain_id text", "tr|A0A|X", "UniRef90_X n=1", "sp|A|B|C d", "sp||B", "tr|A|",
                                     "tr|A| d", "sp|A", "SP|A|B", "xx|A|B", " sp|A|B", "sp|A|B ", ">>x", ">sp|A|B",
                                     "sp|A|B\td", "sp|é|B", "tr|A|B\x1c", "|", "||", "sp|A|B|", "a|b c|d"]),
                    st.text("sptr|AB x>", min_size=1, max_size=9))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=st.lists(st.tuples(_header, st.lists(_residues, max_size=4)), min_size=1, max_size=8),
       ends=st.lists(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]), min_size=1, max_size=4),
       lead=st.sampled_from(["", "\n", "junk\n"]), final_end=st.booleans(),
       policy=st.sampled_from([IngestPolicy(), IngestPolicy(min_length=1, nonstandard="allow", terminal_stop="reject"),
                               IngestPolicy(min_length=1, max_length=60, fragment_above=30, fragment_window=20,
                                            fragment_step=10)]),
       block=st.sampled_from([BLOCK, 64, 7]))
def test_scan_equals_the_line_reader(recs, ends, lead, final_end, policy, block) -> None:
    """Blocks of 7 and 64 bytes: records (and line ends, CRLF) span block boundaries."""
    lines = [x for h, seqs in recs for x in (">" + h, *seqs)]
    text = lead + "".join(line + ends[i % len(ends)] for i, line in enumerate(lines[:-1])) + lines[-1]
    text += ends[0] if final_end else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.fasta"
        path.write_bytes(text.encode())
        expected = [_check(raw, str(path), policy) for raw in _raw_records(str(path))]
        got = list(scan(str(path), policy, block=block))
        records = [record_from_lite(r) if isinstance(r, tuple) else r for r, *_ in got]
        assert records == expected
        raws = {raw.index: raw for raw in _raw_records(str(path))}
        back = reread(str(path), [(r.record_index, off, n, sub) for r, (_, off, n, sub) in zip(records, got, strict=True)])
        assert {i: (r.header, r.raw_sequence()) for i, r in back.items()} == {
            i: (raws[i].header, raws[i].raw_sequence()) for i in back}


def _clean_file(tmp: Path, headers: list[str], seq: str = "MKTAYIAKQRQISFVKSHFSRQ", end: str = "\n") -> Path:
    path = tmp / "clean.fasta"
    path.write_bytes("".join(f">{h}{end}{seq[:10]}{end}{seq[10:]}{end}" for h in headers).encode())
    return path


def test_clean_records_are_read_as_columns(tmp_path: Path) -> None:
    """Clean records (printable headers, standard letters, LF or CRLF) come as columns, the same
    values as the line reader's (the last chunk of a file or range is read one by one)."""
    headers = ["sp|P1|N_X desc OS=Org OX=1 PE=1 SV=1", "tr|A0A|X", "plain_id text", "sp|A|B|C d", "sp||B",
               "tr|A|", "SP|A|B", "UniRef90_X n=1", "a|b c|d", "sp|A|B|", "|", "x"]
    policy = IngestPolicy()
    for end in ("\n", "\r\n"):
        path = _clean_file(tmp_path, headers, end=end)
        for block in (BLOCK, 61, 7):  # (a first block that ends inside a CRLF goes to the line reader)
            blocks = list(scan_blocks(str(path), policy, block=block))
            clean = [i for b in blocks if b.clean is not None for i in b.clean.record_index.tolist()]
            assert sorted(clean) == list(range(len(headers) - 1)), (end, block)  # the last chunk: one by one
            got = [record_from_lite(r) for r, *_ in scan(str(path), policy, block=block)]
            assert got == [_check(raw, str(path), policy) for raw in _raw_records(str(path))]
            assert [r.accession for r in got] == ["P1", "A0A", "plain_id", "sp|A|B|C", "sp||B", "A", "SP|A|B",
                                                  "UniRef90_X", "a|b", "sp|A|B|", "|", "x"]


def test_unclean_records_are_read_one_by_one(tmp_path: Path) -> None:
    """Headers and sequences the block test leaves to the careful reader: same records, in order."""
    path = tmp_path / "mixed.fasta"
    recs = [("sp|P1|N ", "MKTAYIAKQRQISFVKSHF"), (" sp|P2|N", "MKTAYIAKQRQISFVKSHF"), (">sp|P3|N", "MKTAYIAKQRQISFVKSHF"),
            ("sp|P4|N\td", "MKTAYIAKQRQISFVKSHF"), ("sp|Pé|N", "MKTAYIAKQRQISFVKSHF"), ("sp|P6|N", "mktayiakqrqisfvkshf"),
            ("sp|P7|N", "MKTAYIAKQRQISFVKSHF*"), ("sp|P8|N", "MKTAYIAKQRQXSFVKSHF"), ("sp|P9|N", ""),
            ("sp|P10|N", "MKTAY IAKQRQ\tISFVKSHF"), ("sp|P11|N", "MKT"), ("", "MKTAYIAKQRQISFVKSHF"),
            ("sp|P13|N", "MKTAYIAKQR\rQISFVKSHF"), ("sp|P14|N", "MKTAYIAKQRQISFVKSHF"), ("sp|P15|N", "MKTAYIAKQRQISFVKSHF")]
    path.write_bytes("".join(f">{h}\n{s}\n" for h, s in recs).encode())
    policy = IngestPolicy()
    for block in (BLOCK, 64, 7):
        blocks = list(scan_blocks(str(path), policy, block=block))
        clean = sorted(i for b in blocks if b.clean is not None for i in b.clean.record_index.tolist())
        assert clean == ([] if block == BLOCK else [13]), block  # a lone CR in the first block: the line reader
        got = list(scan(str(path), policy, block=block))
        records = [record_from_lite(r) if isinstance(r, tuple) else r for r, *_ in got]
        assert records == [_check(raw, str(path), policy) for raw in _raw_records(str(path))]
        back = reread(str(path), [(r.record_index, off, n, sub) for r, (_, off, n, sub) in zip(records, got, strict=True)])
        raws = {raw.index: raw for raw in _raw_records(str(path))}
        assert {i: (r.header, r.raw_sequence()) for i, r in back.items()} == {
            i: (raws[i].header, raws[i].raw_sequence()) for i in back}
