"""MSA search: two backends, MMseqs2 (batched) and HMMER (pyhmmer), over the databases of
:mod:`pipeline.msa_db`.

Library functions only: the Ray stage (:mod:`pipeline.msa_stage`) and the benchmark call them.

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
``filterresult`` diversity filter (:func:`mmseqs_commands` lists both chains). Queries go into
the query DB longest first (:func:`longest_first`; plan units hold them shortest first), so that
the tool's threads finish each step together. Every file lives in a scratch directory removed
afterwards. MMseqs2 prints non-standard query residues as their canonical letters (U, O -> X;
B -> D; Z -> E; J -> L); the query row is put back to the input sequence (the columns are the
same).

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
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeline.msa_db import BUILD_HINT, TOOLS, MSADatabase, resolve_threads
from pipeline.tools import ToolError, run_tool, scratch_dir, tool_version
from storage.a3m import A3M, MSAError, parse_a3m, write_a3m

if TYPE_CHECKING:
    from pyhmmer.easel import DigitalSequenceBlock

logger = logging.getLogger(__name__)

__all__ = [
    "HMMER_IN_MEMORY_MAX_BYTES",
    "MMSEQS_MAX_SEQ_LEN",
    "MSAParams",
    "QueryTooLong",
    "longest_first",
    "mmseqs_commands",
    "search",
    "search_a3m",
    "search_hmmer",
    "search_mmseqs",
]

#: Bumped whenever the search commands change, so cached MSAs from older recipes are not reused.
SEARCH_RECIPE_VERSION: Final = 1
#: MMseqs2's default ``--max-seq-len``: longer queries are refused before any search starts.
MMSEQS_MAX_SEQ_LEN: Final = 65535
#: HMMER databases up to this size are loaded into memory once per process; larger ones stream.
HMMER_IN_MEMORY_MAX_BYTES: Final = 2 * 1024**3

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
        raise MSAError(f"MSA database {db.name!r} is not on this machine ({db.path})", hint=BUILD_HINT)


def search(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams | None = None) -> dict[str, str]:
    """Search a work unit's queries against ``db`` with its tool; ``{id: A3M text}``.

    Raises:
        QueryTooLong: a query exceeds the tool's limit (checked before anything runs).
        MSAError: bad queries, or parameters for another tool than the database's.
        ToolNotFound: MMseqs2 missing. ToolError: the search crashed (retry or record it).
    """
    return _as_text(search_a3m(queries, db, params))


def _as_text(alignments: dict[str, A3M]) -> dict[str, str]:
    return {qid: write_a3m(a3m) for qid, a3m in alignments.items()}


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


def longest_first(queries: Sequence[tuple[str, str]]) -> list[int]:
    """Query indices, longest sequence first (ties in input order): the order a batch goes to the
    search tool in. Its threads take queries from a shared queue, so a batch that ends with its
    longest queries (as plan units, cut in length order, do) leaves threads idle at the end of every
    step; longest first is the classic remedy (LPT scheduling). Results do not depend on the order."""
    return sorted(range(len(queries)), key=lambda i: -len(queries[i][1]))


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
    return _as_text(_mmseqs_alignments(queries, db, params))


def _mmseqs_alignments(queries: Sequence[tuple[str, str]], db: MSADatabase, params: MSAParams) -> dict[str, A3M]:
    _check_db(db, "mmseqs2")
    _check_queries(queries, "mmseqs2", MMSEQS_MAX_SEQ_LEN)
    installed = _installed_mmseqs_version()
    if installed != db.tool_version:
        logger.warning("database %s was built with mmseqs %s, searching with mmseqs %s",
                       db.name, db.tool_version, installed)
    with scratch_dir("foldatlas-mmseqs-") as tmp:
        fasta = tmp / "queries.fasta"
        fasta.write_text("".join(f">{i}\n{queries[i][1]}\n" for i in longest_first(queries)))
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
    return _as_text(_hmmer_alignments(queries, db, params))


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
        raise MSAError(f"HMMER database file {target} is missing", hint=BUILD_HINT)
    streamed = target.stat().st_size > HMMER_IN_MEMORY_MAX_BYTES
    targets: Any
    if streamed:
        targets = easel.SequenceFile(str(target), format="fasta", digital=True, alphabet=abc)
    else:
        targets = _load_hmmer_block(str(target), db.db_id)
    evalue = params.e_value
    out: dict[str, A3M] = {}
    try:
        order = longest_first(queries)
        results = hmmer.jackhmmer([digital[i] for i in order], targets, max_iterations=params.n_iterations,
                                  cpus=resolve_threads(params.threads), E=evalue, domE=evalue,
                                  incE=evalue, incdomE=evalue)
        result: Any
        for i, result in zip(order, results, strict=True):
            qid, seq = queries[i]
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
    return {qid: out[qid] for qid, _ in queries}

