"""MSA search: database building and two backends, MMseqs2 (batched) and HMMER (pyhmmer).

Library functions only: the ``foldatlas msa-db`` CLI and the Ray stage call them.

Databases (``build_msa_db`` / ``load_msa_db``)
--------------------------------------------
A database is a directory holding the tool's files and an identity record,
``foldatlas-msa-db.json`` (:class:`MSADatabase`), written last, so a directory without it is an
unfinished build. The build runs in a sibling staging directory and is renamed into place.

* ``mmseqs2``: ``mmseqs createdb <fasta...> DBDIR/db --dbtype 1`` (gzipped FASTA is read by
  MMseqs2 itself; the file name must end in ``.gz``), then with ``index=True``
  ``mmseqs createindex DBDIR/db <scratch> --threads N``. Clustered (``cluster=``): ``mmseqs
  cluster`` or ``linclust`` of ``db``, the representatives as ``DBDIR/rep`` (``createsubdb``; the
  index, if any, is built on it) and their alignments to every member as ``DBDIR/clu_aln``
  (``mmseqs align rep db clu clu_aln -a -e inf``).
* ``hmmer``: the FASTA inputs, decompressed and concatenated, as ``DBDIR/sequences.fasta``,
  checked by digitising every sequence with pyhmmer (a bad residue fails the build, not a
  search). Why plain FASTA and not a binary dump: pyhmmer has no on-disk binary format for
  digital sequences (only pickling), reading FASTA into a ``DigitalSequenceBlock`` runs at
  hundreds of MB/s, which is small next to a jackhmmer search, and ``pyhmmer.hmmer.jackhmmer``
  can stream a ``SequenceFile`` for databases larger than memory
  (:data:`HMMER_IN_MEMORY_MAX_BYTES`); smaller ones are loaded once per process and kept.

``db_id`` is a short SHA-256 of (tool, tool version, the inputs' SHA-256 in the order given,
indexed): the same files built with the same tool get the same id, wherever they lie.

Search (``search`` / ``search_mmseqs`` / ``search_hmmer``)
---------------------------------------------------------
Input: a work unit's queries as ``(id, sequence)``; output: ``{id: A3M text}`` whose first row is
exactly the query sequence under its id.

MMseqs2, as ColabFold's ``colabfold/mmseqs/search.py`` does for UniRef, one query DB per call so
all queries of the unit are searched at once. Against an unclustered database::

    mmseqs createdb queries.fasta qdb --dbtype 1 --shuffle 0 -v 2
    mmseqs search qdb DBDIR/db res tmp --num-iterations 3 -a -e 0.1 --max-seqs 10000 -s 8 --threads T -v 2
    mmseqs result2msa qdb DBDIR/db res msa --msa-format-mode 6 --threads T -v 2

(``--msa-format-mode 6``: A3M with ColabFold's alignment-info headers; ``result2msa`` does not
filter by default.) Against a clustered database (``build_msa_db(..., cluster=Clustering(...))``)
the search runs against the cluster representatives and ``expandaln`` + ``align`` bring in the
members of every hit cluster, as ColabFold does for UniRef30 and ColabFoldDB, without its
``filterresult`` diversity filter (:func:`mmseqs_commands` lists both chains). Every file lives in a scratch directory removed afterwards. MMseqs2 prints
non-standard query residues as their canonical letters (U, O -> X; B -> D; Z -> E; J -> L); the
query row is put back to the input sequence (the columns are the same).

HMMER: ``pyhmmer.hmmer.jackhmmer`` in-process, ``max_iterations`` = iterations, E-value
thresholds ``E = domE = incE = incdomE`` = ``evalue`` (AlphaFold2 runs jackhmmer with
``-E/--incE/--domE/--incdomE 0.0001`` and one iteration, the defaults here). Each included
domain of each included hit of the last iteration becomes one A3M row named
``<target>/<from>-<to>`` (as jackhmmer's ``-A`` output names them), in hit rank order, at most
``max_seqs`` rows after the query. Columns are query positions (jackhmmer's model has one match
state per query residue); residues in insert states are lower case.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeline.errors import InputError
from pipeline.tools import ToolError, ToolNotFound, run_tool, scratch_dir, tool_version
from storage.a3m import A3M, MSAError, parse_a3m, write_a3m

if TYPE_CHECKING:
    from pyhmmer.easel import DigitalSequenceBlock

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_METHODS",
    "HMMER_IN_MEMORY_MAX_BYTES",
    "IDENTITY_FILE",
    "MMSEQS_MAX_SEQ_LEN",
    "TOOLS",
    "Clustering",
    "DatabaseFile",
    "InputFile",
    "MSADatabase",
    "MSAParams",
    "QueryTooLong",
    "available_tool",
    "build_msa_db",
    "load_msa_db",
    "mmseqs_commands",
    "search",
    "search_a3m",
    "search_hmmer",
    "search_mmseqs",
    "search_tool_ready",
]

#: Supported search tools.
TOOLS: Final = ("mmseqs2", "hmmer")
#: The identity record inside a database directory.
IDENTITY_FILE: Final = "foldatlas-msa-db.json"
#: Version of the directory layout written by :func:`build_msa_db`.
FORMAT_VERSION: Final = 1
#: Bumped whenever the search commands change, so cached MSAs from older recipes are not reused.
SEARCH_RECIPE_VERSION: Final = 1
#: MMseqs2's default ``--max-seq-len``: longer queries are refused before any search starts.
MMSEQS_MAX_SEQ_LEN: Final = 65535
#: HMMER databases up to this size are loaded into memory once per process; larger ones stream.
HMMER_IN_MEMORY_MAX_BYTES: Final = 2 * 1024**3

_MMSEQS_DB = "db"
_MMSEQS_REPS = "rep"
_MMSEQS_CLU = "clu"
_MMSEQS_CLU_ALN = "clu_aln"
_HMMER_DB = "sequences.fasta"
_BUILD_HINT = "build it with `foldatlas msa-db build FASTA... --out DIR` (library: pipeline.msa.build_msa_db)"
_STANDARD_AA = frozenset("ACDEFGHIKLMNPQRSTVWY")


class QueryTooLong(MSAError):
    """A query is longer than the search tool accepts. Record it as failed; retrying will not help."""

    def __init__(self, query_id: str, length: int, limit: int, tool: str) -> None:
        self.query_id = query_id
        self.length = length
        self.limit = limit
        super().__init__(
            f"query {query_id!r} has {length} residues; {tool} accepts at most {limit}",
            hint="split the sequence into domains or fold it without an MSA",
        )


# --------------------------------------------------------------------------------------------
# Database identity


@dataclass(frozen=True)
class InputFile:
    """One FASTA file a database was built from: path at build time, SHA-256 and size in bytes."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DatabaseFile:
    """One file of a built database (relative name) and its size in bytes."""

    name: str
    size: int


#: Clustering methods of ``mmseqs``: ``cluster`` (cascaded, sensitive down to 30 % identity and
#: below) and ``linclust`` (linear time, reliable only at high identity).
CLUSTER_METHODS: Final = ("cluster", "linclust")


@dataclass(frozen=True)
class Clustering:
    """How a clustered MMseqs2 database was clustered (``msa-db build --cluster-min-seq-id``).

    Attributes:
        method: ``"cluster"`` (cascaded) or ``"linclust"``.
        min_seq_id: ``--min-seq-id`` of the clustering (0.3 is UniRef30's level).
        coverage: ``-c`` (coverage of both sequences, ``--cov-mode 0``).
        clusters: representatives (clusters) the clustering made.
    """

    method: str
    min_seq_id: float
    coverage: float
    clusters: int = 0

    def __post_init__(self) -> None:
        if self.method not in CLUSTER_METHODS:
            raise MSAError(f"unknown clustering method {self.method!r}; expected one of {', '.join(CLUSTER_METHODS)}")
        if not 0.0 < self.min_seq_id <= 1.0:
            raise MSAError(f"cluster min_seq_id must be in (0, 1], got {self.min_seq_id}")
        if not 0.0 <= self.coverage <= 1.0:
            raise MSAError(f"cluster coverage must be in [0, 1], got {self.coverage}")

    def key_fields(self) -> dict[str, Any]:
        """What identifies the clustering in ``db_id`` (not the resulting cluster count)."""
        return {"method": self.method, "min_seq_id": self.min_seq_id, "coverage": self.coverage}


@dataclass(frozen=True)
class MSADatabase:
    """Identity record of a search database, stored as ``DBDIR/foldatlas-msa-db.json``.

    Attributes:
        name: human name (default: the directory name).
        tool: ``"mmseqs2"`` or ``"hmmer"``.
        tool_version: ``mmseqs version`` output, or ``pyhmmer X (HMMER Y)``.
        inputs: the FASTA files, with SHA-256 and size.
        sequence_count: sequences in the database.
        created_at: ISO 8601 UTC time of the build.
        indexed: an MMseqs2 precomputed index (``createindex``) was built.
        db_id: 16 hex digits of SHA-256 over (tool, tool_version, input SHA-256s, indexed).
        files: the database's files (``name``, ``size``), checked when loading.
        format_version: layout version (:data:`FORMAT_VERSION`).
        clustering: set for a clustered MMseqs2 database: the profile search runs against the
            cluster representatives and the hits are expanded to the members (ColabFold's scheme).
        path: the directory this record was loaded from or built in; not stored in the JSON.
    """

    name: str
    tool: str
    tool_version: str
    inputs: tuple[InputFile, ...]
    sequence_count: int
    created_at: str
    indexed: bool
    db_id: str
    files: tuple[DatabaseFile, ...] = ()
    format_version: int = FORMAT_VERSION
    clustering: Clustering | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.tool not in TOOLS:
            raise MSAError(f"unknown MSA tool {self.tool!r}; expected one of {', '.join(TOOLS)}")
        if self.clustering is not None and self.tool != "mmseqs2":
            raise MSAError("only mmseqs2 databases can be clustered")

    def _dir(self) -> Path:
        if self.path is None:
            raise MSAError(f"MSA database {self.name!r} has no directory", hint="load it with load_msa_db(DIR)")
        return self.path

    @property
    def target(self) -> Path:
        """What the search runs against: ``DBDIR/db`` (MMseqs2 DB prefix; ``DBDIR/rep``, the
        cluster representatives, when clustered) or ``DBDIR/sequences.fasta``."""
        if self.tool == "hmmer":
            return self._dir() / _HMMER_DB
        return self._dir() / (_MMSEQS_REPS if self.clustering else _MMSEQS_DB)

    @property
    def members(self) -> Path:
        """MMseqs2: every sequence (``DBDIR/db``), what the A3M rows are taken from."""
        return self._dir() / (_MMSEQS_DB if self.tool == "mmseqs2" else _HMMER_DB)

    @property
    def cluster_alignments(self) -> Path:
        """Clustered MMseqs2 databases: representative-to-member alignments (``DBDIR/clu_aln``)."""
        if self.clustering is None:
            raise MSAError(f"MSA database {self.name!r} is not clustered")
        return self._dir() / _MMSEQS_CLU_ALN

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without ``path``)."""
        d = asdict(self)
        d.pop("path")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> MSADatabase:
        try:
            return cls(
                name=str(d["name"]),
                tool=str(d["tool"]),
                tool_version=str(d["tool_version"]),
                inputs=tuple(InputFile(str(i["path"]), str(i["sha256"]), int(i["size"])) for i in d["inputs"]),
                sequence_count=int(d["sequence_count"]),
                created_at=str(d["created_at"]),
                indexed=bool(d["indexed"]),
                db_id=str(d["db_id"]),
                files=tuple(DatabaseFile(str(f["name"]), int(f["size"])) for f in d.get("files", [])),
                format_version=int(d.get("format_version", FORMAT_VERSION)),
                clustering=Clustering(**d["clustering"]) if d.get("clustering") else None,
                path=path,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MSAError(f"invalid MSA database record: {e!r}", hint=_BUILD_HINT) from e


def compute_db_id(tool: str, version: str, input_sha256: Sequence[str], indexed: bool,
                  clustering: Clustering | None = None) -> str:
    """16 hex digits identifying a database's content and how it was built (an unclustered
    database's id does not mention clustering, so ids from before clustering existed still hold)."""
    ident: dict[str, Any] = {"tool": tool, "tool_version": version, "inputs": list(input_sha256),
                             "indexed": bool(indexed)}
    if clustering is not None:
        ident["clustering"] = clustering.key_fields()
    payload = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


@functools.lru_cache(maxsize=1)
def _hmmer_version() -> str:
    """``pyhmmer 0.12.3 (HMMER 3.4)``: the HMMER version is read from a written HMM's header."""
    import pyhmmer
    from pyhmmer import easel, plan7

    abc = easel.Alphabet.amino()
    seq = easel.TextSequence(name="v", sequence="ACDEFGHIKLMNPQRSTVWY").digitize(abc)
    hmm, _, _ = plan7.Builder(abc).build(seq, plan7.Background(abc))
    buf = io.BytesIO()
    hmm.write(buf)
    m = re.search(rb"\[([^|\]]+)", buf.getvalue().split(b"\n", 1)[0])
    core = m.group(1).decode().strip() if m else "unknown"
    return f"pyhmmer {pyhmmer.__version__} (HMMER {core})"


def resolve_threads(n: int | None) -> int:
    """``n`` when positive, else the cores this process may run on."""
    if n is not None and n > 0:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def search_tool_ready(tool: str) -> None:
    """Check that ``tool`` can run here, before a run starts.

    Raises:
        MSAError: unknown tool. ToolNotFound: ``mmseqs`` is not on PATH (hint: install it, or use hmmer).
    """
    if tool not in TOOLS:
        raise MSAError(f"unknown MSA tool {tool!r}; expected one of {', '.join(TOOLS)}")
    if tool == "mmseqs2" and shutil.which("mmseqs") is None:
        raise ToolNotFound("mmseqs")
    if tool == "hmmer":
        import pyhmmer  # noqa: F401  (a dependency; fails loudly if the install is broken)


def available_tool() -> str:
    """``"mmseqs2"`` when ``mmseqs`` is on PATH, else ``"hmmer"`` (pyhmmer, always installed)."""
    return "mmseqs2" if shutil.which("mmseqs") else "hmmer"


# --------------------------------------------------------------------------------------------
# Build and load


def build_msa_db(
    fasta_paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tool: str = "mmseqs2",
    index: bool = False,
    threads: int | None = None,
    *,
    name: str | None = None,
    cluster: Clustering | None = None,
) -> MSADatabase:
    """Build a search database from FASTA files (plain or gzip) into ``out_dir``.

    Args:
        fasta_paths: one or more FASTA files; order matters (it is the database order).
        out_dir: the database directory; must not exist, or be empty.
        tool: ``"mmseqs2"`` or ``"hmmer"``.
        index: MMseqs2 only: also build the precomputed k-mer index (``createindex``): each
            search then skips building the k-mer table (0.3 s instead of 4.5 s for six queries
            against the 1,000-sequence test database), but the index is large (about 0.9 GB for
            that database, most of it a fixed-size table). Ignored (with a warning) for HMMER.
        threads: threads for ``createindex`` (default: all available cores).
        name: database name (default: ``out_dir``'s name).
        cluster: MMseqs2 only: also cluster the sequences (``mmseqs cluster`` or ``linclust`` with
            the given identity and coverage; its ``clusters`` field is ignored and filled in), keep
            the representatives as ``rep`` (the search target, indexed when ``index``) and every
            representative-to-member alignment as ``clu_aln``, so that searches run ColabFold's
            way: profile search against the representatives, then ``expandaln`` to the members.

    Raises:
        InputError: a FASTA file is missing or unreadable.
        MSAError: bad tool, ``out_dir`` not empty, no sequences, or invalid residues (HMMER).
        ToolNotFound, ToolError: MMseqs2 is missing or failed.
    """
    if tool not in TOOLS:
        raise MSAError(f"unknown MSA tool {tool!r}; expected one of {', '.join(TOOLS)}")
    if isinstance(fasta_paths, str | os.PathLike):
        fasta_paths = [fasta_paths]
    paths = [Path(p) for p in fasta_paths]
    if not paths:
        raise InputError("no FASTA files given to build an MSA database from")
    for p in paths:
        if not p.is_file():
            raise InputError(f"FASTA file not found: {p}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MSAError(f"{out} exists and is not empty",
                       hint="choose a new directory, or remove the old database first")
    if tool == "hmmer" and index:
        logger.warning("index=True applies to mmseqs2 only; the hmmer database is not indexed")
        index = False
    if cluster is not None and tool != "mmseqs2":
        raise MSAError("clustering needs an mmseqs2 database", hint="drop the clustering options for hmmer")

    inputs = tuple(InputFile(str(p.resolve()), _sha256(p), p.stat().st_size) for p in paths)
    version = tool_version("mmseqs") if tool == "mmseqs2" else _hmmer_version()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if tool == "mmseqs2":
            count, cluster = _build_mmseqs(paths, staging, index=index, threads=resolve_threads(threads),
                                           cluster=cluster)
        else:
            count = _build_hmmer(paths, staging)
        files = tuple(DatabaseFile(f.name, f.stat().st_size) for f in sorted(staging.iterdir()) if f.is_file())
        db = MSADatabase(
            name=name or out.name,
            tool=tool,
            tool_version=version,
            inputs=inputs,
            sequence_count=count,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            indexed=index,
            db_id=compute_db_id(tool, version, [i.sha256 for i in inputs], index, cluster),
            files=files,
            clustering=cluster,
        )
        (staging / IDENTITY_FILE).write_text(db.to_json())
        if out.exists():
            out.rmdir()  # empty (checked above); rename needs it gone
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built %s database %s (%d sequences%s, db_id %s) in %s", tool, db.name, count,
                f", {cluster.clusters} clusters" if cluster else "", db.db_id, out)
    return MSADatabase.from_dict(db.to_dict(), path=out)


def _build_mmseqs(paths: list[Path], staging: Path, *, index: bool, threads: int,
                  cluster: Clustering | None) -> tuple[int, Clustering | None]:
    for p in paths:
        if _is_gzip(p) != p.name.endswith(".gz"):
            raise InputError(
                f"{p}: MMseqs2 decides gzip by the '.gz' suffix, but this file "
                f"{'is' if _is_gzip(p) else 'is not'} gzip-compressed",
                hint="rename the file so that only gzip files end in .gz",
            )
    prefix = staging / _MMSEQS_DB
    t = str(threads)
    run_tool(["mmseqs", "createdb", *[str(p) for p in paths], str(prefix), "--dbtype", "1", "-v", "2"])
    count = _count_entries(prefix)
    if count == 0:
        raise MSAError(f"no sequences in {', '.join(map(str, paths))}")
    search_target = prefix
    if cluster is not None:
        clu, reps, aln = (staging / n for n in (_MMSEQS_CLU, _MMSEQS_REPS, _MMSEQS_CLU_ALN))
        with scratch_dir("foldatlas-cluster-") as tmp:
            run_tool(["mmseqs", cluster.method, str(prefix), str(clu), str(tmp), "--min-seq-id",
                      f"{cluster.min_seq_id:g}", "-c", f"{cluster.coverage:g}", "--cov-mode", "0",
                      "--threads", t, "-v", "2"])
        run_tool(["mmseqs", "createsubdb", str(clu), str(prefix), str(reps), "-v", "2"])
        _materialise_links(staging)  # createsubdb links rep_h etc. to db_h by absolute staging paths
        # Every member must keep an alignment to its representative (-e inf), or expandaln could
        # never reach it.
        run_tool(["mmseqs", "align", str(reps), str(prefix), str(clu), str(aln), "-a", "-e", "inf",
                  "--threads", t, "-v", "2"])
        run_tool(["mmseqs", "rmdb", str(clu), "-v", "2"])
        cluster = Clustering(cluster.method, cluster.min_seq_id, cluster.coverage, _count_entries(reps))
        search_target = reps
    if index:
        with scratch_dir("foldatlas-createindex-") as tmp:
            run_tool(["mmseqs", "createindex", str(search_target), str(tmp), "--threads", t, "-v", "2"])
    return count, cluster


def _materialise_links(directory: Path) -> None:
    """Replace every symbolic link in ``directory`` by a copy of its target, so the database
    directory can be renamed, copied or synced as plain files."""
    for f in directory.iterdir():
        if f.is_symlink():
            target = f.resolve(strict=True)
            f.unlink()
            shutil.copy2(target, f)


def _count_entries(prefix: Path) -> int:
    with Path(f"{prefix}.index").open() as fh:
        return sum(1 for line in fh if line.strip())


def _build_hmmer(paths: list[Path], staging: Path) -> int:
    from pyhmmer import easel

    target = staging / _HMMER_DB
    with target.open("wb") as out:
        for p in paths:
            opener = gzip.open if _is_gzip(p) else open
            try:
                with opener(p, "rb") as fh:
                    last = b"\n"
                    while chunk := fh.read(1 << 20):
                        out.write(chunk)
                        last = chunk[-1:]
                    if last != b"\n":
                        out.write(b"\n")
            except (OSError, EOFError) as e:
                raise InputError(f"cannot read {p}: {e}") from e
    abc = easel.Alphabet.amino()
    count = 0
    try:
        with easel.SequenceFile(str(target), format="fasta", digital=True, alphabet=abc) as fh:
            while block := fh.read_block(sequences=10_000):
                count += len(block)
    except ValueError as e:
        raise MSAError(f"cannot read the FASTA input as protein sequences: {e}",
                       hint="check the files are protein FASTA (letters only, '*' allowed)") from e
    if count == 0:
        raise MSAError(f"no sequences in {', '.join(map(str, paths))}")
    return count


def load_msa_db(out_dir: str | os.PathLike[str]) -> MSADatabase:
    """Read a database's identity record and check its files are all there, with their sizes.

    Raises:
        MSAError: the directory, the identity file or a database file is missing, or the
            identity file is not valid. Messages say to (re)build with ``foldatlas msa-db build``.
    """
    path = Path(out_dir)
    if not path.is_dir():
        raise MSAError(f"no MSA database at {path}: directory not found", hint=_BUILD_HINT)
    ident = path / IDENTITY_FILE
    if not ident.is_file():
        raise MSAError(f"{path} is not an MSA database: {IDENTITY_FILE} is missing (or its build did not finish)",
                       hint=_BUILD_HINT)
    try:
        data = json.loads(ident.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MSAError(f"{ident} is unreadable or not JSON: {e}", hint=f"rebuild the database; {_BUILD_HINT}") from e
    if not isinstance(data, dict):
        raise MSAError(f"{ident} does not hold a JSON object", hint=f"rebuild the database; {_BUILD_HINT}")
    db = MSADatabase.from_dict(data, path=path)
    if db.format_version > FORMAT_VERSION:
        raise MSAError(f"{path} was built by a newer FoldAtlas (layout {db.format_version})",
                       hint="upgrade FoldAtlas or rebuild the database with this version")
    problems = []
    for f in db.files:
        fp = path / f.name
        if not fp.is_file():
            problems.append(f"{f.name} missing")
        elif fp.stat().st_size != f.size:
            problems.append(f"{f.name} has {fp.stat().st_size} bytes, expected {f.size}")
    if not db.files:
        problems.append("the record lists no database files")
    else:
        for needed in (db.target, db.members, *([db.cluster_alignments] if db.clustering else [])):
            if not any(f.name == needed.name or f.name.startswith(f"{needed.name}.") for f in db.files):
                problems.append(f"{needed.name} not listed")
    if problems:
        raise MSAError(f"MSA database {path} is incomplete: {'; '.join(problems)}",
                       hint=f"rebuild it; {_BUILD_HINT}")
    return db


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class MSAParams:
    """Search parameters. ``None`` fields take the tool's default when the record is created.

    Attributes:
        tool: ``"mmseqs2"`` or ``"hmmer"``; must match the database's tool.
        iterations: search iterations. MMseqs2 default 3 (ColabFold ``--num-iterations 3``);
            HMMER default 1 (AlphaFold2's jackhmmer ``-N 1`` for UniRef90 and MGnify).
        evalue: E-value threshold. MMseqs2 default 0.1 (ColabFold ``-e 0.1``); HMMER default
            1e-4 (AlphaFold2's ``-E``/``--incE``/``--domE``/``--incdomE``).
        sensitivity: MMseqs2 ``-s`` (ColabFold uses 8 for UniRef; 1 is fastest). Unused by HMMER.
        max_seqs: MMseqs2 ``--max-seqs`` (hits per query passing the prefilter; ColabFold 10000);
            HMMER: at most this many rows after the query.
        threads: threads (MMseqs2 ``--threads``, pyhmmer ``cpus``); ``None``: all available.
            Not part of :meth:`params_key` (it does not change results).
    """

    tool: str = "mmseqs2"
    iterations: int | None = None
    evalue: float | None = None
    sensitivity: float = 8.0
    max_seqs: int = 10000
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.tool not in TOOLS:
            raise MSAError(f"unknown MSA tool {self.tool!r}; expected one of {', '.join(TOOLS)}")
        if self.iterations is None:
            object.__setattr__(self, "iterations", 3 if self.tool == "mmseqs2" else 1)
        if self.evalue is None:
            object.__setattr__(self, "evalue", 0.1 if self.tool == "mmseqs2" else 1e-4)
        if self.n_iterations < 1:
            raise MSAError(f"iterations must be >= 1, got {self.iterations}")
        if not self.e_value > 0:
            raise MSAError(f"evalue must be > 0, got {self.evalue}")
        if not self.sensitivity > 0:
            raise MSAError(f"sensitivity (mmseqs -s) must be > 0, got {self.sensitivity}")
        if self.max_seqs < 1:
            raise MSAError(f"max_seqs must be >= 1, got {self.max_seqs}")

    @property
    def n_iterations(self) -> int:
        """``iterations`` as an int (always set after construction)."""
        assert self.iterations is not None  # set in __post_init__
        return self.iterations

    @property
    def e_value(self) -> float:
        """``evalue`` as a float (always set after construction)."""
        assert self.evalue is not None  # set in __post_init__
        return self.evalue

    def key_fields(self) -> dict[str, Any]:
        """The fields that change search results (what :meth:`params_key` hashes)."""
        d: dict[str, Any] = {"recipe": SEARCH_RECIPE_VERSION, "tool": self.tool, "iterations": self.n_iterations,
                             "evalue": self.e_value, "max_seqs": self.max_seqs}
        if self.tool == "mmseqs2":
            d["sensitivity"] = self.sensitivity
        return d

    def params_key(self) -> str:
        """Stable 16-hex-digit key of the result-changing parameters, for the MSA cache.

        Combine it with the database's ``db_id`` and the query sequence's hash.
        """
        payload = json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Search


def _check_queries(queries: Sequence[tuple[str, str]], tool: str, max_len: int | None) -> None:
    if not queries:
        raise MSAError("no queries to search")
    seen: set[str] = set()
    for qid, seq in queries:
        if not qid or any(c.isspace() for c in qid):
            raise MSAError(f"query id {qid!r} must be non-empty without whitespace (it becomes the A3M name)")
        if qid in seen:
            raise MSAError(f"duplicate query id {qid!r} in one search", hint="query ids must be unique per call")
        seen.add(qid)
        if not seq or not seq.isascii() or not seq.isalpha() or not seq.isupper():
            raise MSAError(f"query {qid!r}: sequence must be non-empty upper-case letters",
                           hint="pass sequences as ingest normalises them (no gaps, '*' or spaces)")
        if max_len is not None and len(seq) > max_len:
            raise QueryTooLong(qid, len(seq), max_len, tool)


def _check_db(db: MSADatabase, tool: str) -> None:
    if db.tool != tool:
        raise MSAError(f"database {db.name!r} was built for {db.tool}, not {tool}",
                       hint=f"use search(), or build a {tool} database")
    if db.path is None or not db.path.is_dir():
        raise MSAError(f"MSA database {db.name!r} is not on this machine ({db.path})", hint=_BUILD_HINT)


def search(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams | None = None) -> dict[str, str]:
    """Search a work unit's queries against ``db`` with its tool; ``{id: A3M text}``.

    Raises:
        QueryTooLong: a query exceeds the tool's limit (checked before anything runs).
        MSAError: bad queries, or parameters for another tool than the database's.
        ToolNotFound: MMseqs2 missing. ToolError: the search crashed (retry or record it).
    """
    return {qid: write_a3m(a3m) for qid, a3m in search_a3m(queries, db, params).items()}


def search_a3m(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams | None = None) -> dict[str, A3M]:
    """:func:`search`, returning the parsed (and validated) alignments instead of their text.

    What the MSA stage calls: it needs the rows for depth and Neff and writes the text once, so
    each tool output is parsed exactly once.
    """
    params = params or MSAParams(tool=db.tool)
    if params.tool != db.tool:
        raise MSAError(f"parameters are for {params.tool} but database {db.name!r} is {db.tool}",
                       hint=f"use MSAParams(tool={db.tool!r}, ...)")
    if db.tool == "mmseqs2":
        return _mmseqs_alignments(queries, db, params)
    return _hmmer_alignments(queries, db, params)


@functools.lru_cache(maxsize=1)
def _installed_mmseqs_version() -> str:
    return tool_version("mmseqs")


def _read_mmseqs_db(prefix: Path) -> dict[int, str]:
    """Entries of an MMseqs2 DB (``prefix`` data file + ``prefix.index``), NUL terminators removed."""
    data = prefix.read_bytes()
    entries: dict[int, str] = {}
    with Path(f"{prefix}.index").open() as fh:
        for line in fh:
            if not line.strip():
                continue
            key, offset, length = (int(x) for x in line.split("\t")[:3])
            raw = data[offset:offset + length]
            entries[key] = raw.rstrip(b"\x00").decode("utf-8", errors="replace")
    return entries


def _split_query_record(text: str) -> tuple[str, str, str, str]:
    """MMseqs2 A3M text as (lines before the query record, query name, query row, the rest).

    ``result2msa`` writes an optional ``#`` line, then ``>name`` and the query row on one line."""
    head, _, rest = text.partition(">")
    header, _, rest = rest.partition("\n")
    row, _, tail = rest.partition("\n")
    return head, header.split(maxsplit=1)[0] if header.strip() else "", row.strip(), tail


def _with_query_row(text: str, qid: str, seq: str) -> str:
    """The A3M text with its first record renamed ``qid`` and its row exactly ``seq`` (MMseqs2
    canonicalises U/O/B/Z/J); done on the text so that the alignment is parsed only once."""
    head, _, row, tail = _split_query_record(text)
    if len(row) != len(seq) or any(a != b and b in _STANDARD_AA for a, b in zip(row, seq, strict=True)):
        raise MSAError(f"MMseqs2 returned query row {row[:30]!r}... for query {qid!r} ({seq[:30]!r}...)",
                       hint="this is a bug in the query bookkeeping; please report it")
    return f"{head}>{qid}\n{seq}\n{tail}"


def mmseqs_commands(fasta: Path, db: MSADatabase, params: MSAParams, work: Path) -> list[list[str]]:
    """The MMseqs2 commands of one batched search of ``fasta`` (queries named ``0..n-1``), with
    every file under ``work``; the A3Ms end up in the MMseqs2 DB ``work/msa``.

    Unclustered: ``createdb``, ``search``, ``result2msa`` (module docstring). Clustered (ColabFold's
    scheme for UniRef30 / ColabFoldDB, without its diversity filters): the profile search runs
    against the representatives, ``expandaln`` turns each representative hit into hits on all of
    its cluster's members (through the stored representative-to-member alignments), ``align``
    realigns the query's last profile to every member at the same E-value, and ``result2msa``
    writes the members' rows::

        mmseqs search qdb DBDIR/rep res tmp --num-iterations N -a -e E --max-seqs M -s S
        mmseqs expandaln qdb DBDIR/rep res DBDIR/clu_aln res_exp --expansion-mode 0 -e inf
        mmseqs align PROFILE DBDIR/db res_exp res_realign -e E --max-accept M -a
        mmseqs result2msa qdb DBDIR/db res_realign msa --msa-format-mode 6

    ``PROFILE`` is the profile the last iteration searched with (``tmp/latest/profile_{N-2}``),
    or ``qdb`` for one iteration. The benchmark runs these same commands by hand as its floor.
    """
    t = str(resolve_threads(params.threads))
    qdb, res, msa = str(work / "qdb"), str(work / "res"), str(work / "msa")
    common = ["--threads", t, "-v", "2"]
    cmds = [["mmseqs", "createdb", str(fasta), qdb, "--dbtype", "1", "--shuffle", "0", "-v", "2"],
            ["mmseqs", "search", qdb, str(db.target), res, str(work / "tmp"),
             "--num-iterations", str(params.n_iterations), "-a", "-e", f"{params.e_value:g}",
             "--max-seqs", str(params.max_seqs), "-s", f"{params.sensitivity:g}", *common]]
    if db.clustering is not None:
        n = params.n_iterations
        profile = str(work / "tmp" / "latest" / f"profile_{n - 2}") if n > 1 else qdb
        exp, realign = str(work / "res_exp"), str(work / "res_realign")
        cmds += [["mmseqs", "expandaln", qdb, str(db.target), res, str(db.cluster_alignments), exp,
                  "--expansion-mode", "0", "-e", "inf", "--expand-filter-clusters", "0", *common],
                 ["mmseqs", "align", profile, str(db.members), exp, realign, "-e", f"{params.e_value:g}",
                  "--max-accept", str(params.max_seqs), "-a", *common]]
        res = realign
    cmds.append(["mmseqs", "result2msa", qdb, str(db.members), res, msa, "--msa-format-mode", "6", *common])
    return cmds


def search_mmseqs(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams) -> dict[str, str]:
    """All queries of a work unit in one MMseqs2 query DB: createdb, iterative search, result2msa.

    The exact commands are in :func:`mmseqs_commands`. Returns ``{id: A3M text}`` in query order.

    Raises:
        QueryTooLong, MSAError, ToolNotFound, ToolError: see :func:`search`.
    """
    return {qid: write_a3m(a3m) for qid, a3m in _mmseqs_alignments(queries, db, params).items()}


def _mmseqs_alignments(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams) -> dict[str, A3M]:
    _check_db(db, "mmseqs2")
    _check_queries(queries, "mmseqs2", MMSEQS_MAX_SEQ_LEN)
    installed = _installed_mmseqs_version()
    if installed != db.tool_version:
        logger.warning("database %s was built with mmseqs %s, searching with mmseqs %s",
                       db.name, db.tool_version, installed)
    with scratch_dir("foldatlas-mmseqs-") as tmp:
        fasta = tmp / "queries.fasta"
        fasta.write_text("".join(f">{i}\n{seq}\n" for i, (_, seq) in enumerate(queries)))
        for cmd in mmseqs_commands(fasta, db, params, tmp):
            run_tool(cmd)
        entries = _read_mmseqs_db(tmp / "msa")
    by_index: dict[int, str] = {}
    for text in entries.values():
        name = _split_query_record(text)[1]
        if not name.isdigit() or int(name) >= len(queries):
            raise ToolError(f"unexpected query name {name!r} in mmseqs output", tool="mmseqs", returncode=0,
                            stderr_tail=text[:2000])
        by_index[int(name)] = text
    out: dict[str, A3M] = {}
    for i, (qid, seq) in enumerate(queries):
        raw = by_index.get(i)
        if raw is None:
            out[qid] = A3M(names=(qid,), descriptions=("",), rows=(seq,))
            continue
        fixed = _with_query_row(raw, qid, seq)
        try:
            out[qid] = parse_a3m(fixed)
        except MSAError as e:
            raise ToolError(f"mmseqs result2msa wrote an invalid A3M: {e}", tool="mmseqs", returncode=0,
                            stderr_tail=raw[:2000]) from e
    return out


@functools.lru_cache(maxsize=1)
def _load_hmmer_block(path: str, db_id: str) -> DigitalSequenceBlock:
    """The whole database as one digital block, kept for the next search (one database per process)."""
    from pyhmmer import easel

    logger.info("loading HMMER database %s (db_id %s) into memory", path, db_id)
    with easel.SequenceFile(path, format="fasta", digital=True, alphabet=easel.Alphabet.amino()) as fh:
        block: Any = fh.read_block()
    return block


def _domain_row(hmm_from: int, hmm_to: int, model: str, aligned: str, width: int) -> str:
    """One A3M row from a HMMER domain alignment: ``.`` in the model line marks an insert state."""
    body = []
    for m, t in zip(model, aligned, strict=True):
        if m == ".":
            if t not in "-.":
                body.append(t.lower())
        else:
            body.append("-" if t in "-." else t.upper())
    return "-" * (hmm_from - 1) + "".join(body) + "-" * (width - hmm_to)


def search_hmmer(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams) -> dict[str, str]:
    """jackhmmer (pyhmmer, in-process) for each query against the database; ``{id: A3M text}``.

    Raises:
        MSAError: bad queries or database. ToolError: pyhmmer failed during the search.
    """
    return {qid: write_a3m(a3m) for qid, a3m in _hmmer_alignments(queries, db, params).items()}


def _hmmer_alignments(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams) -> dict[str, A3M]:
    from pyhmmer import easel, hmmer

    _check_db(db, "hmmer")
    _check_queries(queries, "hmmer", None)
    abc = easel.Alphabet.amino()
    digital: list[Any] = []
    for i, (qid, seq) in enumerate(queries):
        try:
            digital.append(easel.TextSequence(name=str(i), sequence=seq).digitize(abc))
        except ValueError as e:
            raise MSAError(f"query {qid!r} cannot be read as a protein sequence: {e}") from e
    target = db.target
    if not target.is_file():
        raise MSAError(f"HMMER database file {target} is missing", hint=_BUILD_HINT)
    streamed = target.stat().st_size > HMMER_IN_MEMORY_MAX_BYTES
    targets: Any
    if streamed:
        targets = easel.SequenceFile(str(target), format="fasta", digital=True, alphabet=abc)
    else:
        targets = _load_hmmer_block(str(target), db.db_id)
    evalue = params.e_value
    out: dict[str, A3M] = {}
    try:
        results = hmmer.jackhmmer(digital, targets, max_iterations=params.n_iterations,
                                  cpus=resolve_threads(params.threads), E=evalue, domE=evalue,
                                  incE=evalue, incdomE=evalue)
        result: Any
        for (qid, seq), result in zip(queries, results, strict=True):
            width = len(seq)
            if width != result.hmm.M:
                raise MSAError(f"jackhmmer model for {qid!r} has {result.hmm.M} match states, query has {width}")
            names, descs, rows = [qid], [""], [seq]
            for hit in result.hits:
                if not hit.included:
                    continue
                for dom in hit.domains:
                    if not dom.included or len(rows) > params.max_seqs:
                        continue
                    ali = dom.alignment
                    rows.append(_domain_row(ali.hmm_from, ali.hmm_to, ali.hmm_sequence, ali.target_sequence, width))
                    names.append(f"{hit.name}/{ali.target_from}-{ali.target_to}")
                    descs.append(" ".join((hit.description or "").split()))
            out[qid] = A3M(names=tuple(names), descriptions=tuple(descs), rows=tuple(rows))
    except MSAError:
        raise
    except Exception as err:  # pyhmmer raises several types (ValueError, RuntimeError, MemoryError, ...)
        raise ToolError(f"pyhmmer jackhmmer failed: {err!r}", tool="pyhmmer.jackhmmer", returncode=None,
                        stderr_tail=str(err)) from err
    finally:
        if streamed:
            targets.close()
    return out

