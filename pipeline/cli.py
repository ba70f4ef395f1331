"""The ``foldatlas`` command line: one subcommand per job. Heavy imports happen inside commands."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import FoldAtlasError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="FoldAtlas: predict protein structures at proteome scale into a DuckDB-queryable atlas.")

AtlasArg = Annotated[str, typer.Argument(help="Atlas: a directory or s3://bucket/prefix")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("ray", "urllib3", "botocore", "filelock", "matplotlib", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices concern its own progress bars


def _fail(e: FoldAtlasError) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2) from e


class MSATool(StrEnum):
    mmseqs2 = "mmseqs2"
    hmmer = "hmmer"
    none = "none"


class ClusterMethod(StrEnum):
    cluster = "cluster"
    linclust = "linclust"


class ModelName(StrEnum):
    esmfold = "esmfold"
    esmfold_tiny = "esmfold-tiny"


@app.command()
def run(
    inputs: Annotated[list[Path], typer.Argument(help="FASTA files (plain or .gz)")],
    atlas: Annotated[str, typer.Option("--atlas", help="Atlas directory or s3://bucket/prefix (created if missing)")],
    model: Annotated[ModelName | None, typer.Option(help="Model; default esmfold (needs --weights)")] = None,
    weights: Annotated[str | None, typer.Option(help="ESMFold weights: HF directory or s3:// prefix")] = None,
    weights_sha256: Annotated[str | None, typer.Option("--weights-sha256", help="Expected weights checksum")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML run configuration")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: local Ray); ray://HOST:10001 runs the driver on the cluster")] = None,
    fold_actors: Annotated[int | None, typer.Option("--fold-actors", help="Fold actors (GPU workers)")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device: auto, cpu, cuda")] = None,
    msa: Annotated[MSATool | None, typer.Option("--msa", help="MSA search before folding (default none)")] = None,
    msa_db: Annotated[str | None, typer.Option("--msa-db", help="Database made by `foldatlas msa-db build`")] = None,
    msa_iterations: Annotated[int | None, typer.Option("--msa-iterations", help="Search iterations")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Predict every new sequence of INPUTS into the atlas; resumable, idempotent."""
    _setup_logging(verbose)
    from pipeline.config import load_config
    from pipeline.remote import client_address
    from pipeline.runner import run as run_pipeline

    overrides: dict[str, Any] = {
        "model": {"name": model.value if model else None, "weights": weights, "weights_sha256": weights_sha256,
                  "device": device},
        "ray": {"address": address, "fold_actors": fold_actors},
        "msa": {"tool": msa.value if msa else None, "db": msa_db, "iterations": msa_iterations},
    }
    try:
        cfg = load_config(config, overrides)
        if client_address(cfg.ray.address):  # the driver runs on the cluster (docs/operations.md)
            from pipeline.remote import run_remote

            try:
                run_remote(inputs, atlas, cfg, echo=typer.echo)
            except KeyboardInterrupt:
                typer.secho("interrupted: the driver on the cluster was stopped; rerun to resume", fg="red", err=True)
                raise typer.Exit(130) from None
        else:
            run_pipeline(inputs, atlas, cfg, progress=not no_progress and sys.stderr.isatty(), echo=typer.echo)
    except FoldAtlasError as e:
        _fail(e)


@app.command()
def get(
    atlas: AtlasArg,
    accession: Annotated[str, typer.Argument(help="Accession (or entryId, or sequence SHA-256)")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="mmCIF output path")] = None,
    pae: Annotated[Path | None, typer.Option("--pae", help="Write the PAE JSON (AFDB format) here")] = None,
    confidence: Annotated[Path | None, typer.Option("--confidence", help="Write confidence JSON here")] = None,
    model: Annotated[str | None, typer.Option(help="Model, when the atlas holds several")] = None,
    msa: Annotated[Path | None, typer.Option("--msa", help="Write the entry's MSA (A3M) here")] = None,
) -> None:
    """Write one entry's mmCIF (and optionally its PAE JSON, confidence JSON and MSA)."""
    from storage.entry import fetch_entry

    if not (output or pae or confidence or msa):
        typer.secho("nothing to write: give -o, --pae, --confidence and/or --msa", fg="red", err=True)
        raise typer.Exit(2)
    try:
        found = fetch_entry(atlas, accession, model=model, require_structure=bool(output or pae or confidence))
        if output:
            output.write_text(found.mmcif())
        if pae:
            pae.write_bytes(found.pae_json())
        if confidence:
            confidence.write_bytes(found.confidence_json())
        if msa:
            msa.write_text(found.a3m())
    except FoldAtlasError as e:
        _fail(e)
    typer.echo(f"{found.entry_id} ({found.model}, tier {found.tier}): "
               + ", ".join(str(p) for p in (output, pae, confidence, msa) if p), err=True)


msa_db_app = typer.Typer(no_args_is_help=True, help="MSA search databases.")
app.add_typer(msa_db_app, name="msa-db")


@msa_db_app.command("build")
def msa_db_build(
    inputs: Annotated[list[Path], typer.Argument(help="FASTA files (plain or .gz) to search against")],
    out: Annotated[Path, typer.Option("--out", help="Database directory to create")],
    tool: Annotated[MSATool | None, typer.Option(help="mmseqs2 (default when installed) or hmmer")] = None,
    index: Annotated[bool, typer.Option("--index", help="Precompute the MMseqs2 index (faster searches)")] = False,
    name: Annotated[str | None, typer.Option(help="Database name recorded with every MSA")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for clustering and createindex")] = None,
    cluster_min_seq_id: Annotated[float | None, typer.Option(
        "--cluster-min-seq-id", min=0.0, max=1.0,
        help="MMseqs2: cluster the sequences at this identity (0.3 as UniRef30) and search ColabFold's "
             "way: representatives first, then expand the hits to all cluster members")] = None,
    cluster_coverage: Annotated[float, typer.Option(
        "--cluster-coverage", min=0.0, max=1.0, help="Clustering: coverage of both sequences (mmseqs -c)")] = 0.8,
    cluster_method: Annotated[ClusterMethod, typer.Option(
        "--cluster-method", help="cluster (cascaded, sensitive) or linclust (fast, for high identity)")]
        = ClusterMethod.cluster,
) -> None:
    """Turn FASTA files into a search database with an identity record (foldatlas-msa-db.json)."""
    _setup_logging(False)
    from pipeline.msa_db import Clustering, available_tool, build_msa_db

    chosen = tool.value if tool and tool is not MSATool.none else available_tool()
    try:
        cluster = (Clustering(cluster_method.value, cluster_min_seq_id, cluster_coverage)
                   if cluster_min_seq_id is not None else None)
        db = build_msa_db([str(p) for p in inputs], str(out), tool=chosen, index=index, threads=threads,
                          cluster=cluster, **({"name": name} if name else {}))
    except FoldAtlasError as e:
        _fail(e)
    clusters = f", {db.clustering.clusters} clusters at {db.clustering.min_seq_id:g} identity" if db.clustering else ""
    typer.echo(f"{db.name}: {db.sequence_count} sequences{clusters}, {db.tool} {db.tool_version}, "
               f"db_id {db.db_id} -> {out}")


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command()
def query(
    atlas: AtlasArg,
    sql: Annotated[str, typer.Argument(help="SQL over the views entries, structures, rejects, failures")],
    format: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File (required for parquet)")] = None,
    dialect: Annotated[str, typer.Option(help="SQL dialect of the query: duckdb, or bigquery for AFDB queries")] = "duckdb",
) -> None:
    """Run one SQL query against the atlas with DuckDB (views: entries, structures, rejects, failures, metadata)."""
    import duckdb

    from storage.query import connect, translate

    try:
        con = connect(atlas)
        sql = translate(sql, dialect)
    except FoldAtlasError as e:
        _fail(e)
    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        typer.secho(f"query failed: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    if format is Format.parquet:
        if output is None:
            typer.secho("--format parquet needs -o FILE", fg="red", err=True)
            raise typer.Exit(2)
        rel.write_parquet(str(output))
        return
    text = (str(rel) if rel is not None else "") if format is Format.table else _format_rows(rel, format)
    if output:
        output.write_text(text)
    else:
        typer.echo(text, nl=not text.endswith("\n"))


def _format_rows(rel: Any, fmt: Format) -> str:
    import csv
    import io
    import json

    tbl = rel.to_arrow_table()
    rows = tbl.to_pylist()
    if fmt is Format.json:
        return json.dumps(rows, default=str, indent=1) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(tbl.column_names)
    for r in rows:
        writer.writerow([r[c] for c in tbl.column_names])
    return buf.getvalue()


@app.command("sql")
def sql_shell(atlas: AtlasArg) -> None:
    """Interactive SQL with the atlas views defined (the duckdb CLI if installed, else a built-in shell)."""
    from storage.query import connect, view_sql

    try:
        con = connect(atlas)
    except FoldAtlasError as e:
        _fail(e)
    exe = shutil.which("duckdb")
    if exe and sys.stdin.isatty() and not atlas.startswith("s3://"):  # the CLI cannot read S3 without httpfs
        raise typer.Exit(subprocess.call([exe, "-cmd", view_sql(Path(atlas).resolve())]))
    from pipeline.shell import repl

    repl(con, interactive=sys.stdin.isatty())


@app.command()
def report(
    atlas: AtlasArg,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest finished run)")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file (default: print the path "
                                                                          "of the saved report)")] = None,
) -> None:
    """(Re)build a run's HTML report: counts, per-stage throughput, throughput over time, pLDDT, failures."""
    from pipeline.report import build_report, latest_run
    from storage.atlas import Atlas

    try:
        a = Atlas(atlas)
        a.require()
        rid = run_id or latest_run(a)
        text = build_report(a, rid)
        if output:
            output.write_text(text)
        else:
            output_url = a.write_run_file(rid, "report.html", text)
            typer.echo(output_url)
    except FoldAtlasError as e:
        _fail(e)


class GroupBy(StrEnum):
    taxon = "taxon"
    confidence = "confidence"
    none = "none"


class Engine(StrEnum):
    auto = "auto"
    ray = "ray"
    threads = "threads"


@app.command()
def export(
    atlas: Annotated[str, typer.Argument(help="Atlas: directory or s3:// prefix")],
    to: Annotated[str, typer.Option("--to", help="Release destination: new directory or s3:// prefix")],
    where: Annotated[str | None, typer.Option("--where", help="DuckDB SQL predicate over the entries table")] = None,
    by: Annotated[GroupBy, typer.Option("--by", help="Shard grouping: taxon, confidence (ESM Atlas bins) or none")]
        = GroupBy.taxon,
    shard_size: Annotated[int, typer.Option("--shard-size", help="At most this many entries per tar")] = 10_000,
    formats: Annotated[str, typer.Option("--formats", help="Per-entry files: mmcif,pae,confidence,msa")]
        = "mmcif,pae,confidence",
    release: Annotated[str, typer.Option("--release", help="Release name, used as _v<NAME> in file names")] = "1",
    engine: Annotated[Engine, typer.Option("--engine", help="Shard builders: Ray tasks, threads, or auto")]
        = Engine.auto,
    jobs: Annotated[int, typer.Option("--jobs", help="Shards built at once")] = 4,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write a release of the atlas (tar shards, metadata, accession_ids.csv, sequences.fasta, manifest.json)."""
    _setup_logging(verbose)
    from storage.release import ExportOptions, export_release, human_size, parse_formats

    try:
        opts = ExportOptions(where=where, by=by.value, shard_size=shard_size, formats=parse_formats(formats),
                             release=release, engine=engine.value, max_inflight=jobs)
        result = export_release(atlas, to, opts)
    except FoldAtlasError as e:
        _fail(e)
    m = result.manifest
    total = sum(f.size for f in m.files)
    typer.echo(f"{result.dest}: {m.counts['exported_entries']} entries in {m.counts['shards']} shards, "
               f"{human_size(total)}, {result.seconds:.1f} s ({result.engine}); "
               f"{m.counts['without_structure']} matched entries had no structure to export")


@app.command()
def download(
    manifest: Annotated[str, typer.Argument(help="manifest.json of a release: path, s3:// URI or http(s):// URL")],
    to: Annotated[Path, typer.Option("--to", help="Directory to download into (resumable)")],
    where: Annotated[str | None, typer.Option("--where", help="Predicate on metadata.parquet; whole shards")] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="Parallel downloads")] = 4,
) -> None:
    """Fetch a release's files, verifying SHA-256; re-running resumes and skips complete files."""
    _setup_logging(False)
    from storage.download import download_release

    try:
        result = download_release(manifest, to, where=where, jobs=jobs)
    except FoldAtlasError as e:
        _fail(e)
    typer.echo(f"{to}: {len(result.fetched)} fetched, {len(result.skipped)} already complete "
               f"({result.selected} of {len(result.manifest.files)} files selected)")


@app.command()
def validate(
    location: Annotated[str, typer.Argument(help="Atlas or release: directory or s3:// prefix")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout")] = False,
) -> None:
    """Check an atlas or release; one line per problem; exit 1 when problems were found."""
    from storage import validate as validation

    try:
        report = validation.validate(location)
    except FoldAtlasError as e:
        _fail(e)
    if json_out:
        typer.echo(report.to_json(), nl=False)
    else:
        for p in report.problems:
            typer.echo(p.line())
        typer.echo(validation.describe(report), err=True)
    raise typer.Exit(0 if report.ok else 1)


class ImportSource(StrEnum):
    auto = "auto"
    afdb = "afdb"
    colabfold = "colabfold"
    esmfold = "esmfold"


@app.command("import")
def import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="AFDB mmCIF + PAE JSON, ColabFold/ESMFold PDB files or dirs")],
    atlas: Annotated[str, typer.Option("--atlas", help="Atlas directory or s3:// prefix (created if missing)")],
    source: Annotated[ImportSource, typer.Option(help="Where the files come from (auto: by file name)")]
    = ImportSource.auto,
    config: Annotated[Path | None, typer.Option("--config", help="TOML run configuration (tiers)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Import existing predictions as atlas entries (models alphafold-db-vN, colabfold, esmfold-import)."""
    _setup_logging(verbose)
    from pipeline.config import load_config
    from pipeline.importer import import_predictions

    try:
        cfg = load_config(config)
        summary = import_predictions(paths, atlas, source=None if source is ImportSource.auto else source.value,
                                     policy=cfg.confidence)
    except FoldAtlasError as e:
        _fail(e)
    typer.echo(summary.render_text())
    if summary.rejected:
        typer.secho(f"{summary.rejected} files rejected: see the rejects table (run {summary.run_id})",
                    fg="yellow", err=True)


# ---- compact (storage/layout.py) ----------------------------------------------------------------
@app.command()
def compact(
    atlas: AtlasArg,
    target_rows: Annotated[int, typer.Option("--target-rows", help="Rows per merged file")] = 1_000_000,
    full: Annotated[bool, typer.Option("--full", help="Also rewrite large merged files (one global sort)")] = False,
    grace_minutes: Annotated[float, typer.Option("--grace-minutes",
                                                 help="Keep retired generations this long for running readers")] = 60.0,
    memory_limit: Annotated[str, typer.Option("--memory-limit", help="DuckDB memory limit for the sort")] = "2GB",
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Merge the atlas's small per-unit Parquet shards into large sorted files (atomic for readers)."""
    from storage.layout import compact as compact_atlas

    _setup_logging(verbose)
    try:
        report = compact_atlas(atlas, target_rows=target_rows, full=full, grace_s=grace_minutes * 60,
                               memory_limit=memory_limit)
    except FoldAtlasError as e:
        _fail(e)
    for t in report.tables:
        typer.echo(f"{t.table}: {t.files_merged} files ({t.rows_merged} rows) merged; {t.files_before} -> "
                   f"{t.files_after} files, generation {t.generation}, {t.seconds:.1f} s")
    if not report.tables:
        typer.echo("nothing to compact")
    for g in report.dropped_generations:
        typer.echo(f"dropped retired generation {g}")
# ---- end compact ---------------------------------------------------------------------------------


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
