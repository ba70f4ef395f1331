"""Rendering benchmark: CPU time of ``foldatlas get`` for one mmCIF, record decode + ModelCIF text.

The real AFDB v4 entries of ``tests/data/afdb`` (five: 118-957 residues) are read the way
``foldatlas import`` reads them (:func:`pipeline.import_files.read_structure_file`) and encoded into
compact records with the importer's model and entry (no pTM, with PAE); then, per entry, the best
of ``--repeats`` CPU times (``time.process_time``, so that other processes on a loaded machine
count less than in wall time) of:

* ``decode_ms``: :func:`storage.structure_record.read_record` (the PAE stays undecoded);
* ``render_ms``: :meth:`StoredStructure.render_mmcif` of the decoded record;
* ``get_ms``: both, what ``foldatlas get`` does for an mmCIF once the tar member's bytes are read;
* ``render_gemmi_ms``: the previous, gemmi-only rendering (``storage.mmcif._render_modelcif_gemmi``),
  which writes the same text.

Run: ``python -m benchmarks.render_speed [--repeats N] [--out FILE]``; ``--smoke`` times the two
smallest entries once and writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "afdb"
OUT = ROOT / "benchmarks" / "results" / "render_speed.json"


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` calls, CPU milliseconds of this process."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1000.0


SMOKE = ["O05023", "P00221"]  # the two smallest entries


def records(data: Path = DATA, accessions: list[str] | None = None) -> dict[str, bytes]:
    """Compact records of the AFDB entries under ``data`` (all, or ``accessions``) as ``foldatlas import`` writes them."""
    from pipeline.import_files import read_structure_file
    from pipeline.importer import _model_info
    from storage.mmcif import ModelCIFEntry
    from storage.structure_record import encode_prediction

    out: dict[str, bytes] = {}
    for path in sorted(data.glob("AF-*-F1-model_v4.cif*")):
        accession = path.name.split("-")[1]
        if accessions is not None and accession not in accessions:
            continue
        pae = next(iter(data.glob(f"AF-{accession}-F1-predicted_aligned_error_v4.json*")), None)
        s = read_structure_file(path, "afdb", accession, pae, "4")
        meta = s.afdb
        assert meta is not None
        entry = ModelCIFEntry(
            entry_id=f"AF-{accession}-F1", accession=accession, uniprot_id=meta.uniprot_id,
            description=meta.description, organism_scientific_name=meta.organism, tax_id=meta.tax_id,
            sequence_db_name="UNP", gene_name=meta.gene,
            sequence_version_date=meta.sequence_version_date,
            model_created_date=meta.model_created_date or date(2024, 1, 1), sequence_checksum=meta.sequence_checksum,
        )
        out[accession] = encode_prediction(s.prediction, entry, _model_info(s), {"run_id": "bench"},
                                           with_ptm=False, with_pae=s.has_pae)
    return out


def run(data: Path, repeats: int, smoke: bool = False) -> dict[str, Any]:
    from storage.mmcif import _render_modelcif_gemmi
    from storage.structure_record import read_record

    recs = records(data, SMOKE if smoke else None)
    per_entry = []
    for accession, record in sorted(recs.items(), key=lambda kv: len(kv[1])):
        stored = read_record(record)
        args = (stored.prediction(with_pae=False), stored.entry(), stored.model_info(),
                stored.meta.get("provenance") or {})
        text = stored.render_mmcif()
        if text != _render_modelcif_gemmi(*args, with_ptm=False):
            raise RuntimeError(f"{accession}: the fast rendering differs from the gemmi-only one")
        mask = stored.compact.atom_mask
        per_entry.append({
            "accession": accession, "residues": int(mask.shape[0]), "atoms": int(np.count_nonzero(mask)),
            "mmcif_bytes": len(text.encode()),
            "decode_ms": _best_ms(lambda r=record: read_record(r), repeats),
            "render_ms": _best_ms(stored.render_mmcif, repeats),
            "get_ms": _best_ms(lambda r=record: read_record(r).render_mmcif(), repeats),
            "render_gemmi_ms": _best_ms(lambda a=args: _render_modelcif_gemmi(*a, with_ptm=False), repeats),
        })
    return {
        "clock": "time.process_time (CPU time of this process), best of repeats",
        "repeats": repeats,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__},
        "entries": per_entry,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.data, 1 if args.smoke else args.repeats, smoke=args.smoke)
    out = args.out or (None if args.smoke else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    for e in result["entries"]:
        print(f"{e['accession']:>11} {e['residues']:>4} aa {e['atoms']:>5} atoms  decode {e['decode_ms']:6.1f} ms  "
              f"render {e['render_ms']:6.1f} ms  get {e['get_ms']:6.1f} ms  (gemmi-only render "
              f"{e['render_gemmi_ms']:6.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
