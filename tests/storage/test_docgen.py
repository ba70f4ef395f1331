"""docs/output.md's column and code tables are generated from the schema: they must be current."""

from storage.docgen import DOC, render
from storage.schema import TABLES


def test_output_doc_is_up_to_date():
    text = DOC.read_text()
    assert render(text) == text, "run `python -m storage.docgen` and commit docs/output.md"
    for table, schema in TABLES.items():
        for name in schema.names:
            assert f"| `{name}` |" in text, f"{table}.{name} missing from docs/output.md"
