"""Synthetic atlas for the query benchmark: N entries + N structures, two physical layouts.

Writes under ``--out``:

``layout/``  the chosen layout (:mod:`storage.layout`) at full size: every table globally sorted by
    its key, cut into ``--target-rows`` files (``c-000001-<n>.parquet``, exactly what
    :func:`storage.layout.compact` writes, via the same writer), row groups and bloom filters as
    in ``LAYOUTS``. Rows are generated in key order, so no sort is needed to write them.
``naive/``  the layout written today (``storage.atlas.write_parquet``: zstd, 10k-row groups, no
    sort, no bloom filter), one file per table and work unit of ``--unit-size`` rows, for the
    first ``--naive-entries`` entries (the same rows as in ``layout/``). Work units group random
    entries, as the planner's length-sorted units do, so each file spans the whole key range.
``mmcif/``  (``layout/mmcif`` and ``naive/mmcif`` point at it) real tar shards of ``--unit-size``
    members as the write stage stores them today: one compact structure record (``*.fac``,
    :mod:`storage.structure_record`; mmCIF and PAE JSON rendered from it by ``foldatlas get``) per
    structure, made from the AFDB test entries (118-957 residues) by ``benchmarks.render_speed.records``,
    ``mmcif_member`` = ``pae_member``; written only for the work units of the sampled keys; every other
    ``structures`` row points at a shard that does not exist.
``keys.json`` the sampled keys (accessions and sequence hashes of entries in both layouts).

What the rows look like (all columns of ``ENTRIES_SCHEMA`` / ``STRUCTURES_SCHEMA``):
accessions are UniProt TrEMBL-style (``A0A`` + 7 characters of the UniProt pattern), increasing
with the entry index; lengths are drawn from the lengths of the real UniProt FASTA files in
``/work/shared/data/uniprot`` (E. coli proteome + AF3 test subsets); taxIds follow a Zipf law
(exponent 1.1) over 200,000 taxa, so a few organisms hold most entries, as in UniProt; mean pLDDT
is a two-component mixture (mean 80 / 45), band fractions from a normal residue distribution
around it, pTM correlated with it; ~1 % of entries failed (metrics null). Hashes are random
hex strings of the right width (not hashes of the synthetic sequences), which does not change
how they sort or compress. Sequences are random residues at UniProt background frequencies.
``structures.plddt`` (per-residue lists) is filled only with ``--plddt`` (it is ~1.2 kB per
300-residue row: 12 GB raw for 10M rows); without it the column is null. One structure per entry.

    nice -n 10 python -m benchmarks.make_synthetic_atlas --out /tmp/foldatlas-qbench --entries 10000000

``--keep-entries`` keeps ``layout/entries`` of an earlier run with the same ``--entries``/``--seed``
(its rows are a pure function of them) and rewrites everything else: the entries are most of the
generation time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.atlas import Atlas, write_parquet
from storage.layout import COMPACTED_PREFIX, layout_for, write_sorted_files
from storage.mmcif_shard import RECORD_SUFFIX, write_mmcif_shard
from storage.schema import ENTRIES_SCHEMA, STRUCTURES_SCHEMA

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SHARED_UNIPROT = ROOT.parent / "shared" / "data" / "uniprot"
TEST_UNIPROT = ROOT / "tests" / "data" / "uniprot"
AFDB_FILES = ROOT / "tests" / "data" / "afdb"
AA = "ACDEFGHIKLMNPQRSTVWY"
# UniProtKB/TrEMBL amino-acid composition (%), release 2023 statistics, rounded.
AA_FREQ = [8.9, 1.2, 5.4, 6.2, 3.9, 7.2, 2.2, 5.8, 5.1, 9.9, 2.4, 3.9, 4.8, 3.8, 5.7, 6.7, 5.5, 7.0, 1.3, 2.9]
ALNUM = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
ALPHA = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
DIGIT = np.frombuffer(b"0123456789", dtype=np.uint8)
# UniProt accession [OPQ][0-9][A-Z0-9]{3}[0-9] | [A-NR-Z][0-9]([A-Z][A-Z0-9]{2}[0-9]){1,2}: "A0A" then
# [A-Z0-9]{2}[0-9][A-Z][A-Z0-9]{2}[0-9]; characters in ASCII order, so strings sort like numbers.
_ACC_TAIL = (ALNUM, ALNUM, DIGIT, ALPHA, ALNUM, ALNUM, DIGIT)
ACC_SPACE = int(np.prod([len(a) for a in _ACC_TAIL]))
N_TAXA = 200_000
CHUNK = 131_072


def fixed_width_strings(chars: np.ndarray) -> pa.Array:
    """A string array from an (n, width) uint8 array of ASCII characters."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))
                                            ).cast(pa.string())


def hex_strings(raw: np.ndarray, upper: bool = False) -> pa.Array:
    digits = np.frombuffer(b"0123456789ABCDEF" if upper else b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    chars[:, 0::2] = digits[raw >> 4]
    chars[:, 1::2] = digits[raw & 15]
    return fixed_width_strings(chars)


def accession_chars(values: np.ndarray) -> np.ndarray:
    out = np.empty((len(values), 10), dtype=np.uint8)
    out[:, :3] = np.frombuffer(b"A0A", dtype=np.uint8)
    rest = values.copy()
    for pos in range(6, -1, -1):
        alphabet = _ACC_TAIL[pos]
        out[:, 3 + pos] = alphabet[rest % len(alphabet)]
        rest //= len(alphabet)
    return out


def random_sequences(rng: np.random.Generator, lengths: np.ndarray) -> pa.Array:
    table = np.repeat(np.frombuffer(AA.encode(), dtype=np.uint8),
                      np.round(np.array(AA_FREQ) / sum(AA_FREQ) * 1000).astype(int))
    data = table[rng.integers(0, len(table), int(lengths.sum()))]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data)).cast(pa.string())


def fasta_lengths(paths: Sequence[Path]) -> np.ndarray:
    lengths: list[int] = []
    for p in paths:
        n = -1
        for line in p.read_text().splitlines():
            if line.startswith(">"):
                if n > 0:
                    lengths.append(n)
                n = 0
            elif n >= 0:
                n += len(line.strip())
        if n > 0:
            lengths.append(n)
    return np.array(lengths, dtype=np.int64)


def default_length_sources() -> list[Path]:
    found = sorted(SHARED_UNIPROT.glob("*.fasta"))
    return found or sorted(TEST_UNIPROT.glob("sample.fasta"))


def norm_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


class Universe:
    """Per-entry global arrays (O(N) memory: ~70 bytes per entry) from which rows are built."""

    def __init__(self, n: int, seed: int, length_pool: np.ndarray, unit_size: int) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.seed, self.unit_size = n, seed, unit_size
        stride = max(1, ACC_SPACE // max(n, 1))
        self.acc_value = np.arange(n, dtype=np.int64) * stride + rng.integers(0, stride, n)
        self.lengths = rng.choice(length_pool, n).astype(np.int64)
        raw = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        words = raw.view(">u8").astype(np.uint64)  # (n, 4) big-endian words: byte order = hex order
        order = np.lexsort(words.T[::-1])
        self.sha_sorted = raw[order]  # structure j has hash sha_sorted[j]
        self.rank = rng.permutation(n)  # entry i has hash sha_sorted[rank[i]]
        self.entry_of = np.argsort(self.rank)  # structure j belongs to entry entry_of[j]
        ranks = np.clip(rng.zipf(1.1, n), 1, N_TAXA) - 1
        self.taxon = ranks.astype(np.int64)
        self.tax_ids = rng.choice(np.arange(1, 3_000_000), N_TAXA, replace=False)
        mix = rng.random(n) < 0.75
        self.mean_plddt = np.clip(np.where(mix, rng.normal(80, 10, n), rng.normal(45, 12, n)), 20, 98.5)
        self.ptm = np.clip(self.mean_plddt / 100 - 0.08 + rng.normal(0, 0.08, n), 0.05, 0.98)
        self.failed = rng.random(n) < 0.01
        # the unit (work unit of unit_size entries, random members) and position of every entry
        units = rng.permutation(n)
        self.unit = np.empty(n, dtype=np.int64)
        self.unit[units] = np.arange(n) // unit_size
        self.slot = np.empty(n, dtype=np.int64)
        self.slot[units] = np.arange(n) % unit_size

    def accessions(self, idx: np.ndarray) -> pa.Array:
        return fixed_width_strings(accession_chars(self.acc_value[idx]))

    def unit_ids(self, idx: np.ndarray) -> pa.Array:
        raw = np.zeros((len(idx), 10), dtype=np.uint8)
        raw[:, :8] = self.unit[idx].astype(">u8").view(np.uint8).reshape(-1, 8)
        raw[:, 8:] = np.frombuffer(b"\x5a\xa5", dtype=np.uint8)
        return pc.binary_join_element_wise("esmfold-", hex_strings(raw), "")


def _strings(prefix: str, idx: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(idx), pa.string()), "")


def _masked(values: np.ndarray, mask: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, type=type_, mask=mask)


def _one_item_lists(values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), values)


def entries_chunk(u: Universe, idx: np.ndarray, rng: np.random.Generator) -> pa.Table:
    n = len(idx)
    acc = u.accessions(idx)
    failed = u.failed[idx]
    mean = u.mean_plddt[idx]
    sd = 15.0
    bands = [norm_cdf((t - mean) / sd) for t in (50.0, 70.0, 90.0)]
    frac = {"VeryLow": bands[0], "Low": bands[1] - bands[0], "Confident": bands[2] - bands[1],
            "VeryHigh": 1.0 - bands[2]}
    taxon = u.taxon[idx]
    species = _strings("Organism species ", taxon)
    mnemonic = pc.utf8_upper(_strings("SP", taxon % 99_991))
    desc_pool = pa.array([f"Uncharacterized protein family {k}" if k % 3 else f"Putative enzyme class {k}"
                          for k in range(5000)])
    desc = desc_pool.take(pa.array(rng.integers(0, 5000, n)))
    gene_null = rng.random(n) < 0.3
    gene = pa.array(np.char.add("g", rng.integers(0, 50_000, n).astype(str)).astype(object), mask=gene_null)
    lengths = u.lengths[idx]
    created = datetime(2026, 11, 1, tzinfo=UTC)
    header = pc.binary_join_element_wise("tr|", acc, "|", acc, "_", mnemonic, " ", desc, " OS=", species,
                                         " OX=", pc.cast(pa.array(u.tax_ids[taxon]), pa.string()), "")
    shas = hex_strings(u.sha_sorted[u.rank[idx]])
    nul_l = pa.nulls(n, pa.list_(pa.string()))
    cols: dict[str, Any] = {
        "allVersions": _one_item_lists(pa.array(np.ones(n, dtype=np.int64))),
        "entryId": pc.binary_join_element_wise("FA-", acc, "-F1", ""),
        **{f"fractionPlddt{k}": _masked(np.round(v, 3), failed, pa.float64()) for k, v in frac.items()},
        "gene": gene,
        "geneSynonyms": nul_l,
        "globalMetricValue": _masked(np.round(mean + rng.normal(0, 0.5, n), 2), failed, pa.float64()),
        "isReferenceProteome": pa.array(rng.random(n) < 0.3),
        "isReviewed": pa.array(rng.random(n) < 0.05),
        "latestVersion": pa.array(np.ones(n, dtype=np.int64)),
        "modelCreatedDate": pa.array([date(2026, 11, 1)] * n, pa.date32()),
        "organismCommonNames": nul_l,
        "organismScientificName": species,
        "organismSynonyms": nul_l,
        "proteinFullNames": _one_item_lists(desc),
        "proteinShortNames": nul_l,
        "sequenceChecksum": hex_strings(rng.integers(0, 256, (n, 8), dtype=np.uint8), upper=True),
        "sequenceVersionDate": pa.nulls(n, pa.date32()),
        "taxId": pa.array(u.tax_ids[taxon]),
        "uniprotAccession": acc,
        "uniprotDescription": desc,
        "uniprotEnd": pa.array(lengths),
        "uniprotId": pc.binary_join_element_wise(acc, mnemonic, "_"),
        "uniprotSequence": random_sequences(rng, lengths),
        "uniprotStart": pa.array(np.ones(n, dtype=np.int64)),
        "accession": acc,
        "model": pa.array(["esmfold"] * n),
        "status": pa.array(np.where(failed, "failed", "predicted").astype(object)),
        "ptm": _masked(u.ptm[idx], failed, pa.float64()),
        "mean_plddt": _masked(mean, failed, pa.float64()),
        "tier": _masked(np.where((mean > 70) & (u.ptm[idx] > 0.7), "high", "low").astype(object), failed,
                        pa.string()),
        "published": pa.array(~failed),
        "sequence_sha256": shas,
        "sequence_md5": hex_strings(rng.integers(0, 256, (n, 16), dtype=np.uint8)),
        "sequence_length": pa.array(lengths),
        "failure_reason": pa.array(np.where(failed, "oom", None).astype(object), pa.string()),
        "fold_route": pa.array(["normal"] * n),
        "fragment_of_sha256": pa.nulls(n, pa.string()),
        "msa_depth": pa.nulls(n, pa.int64()),
        "msa_neff": pa.nulls(n, pa.float64()),
        "msa_key": pa.nulls(n, pa.string()),
        "taxonomy_source": pa.array(["uniprot_header"] * n),
        "source_file": _strings("uniprot_trembl_", idx // 1_000_000),
        "source_record_index": pa.array(idx % 1_000_000),
        "header": header,
        "protein_existence": pa.array(rng.integers(1, 6, n)),
        "sequence_version": pa.array(rng.integers(1, 4, n)),
        "ingest_notes": nul_l,
        "run_id": _strings("run-2026-11-", idx // 1_000_000),
        "created_at": pa.array([created] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table([cols[f.name] for f in ENTRIES_SCHEMA], schema=ENTRIES_SCHEMA)


def member_names(acc: pa.Array) -> pa.Array:
    """Record member names as the write stage names them (``<entryId>-model_v1.fac``)."""
    return pc.binary_join_element_wise("FA-", acc, f"-F1-model_v1{RECORD_SUFFIX}", "")


def structures_chunk(u: Universe, js: np.ndarray, rng: np.random.Generator, plddt: bool,
                     real_members: dict[int, tuple[int, int, int, int]]) -> pa.Table:
    """Structures rows ``js`` (in hash order). ``real_members``: entry -> offsets in a real shard."""
    n = len(js)
    idx = u.entry_of[js]
    failed = u.failed[idx]
    mean = u.mean_plddt[idx]
    lengths = u.lengths[idx]
    acc = u.accessions(idx)
    member = member_names(acc)
    # Offsets of an unwritten shard: plausible (records of ~40 kB, 512-byte headers); PAE = same record.
    slot = u.slot[idx]
    offs = np.stack([512 + slot * 40_960, 40_000 + 0 * slot, 512 + slot * 40_960, 40_000 + 0 * slot], 1)
    for k, e in enumerate(idx):
        got = real_members.get(int(e))
        if got is not None:
            offs[k] = got
    if plddt:
        values = np.clip(np.repeat(mean, lengths) + rng.normal(0, 12, int(lengths.sum())), 0, 100).astype(np.float32)
        pl = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), values)
        plddt_col: pa.Array = pc.if_else(pa.array(failed), pa.nulls(n, pl.type), pl)
    else:
        plddt_col = pa.nulls(n, pa.list_(pa.float32()))
    created = datetime(2026, 11, 1, tzinfo=UTC)
    unit = u.unit_ids(idx)
    bands = [norm_cdf((t - mean) / 15.0) for t in (50.0, 70.0, 90.0)]
    ok = ~failed
    cols: dict[str, Any] = {
        "sequence_sha256": hex_strings(u.sha_sorted[js]),
        "model": pa.array(["esmfold"] * n),
        "sequence_md5": hex_strings(rng.integers(0, 256, (n, 16), dtype=np.uint8)),
        "sequence_crc64": hex_strings(rng.integers(0, 256, (n, 8), dtype=np.uint8), upper=True),
        "sequence": random_sequences(rng, lengths),
        "sequence_length": pa.array(lengths),
        "model_version": pa.array(["transformers-4.46 EsmForProteinFolding"] * n),
        "weights_sha256": pa.array(["9f0e" * 16] * n),
        "model_trained": pa.array(np.ones(n, dtype=bool)),
        "precision": pa.array(["fp16"] * n),
        "plddt": plddt_col,
        "mean_plddt": pa.array(mean),
        "global_metric_value": pa.array(np.round(mean + rng.normal(0, 0.5, n), 2)),
        "fraction_plddt_very_low": pa.array(np.round(bands[0], 3)),
        "fraction_plddt_low": pa.array(np.round(bands[1] - bands[0], 3)),
        "fraction_plddt_confident": pa.array(np.round(bands[2] - bands[1], 3)),
        "fraction_plddt_very_high": pa.array(np.round(1 - bands[2], 3)),
        "ptm": pa.array(u.ptm[idx]),
        "max_pae": pa.array(np.full(n, 31.75)),
        "mean_pae": pa.array(np.clip(30 - u.ptm[idx] * 25 + rng.normal(0, 1, n), 0.5, 31.75)),
        "ca_ca_outlier_fraction": pa.array(np.zeros(n)),
        "tier": pa.array(np.where((mean > 70) & (u.ptm[idx] > 0.7), "high", "low").astype(object)),
        "published": pa.array(ok),
        "representative_accession": acc,
        "mmcif_shard": _masked_str(pc.binary_join_element_wise("mmcif/", unit, ".tar", ""), failed),
        "mmcif_member": _masked_str(member, failed),
        "mmcif_offset": _masked(offs[:, 0], failed, pa.int64()),
        "mmcif_size": _masked(offs[:, 1], failed, pa.int64()),
        "pae_member": _masked_str(member, failed),
        "pae_offset": _masked(offs[:, 2], failed, pa.int64()),
        "pae_size": _masked(offs[:, 3], failed, pa.int64()),
        "model_seconds": pa.array(lengths * 0.004),
        "batch_size": pa.array(rng.integers(1, 33, n)),
        "unit_id": unit,
        "run_id": _strings("run-2026-11-", idx // 1_000_000),
        "created_at": pa.array([created] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table([cols[f.name] for f in STRUCTURES_SCHEMA], schema=STRUCTURES_SCHEMA)


def _masked_str(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(mask), pa.nulls(len(arr), pa.string()), arr)


def write_real_shards(u: Universe, entries: np.ndarray, mmcif_dir: Path) -> dict[int, tuple[int, int, int, int]]:
    """Write the tar shards of the units holding ``entries``; returns entry -> member offsets."""
    from benchmarks.render_speed import records

    blobs = [rec for _, rec in sorted(records(AFDB_FILES).items())]  # compact records, 118-957 residues
    out: dict[int, tuple[int, int, int, int]] = {}
    for unit in sorted({int(u.unit[e]) for e in entries}):
        members_idx = np.flatnonzero(u.unit == unit)
        members_idx = members_idx[np.argsort(u.slot[members_idx])]
        names = member_names(u.accessions(members_idx)).to_pylist()
        name = u.unit_ids(members_idx[:1])[0].as_py()
        index = write_mmcif_shard(mmcif_dir / f"{name}.tar",
                                  [(names[k], blobs[k % len(blobs)]) for k in range(len(members_idx))])
        for k, e in enumerate(members_idx):
            m = index[k]
            out[int(e)] = (m.offset, m.size, m.offset, m.size)
    return out


def _chunks(n: int, size: int = CHUNK) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(n, start + size), dtype=np.int64)


def _batches(tables: Iterator[pa.Table]) -> Iterator[pa.RecordBatch]:
    for t in tables:
        yield from t.combine_chunks().to_batches()


def _keep_entries(out: Path, entries: int, seed: int, target_rows: int) -> Path | None:
    """Move an earlier run's complete ``layout/entries`` aside (None when there is none to keep)."""
    import pyarrow.parquet as pq

    src = out / "layout" / "entries"
    files = sorted(src.glob(f"{COMPACTED_PREFIX}000001-*.parquet"))
    try:
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (OSError, pa.ArrowInvalid):
        rows = -1
    if rows != entries or len(files) != -(-entries // target_rows):
        log.warning("no complete entries table of %d rows in %s: writing it", entries, src)
        return None
    log.info("keeping %s (%d files; seed %d assumed)", src, len(files), seed)
    aside = out.parent / f".{out.name}.entries-kept"
    if aside.exists():
        shutil.rmtree(aside)
    first = pq.ParquetFile(files[0])
    if (first.schema_arrow.names == ENTRIES_SCHEMA.names
            and first.metadata.row_group(0).num_rows == layout_for("entries").row_group_rows):
        os.rename(src, aside)
        return aside
    # older schema or row groups: rewritten (same rows, today's columns and LAYOUTS), ~1 min per file
    from storage.lookup import conform

    aside.mkdir()
    batches = (conform("entries", pa.Table.from_batches([b])).to_batches()[0]
               for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=CHUNK))
    write_sorted_files("entries", batches, aside, f"{COMPACTED_PREFIX}000001-", target_rows)
    return aside


def generate(out: Path, entries: int, naive_entries: int, unit_size: int = 100, seed: int = 7,
             target_rows: int = 1_000_000, plddt: bool = False, sample: int = 60,
             length_sources: Sequence[Path] | None = None, keep_entries: bool = False) -> dict[str, Any]:
    """Write the two layouts and ``keys.json``; returns the summary (also ``generated.json``).

    ``keep_entries``: reuse ``layout/entries`` of an earlier run of the same size and seed.
    """
    t0 = time.perf_counter()
    kept = _keep_entries(out, entries, seed, target_rows) if keep_entries else None
    if out.exists():
        shutil.rmtree(out)
    pool = fasta_lengths(length_sources or default_length_sources())
    u = Universe(entries, seed, pool, unit_size)
    rng = np.random.default_rng(seed + 1)
    naive_units = max(1, naive_entries // unit_size)
    in_naive = np.flatnonzero(u.unit < naive_units)  # whole work units
    gettable = in_naive[~u.failed[in_naive]]  # failed entries have no structure
    sample_idx = np.sort(rng.choice(gettable, min(sample, len(gettable)), replace=False))
    mmcif = out / "mmcif"
    real = write_real_shards(u, sample_idx, mmcif)
    timings: dict[str, float] = {"setup_s": time.perf_counter() - t0}

    layout = Atlas(out / "layout")
    layout.init()
    (layout.root / "mmcif").rmdir()
    os.symlink("../mmcif", layout.root / "mmcif")
    prefix = f"{COMPACTED_PREFIX}000001-"
    t1 = time.perf_counter()
    files: dict[str, int] = {}
    if kept is not None:
        shutil.rmtree(layout.table_dir("entries"))
        os.rename(kept, layout.table_dir("entries"))
        files["entries"] = len(list(layout.table_dir("entries").glob(f"{prefix}*.parquet")))
    else:
        written = write_sorted_files(
            "entries", _batches(entries_chunk(u, i, np.random.default_rng([seed, 2, int(i[0])])) for i in _chunks(entries)),
            layout.table_dir("entries"), prefix, target_rows)
        files["entries"] = len(written)
    timings["layout_entries_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    written = write_sorted_files(
        "structures", _batches(structures_chunk(u, j, np.random.default_rng([seed, 3, int(j[0])]), plddt, real)
                               for j in _chunks(entries)),
        layout.table_dir("structures"), prefix, target_rows)
    files["structures"] = len(written)
    timings["layout_structures_s"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    naive = Atlas(out / "naive")
    naive.init()
    (naive.root / "mmcif").rmdir()
    os.symlink("../mmcif", naive.root / "mmcif")
    by_unit = in_naive[np.argsort(u.unit[in_naive], kind="stable")]
    bounds = np.flatnonzero(np.diff(u.unit[by_unit])) + 1
    n_units = 0
    for members in np.split(by_unit, bounds):
        if not len(members):
            continue
        r = np.random.default_rng([seed, 4, int(members[0])])
        name = u.unit_ids(members[:1])[0].as_py()
        write_parquet(entries_chunk(u, members, r), naive.table_dir("entries") / f"{name}.parquet")
        js = np.sort(u.rank[members])[::-1].copy()  # not key order: today's shards are length/record ordered
        write_parquet(structures_chunk(u, js, r, plddt, real), naive.table_dir("structures") / f"{name}.parquet")
        n_units += 1
    timings["naive_s"] = time.perf_counter() - t1

    keys = {
        "accessions": u.accessions(sample_idx).to_pylist(),
        "sequence_sha256": hex_strings(u.sha_sorted[u.rank[sample_idx]]).to_pylist(),
        "unit_ids": u.unit_ids(sample_idx).to_pylist(),
    }
    (out / "keys.json").write_text(json.dumps(keys, indent=1))
    summary = {
        "entries": entries, "structures": entries, "naive_entries": len(in_naive), "unit_size": unit_size,
        "naive_files_per_table": n_units, "layout_files": files, "target_rows": target_rows, "seed": seed,
        "plddt_lists": plddt, "length_pool": {"sequences": len(pool), "mean": float(pool.mean()),
                                              "median": float(np.median(pool)),
                                              "sources": [p.name for p in (length_sources or default_length_sources())]},
        "mean_length_drawn": float(u.lengths.mean()),
        "real_tar_shards": len(list(mmcif.glob("*.tar"))),
        "bytes": {name: sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file() and not f.is_symlink())
                  for name in ("layout", "naive", "mmcif")},
        "timings": {**timings, "total_s": time.perf_counter() - t0},
    }
    (out / "generated.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/foldatlas-qbench"))
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--naive-entries", type=int, default=200_000)
    ap.add_argument("--unit-size", type=int, default=100)
    ap.add_argument("--target-rows", type=int, default=1_000_000)
    ap.add_argument("--plddt", action="store_true", help="fill structures.plddt (per-residue lists)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep-entries", action="store_true",
                    help="reuse layout/entries of an earlier run with the same --entries and --seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = generate(args.out, args.entries, args.naive_entries, args.unit_size, args.seed, args.target_rows,
                       args.plddt, keep_entries=args.keep_entries)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
