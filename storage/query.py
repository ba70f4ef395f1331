"""DuckDB views over the atlas tables.

The atlas needs no extension and no FoldAtlas code to be read: each view is a plain
``read_parquet('<atlas>/<table>/*.parquet', union_by_name = true)``. :func:`view_sql` returns the
exact statements, which ``foldatlas sql`` prints and ``docs/query.md`` shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.atlas import Atlas
from storage.schema import TABLES


def view_sql(atlas_root: str | Path) -> str:
    atlas = Atlas(atlas_root)
    stmts = []
    for table in TABLES:
        glob = atlas.glob(table).replace("'", "''")
        stmts.append(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{glob}', union_by_name = true);"
        )
    return "\n".join(stmts)


def connect(atlas_root: str | Path, database: str = ":memory:") -> Any:
    """A DuckDB connection with the four atlas views defined."""
    import duckdb

    atlas = Atlas(atlas_root)
    atlas.require()
    con = duckdb.connect(database)
    con.execute(view_sql(atlas.root))
    return con


def query(atlas_root: str | Path, sql: str) -> Any:
    """Run SQL against the atlas views; returns a DuckDB relation result as an Arrow table."""
    con = connect(atlas_root)
    try:
        return con.execute(sql).fetch_arrow_table()
    finally:
        con.close()
