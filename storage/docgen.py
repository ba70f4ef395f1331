"""Generate the column tables of ``docs/output.md`` from :mod:`storage.schema`.

``python -m storage.docgen`` rewrites the blocks between ``<!-- columns:TABLE -->`` and
``<!-- /columns:TABLE -->`` markers; a test checks the committed file is up to date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pyarrow as pa

from storage.schema import TABLES

DOC = Path(__file__).resolve().parent.parent / "docs" / "output.md"


def _type(t: pa.DataType) -> str:
    return str(t).replace("large_", "").replace("timestamp[us, tz=UTC]", "timestamp (UTC)")


def columns_markdown(table: str) -> str:
    lines = ["| column | type | null | unit | meaning |", "|---|---|---|---|---|"]
    for f in TABLES[table]:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        lines.append(f"| `{f.name}` | {_type(f.type)} | {'yes' if f.nullable else 'no'} | "
                     f"{meta.get('unit', '')} | {meta.get('description', '')} |")
    return "\n".join(lines)


def codes_markdown(kind: str) -> str:
    from pipeline.import_files import IMPORT_REJECT_REASONS
    from pipeline.ingest import REJECT_REASONS
    from storage.schema import FAILURE_REASONS, FOLD_ROUTES

    codes = {"rejects": REJECT_REASONS, "imports": IMPORT_REJECT_REASONS, "routes": FOLD_ROUTES}.get(kind, FAILURE_REASONS)
    return "\n".join(["| code | meaning |", "|---|---|", *(f"| `{c}` | {d} |" for c, d in codes.items())])


def _replace_block(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {marker} -->\n)(?:.*?\n)?(<!-- /{marker} -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render(text: str) -> str:
    for kind in ("rejects", "failures", "imports", "routes"):
        text = _replace_block(text, f"codes:{kind}", codes_markdown(kind))
    for table in TABLES:
        text = _replace_block(text, f"columns:{table}", columns_markdown(table))
    return text


def main() -> int:
    text = DOC.read_text()
    new = render(text)
    if new != text:
        DOC.write_text(new)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
