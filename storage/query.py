"""DuckDB views over the atlas tables.

The atlas needs no extension and no FoldAtlas code to be read: each view is a plain
``read_parquet('<atlas>/<table>/*.parquet', union_by_name = true)``. :func:`view_sql` returns the
exact statements, which ``foldatlas sql`` prints and ``docs/query.md`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from storage.atlas import Atlas
from storage.schema import TABLES

# AlphaFold DB's BigQuery table holds what our `entries` view holds; its name works as an alias.
AFDB_TABLE = "metadata"


def view_sql(atlas_root: str | Path) -> str:
    """The CREATE VIEW statements (for ``s3://`` atlases the connection needs :meth:`Atlas.duckdb`)."""
    atlas = Atlas(atlas_root)
    stmts = []
    for table in TABLES:
        glob = atlas.glob(table).replace("'", "''")
        stmts.append(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{glob}', union_by_name = true);"
        )
    stmts.append(f"CREATE OR REPLACE VIEW {AFDB_TABLE} AS SELECT * FROM entries;")
    return "\n".join(stmts)


def translate(sql: str, dialect: str = "duckdb") -> str:
    """SQL of another dialect as DuckDB SQL, with AFDB's BigQuery table mapped to ``entries``.

    ``dialect="bigquery"`` lets queries written for AlphaFold DB's BigQuery ``metadata`` table
    (``FROM bigquery-public-data.deepmind_alphafold.metadata``, double-quoted strings, ``UNPIVOT``)
    run unchanged. Translation is done by sqlglot.
    """
    if dialect == "duckdb":
        return sql
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    from pipeline.errors import FoldAtlasError

    try:
        trees = sqlglot.parse(sql, read=dialect)
    except ParseError as e:
        raise FoldAtlasError(f"Could not parse the query as {dialect} SQL: {e}") from e
    out = []
    for tree in trees:
        if tree is None:
            continue
        for table in tree.find_all(exp.Table):
            if table.name.lower() == AFDB_TABLE and table.db.lower() in ("", "deepmind_alphafold"):
                table.replace(exp.to_table("entries", alias=table.alias or None))
        out.append(tree.sql(dialect="duckdb"))
    return ";\n".join(out)


def connect(atlas_root: str | Path, database: str = ":memory:") -> Any:
    """A DuckDB connection with the atlas views defined (S3 atlases: the filesystem registered)."""
    import duckdb

    atlas = Atlas(atlas_root)
    atlas.require()
    con = duckdb.connect(database)
    atlas.store.register_duckdb(con)
    con.execute(view_sql(atlas.uri))
    return con


def query(atlas_root: str | Path, sql: str, dialect: str = "duckdb") -> Any:
    """Run SQL against the atlas views; returns the result as an Arrow table."""
    con = connect(atlas_root)
    try:
        return con.sql(translate(sql, dialect)).to_arrow_table()
    finally:
        con.close()


def msa_rows(atlas: Atlas, keys: Iterable[str], columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Distinct ``(msa_key, *columns)`` rows of the atlas's ``msas`` table for these keys (a few:
    a lookup, not a scan to plan with)."""
    con = atlas.duckdb()
    try:
        con.execute("CREATE TEMP TABLE want(k VARCHAR)")
        con.executemany("INSERT INTO want VALUES (?)", [(k,) for k in keys])
        rows: list[tuple[Any, ...]] = con.execute(
            f"SELECT DISTINCT m.msa_key, {', '.join(f'm.{c}' for c in columns)} FROM "
            f"read_parquet('{atlas.glob('msas')}', union_by_name=true) m JOIN want ON m.msa_key = want.k").fetchall()
    finally:
        con.close()
    return rows


def load_a3m(atlas_root: str | Path, keys: list[str]) -> dict[str, str]:
    """A3M texts from the atlas's ``msas`` table by ``msa_key``."""
    return {k: a for k, a in msa_rows(Atlas(atlas_root), keys, ["a3m"])}
