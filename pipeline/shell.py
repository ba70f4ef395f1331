"""A small SQL shell for ``foldatlas sql`` when the duckdb CLI is not installed.

Statements end with ``;``. Dot-commands: ``.tables`` lists the views, ``.schema VIEW`` describes
one, ``.quit`` exits. Works on piped input too (``echo "SELECT 1;" | foldatlas sql ATLAS``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, TextIO

PROMPT, CONTINUE = "foldatlas> ", "      ...> "


def _run(con: Any, sql: str, out: TextIO) -> None:
    import duckdb

    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        out.write(f"Error: {e}\n")
        return
    if rel is not None:
        out.write(str(rel) + "\n")


def repl(con: Any, interactive: bool = True, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
        out.write("FoldAtlas SQL shell (DuckDB). Views: entries, structures, rejects, failures. "
                  "End statements with ';', .quit to exit.\n")
    buffer: list[str] = []
    while True:
        if interactive:
            try:
                line = input(CONTINUE if buffer else PROMPT)
            except EOFError:
                break
        else:
            line = stdin.readline()
            if not line:
                break
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            cmd, _, arg = stripped.partition(" ")
            if cmd in (".quit", ".exit"):
                break
            if cmd == ".tables":
                _run(con, "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1", out)
            elif cmd == ".schema" and arg:
                _run(con, f"DESCRIBE {arg}", out)
            else:
                out.write("commands: .tables, .schema VIEW, .quit\n")
            continue
        buffer.append(line)
        if stripped.endswith(";"):
            _run(con, "\n".join(buffer), out)
            buffer.clear()
    if buffer and "".join(buffer).strip():
        _run(con, "\n".join(buffer), out)
