"""The real AlphaFold DB test files under tests/data/afdb/ (provenance in their README.md)."""

from __future__ import annotations

import csv
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
AFDB = DATA / "afdb"
DICTIONARY = DATA / "dictionaries" / "mmcif_ma_v1.4.2.dic.gz"
ENTRIES = ["P00221", "O05023", "O05012"]  # full mmCIF + PAE JSON copies


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


METADATA = {row["uniprotAccession"]: row for row in read_csv(AFDB / "DERIVED_afdb_metadata_rows_from_cif.csv")}
