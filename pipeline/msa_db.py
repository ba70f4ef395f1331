"""MSA search databases: build, identity record, load (``foldatlas msa-db build``).

The searches that run against them are in :mod:`pipeline.msa`.

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
  (:data:`pipeline.msa.HMMER_IN_MEMORY_MAX_BYTES`); smaller ones are loaded once per process and kept.

``db_id`` is a short SHA-256 of (tool, tool version, the inputs' SHA-256 in the order given,
indexed, and for a clustered database the clustering's method, identity and coverage): the same
files built the same way get the same id, wherever they lie.
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
from typing import Any, Final

from pipeline.errors import InputError
from pipeline.tools import ToolNotFound, run_tool, scratch_dir, tool_version
from storage.a3m import MSAError

logger = logging.getLogger(__name__)

__all__ = [
    "BUILD_HINT",
    "CLUSTER_METHODS",
    "IDENTITY_FILE",
    "TOOLS",
    "Clustering",
    "DatabaseFile",
    "InputFile",
    "MSADatabase",
    "available_tool",
    "build_msa_db",
    "compute_db_id",
    "load_msa_db",
    "resolve_threads",
    "search_tool_ready",
]

#: Supported search tools.
TOOLS: Final = ("mmseqs2", "hmmer")
#: The identity record inside a database directory.
IDENTITY_FILE: Final = "foldatlas-msa-db.json"
#: Version of the directory layout written by :func:`build_msa_db`.
FORMAT_VERSION: Final = 1
#: What to tell a user whose database is missing or broken.
BUILD_HINT: Final = "build it with `foldatlas msa-db build FASTA... --out DIR` (library: pipeline.msa_db.build_msa_db)"

_MMSEQS_DB = "db"
_MMSEQS_REPS = "rep"
_MMSEQS_CLU = "clu"
_MMSEQS_CLU_ALN = "clu_aln"
_HMMER_DB = "sequences.fasta"


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
            raise MSAError(f"invalid MSA database record: {e!r}", hint=BUILD_HINT) from e


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
        raise MSAError(f"no MSA database at {path}: directory not found", hint=BUILD_HINT)
    ident = path / IDENTITY_FILE
    if not ident.is_file():
        raise MSAError(f"{path} is not an MSA database: {IDENTITY_FILE} is missing (or its build did not finish)",
                       hint=BUILD_HINT)
    try:
        data = json.loads(ident.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MSAError(f"{ident} is unreadable or not JSON: {e}", hint=f"rebuild the database; {BUILD_HINT}") from e
    if not isinstance(data, dict):
        raise MSAError(f"{ident} does not hold a JSON object", hint=f"rebuild the database; {BUILD_HINT}")
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
                       hint=f"rebuild it; {BUILD_HINT}")
    return db
