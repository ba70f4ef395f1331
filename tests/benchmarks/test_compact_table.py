"""Format 3's built-in geometry table is what benchmarks/compact_table.py derives from the AFDB entries."""

from __future__ import annotations


def test_compact_table_is_derived_from_the_afdb_entries() -> None:
    from benchmarks import compact_table

    assert compact_table.main(["--check"]) == 0
