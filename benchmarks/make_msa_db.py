"""Synthetic protein search database for the MSA benchmark, made from real sequences.

Every sequence of the output descends from the real *parent* sequences read from the input FASTA
files (by default the 1,000 UniRef90 and 1,000 MGnify sequences of AlphaFold 3's miniature test
databases). For output sequence ``i`` (all draws from one ``numpy.random.Generator(PCG64(seed))``,
in this order):

1. **parent**: ``a`` uniform over the parents.
2. **recombination** with probability ``recombination`` (default 0.3): a second parent ``b``
   (uniform, may equal ``a``) and a fraction ``f ~ U(0.2, 0.8)``; the child is ``a``'s first
   ``floor(f * len(a))`` residues followed by ``b``'s residues from ``floor(f * len(b))`` on.
3. **point substitutions**: a rate ``r ~ U(sub_min, sub_max)`` (default 0.10-0.40) per sequence;
   each position is picked with probability ``r`` and gets a residue drawn from the *background*
   frequencies of the 20 standard amino acids (their composition in all parents), no
   substitution matrix. The draw may return the old residue, so the expected fraction of
   changed positions is ``r * (1 - sum(p_aa ** 2))``, about ``0.94 r``.
4. **short indels**: ``Poisson(indel_rate * len)`` events (default rate 0.01 per residue); each
   is an insertion (of background residues) or a deletion with equal probability, of length
   uniform in 1-5, at a uniform position of the current sequence; deletions never shorten the
   sequence below 10 residues.

Output: FASTA, one line per sequence, headers ``>syn0000001 p=<parent-a>[+<parent-b>] r=0.231``
written in a stream (one sequence in memory at a time), and a JSON-ready summary
(:class:`DBSummary`). The same seed and inputs give the same bytes (NumPy's PCG64 streams are
stable across versions).

    python -m benchmarks.make_msa_db --out /tmp/foldatlas-bench/db.fasta --n 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_PARENTS = (
    SHARED / "uniprot" / "af3_testdata_uniref90__subsampled_1000.fasta",
    SHARED / "mgnify" / "af3_testdata_mgy_clusters__subsampled_1000.fa",
)


@dataclass(frozen=True)
class GenParams:
    """How the database is generated (see the module docstring)."""

    n: int = 1_000_000
    seed: int = 20240601
    recombination: float = 0.3
    sub_min: float = 0.10
    sub_max: float = 0.40
    indel_rate: float = 0.01
    indel_max_len: int = 5
    min_len: int = 10


@dataclass(frozen=True)
class DBSummary:
    path: str
    sequences: int
    residues: int
    mean_length: float
    recombinants: int
    parents: int
    parent_files: tuple[str, ...]
    fasta_sha256: str
    params: GenParams
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def read_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(first word of the header, sequence)`` per record; sequence upper-cased, no whitespace."""
    name: str | None = None
    chunks: list[str] = []
    with open(path) as fh:
        for line in fh:
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(chunks).upper()
                name = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
                chunks = []
            elif name is not None:
                chunks.append("".join(line.split()))
    if name is not None:
        yield name, "".join(chunks).upper()


def background(seqs: Sequence[str]) -> np.ndarray:
    """Frequencies of the 20 standard amino acids over ``seqs`` (order :data:`STANDARD_AA`)."""
    counts = np.zeros(20, dtype=np.float64)
    for s in seqs:
        arr = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
        for i, aa in enumerate(STANDARD_AA.encode()):
            counts[i] += np.count_nonzero(arr == aa)
    return counts / counts.sum()


def _mutate(rng: np.random.Generator, seq: np.ndarray, rate: float, alphabet: np.ndarray,
            cdf: np.ndarray, params: GenParams) -> np.ndarray:
    mask = rng.random(seq.size) < rate
    k = int(np.count_nonzero(mask))
    if k:
        seq = seq.copy()
        seq[mask] = alphabet[np.searchsorted(cdf, rng.random(k), side="right").clip(0, 19)]
    events = int(rng.poisson(params.indel_rate * seq.size))
    for _ in range(events):
        length = int(rng.integers(1, params.indel_max_len + 1))
        insert = rng.random() < 0.5
        pos = int(rng.integers(0, seq.size + 1))
        if insert:
            new = alphabet[np.searchsorted(cdf, rng.random(length), side="right").clip(0, 19)]
            seq = np.concatenate((seq[:pos], new, seq[pos:]))
        elif seq.size - length >= params.min_len:
            seq = np.concatenate((seq[:pos], seq[pos + length:]))
    return seq


def generate(parent_files: Sequence[str | Path], out: str | Path, params: GenParams) -> DBSummary:
    """Write ``params.n`` synthetic sequences to ``out`` (FASTA); see the module docstring."""
    start = time.perf_counter()
    parents: list[tuple[str, str]] = []
    for f in parent_files:
        parents.extend(read_fasta(f))
    if not parents:
        raise ValueError(f"no sequences in {parent_files}")
    names = [n for n, _ in parents]
    arrays = [np.frombuffer(s.encode("ascii"), dtype=np.uint8) for _, s in parents]
    freqs = background([s for _, s in parents])
    cdf = np.cumsum(freqs)
    cdf[-1] = 1.0
    alphabet = np.frombuffer(STANDARD_AA.encode(), dtype=np.uint8)
    rng = np.random.Generator(np.random.PCG64(params.seed))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    residues = recombinants = 0
    with out_path.open("wb") as fh:
        buf: list[bytes] = []
        for i in range(params.n):
            a = int(rng.integers(len(parents)))
            label = names[a]
            seq = arrays[a]
            if rng.random() < params.recombination:
                b = int(rng.integers(len(parents)))
                f = rng.uniform(0.2, 0.8)
                seq = np.concatenate((seq[: int(f * seq.size)], arrays[b][int(f * arrays[b].size):]))
                label = f"{label}+{names[b]}"
                recombinants += 1
            rate = rng.uniform(params.sub_min, params.sub_max)
            seq = _mutate(rng, seq, rate, alphabet, cdf, params)
            residues += seq.size
            buf.append(b">syn%07d p=%s r=%.3f\n" % (i + 1, label.encode(), rate) + seq.tobytes() + b"\n")
            if len(buf) >= 10_000:
                data = b"".join(buf)
                fh.write(data)
                digest.update(data)
                buf = []
        data = b"".join(buf)
        fh.write(data)
        digest.update(data)
    return DBSummary(path=str(out_path), sequences=params.n, residues=residues,
                     mean_length=residues / max(params.n, 1), recombinants=recombinants, parents=len(parents),
                     parent_files=tuple(str(p) for p in parent_files), fasta_sha256=digest.hexdigest(),
                     params=params, seconds=round(time.perf_counter() - start, 2))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output FASTA")
    ap.add_argument("--parents", nargs="+", type=Path, default=list(DEFAULT_PARENTS),
                    help="real FASTA files the sequences descend from")
    ap.add_argument("--n", type=int, default=GenParams.n)
    ap.add_argument("--seed", type=int, default=GenParams.seed)
    args = ap.parse_args(argv)
    summary = generate(args.parents, args.out, GenParams(n=args.n, seed=args.seed))
    print(json.dumps(summary.to_dict(), indent=2))


if __name__ == "__main__":
    main()
