"""How ``storage/compact_table.py`` (format 3's built-in geometry) was made, and a check that it still is.

For every atom class (residue type, atom) of the real AFDB v4 entries in ``tests/data/afdb``, the
format 3 frame components q of its atoms (:func:`storage.compact_model.frame_components`) give the
medians of q0, q1, q2 and of the q1/q2 circle radius; a class is coded as *fixed* when two Laplace
laws around the median q1 and q2 cost fewer bits (estimated from the mean absolute deviations) than
the free coding: a uniform position on the circle, a 2-bit quadrant and the radius residual.

The table is part of the record format: it was generated once and must not change for format 3
(``--check`` verifies that the committed table is what this script derives; ``--write`` rewrites
it, for a new format version only). ``--without ACCESSION`` derives it without one entry and
reports that entry's record size with both tables (how much the sizes owe to fitting the table on
the entries they are measured on).

Run: ``python -m benchmarks.compact_table [--check | --write | --without ACCESSION]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from storage.compact import CompactStructure

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "storage" / "compact_table.py"

HEADER = '''"""Built-in geometry of compact record format 3 (frozen: changing a value changes the format).

``CLASS_TABLE[restype * 37 + atom37]`` = (q0, q1, q2, radius, fixed) of the atom class in its format 3
frame (:mod:`storage.compact_model`), thousandths of an Angstrom: the medians of the frame components
and of the q1/q2 circle radius, and whether the class is coded as fixed (q minus the reference) or
free (a torsion: position on the circle). Measured once on the five AlphaFold DB v4 entries of
``tests/data/afdb`` (2,470 residues) with ``python -m benchmarks.compact_table``; classes absent there
(and OXT, seen once per chain) use (0, 0, 0, 0, free), which is lossless, only larger.
"""

CLASS_TABLE: dict[int, tuple[int, int, int, int, int]] = {
'''


def structures(accessions: list[str] | None = None) -> dict[str, CompactStructure]:
    from benchmarks.storage_size import DATA, _accessions, _find, _read
    from storage.compact import quantize
    from storage.mmcif import read_modelcif

    out = {}
    for acc in accessions or _accessions(DATA):
        contents = read_modelcif(_read(_find(DATA, acc, "cif")).decode())
        out[acc] = quantize(contents.sequence, contents.atom_positions, contents.atom_mask, contents.plddt, None)
    return out


def _mad_bits(x: np.ndarray) -> float:
    """Bits per value of a Laplace law around the median (scale = mean absolute deviation, >= 0.5)."""
    return float(np.log2(2 * np.e * max(float(np.mean(np.abs(x - np.median(x)))), 0.5)))


def derive(structs: dict[str, CompactStructure]) -> dict[int, tuple[int, int, int, int, int]]:
    from storage import compact
    from storage.compact_model import frame_components
    from storage.mmcif import ATOM_TYPES

    samples: dict[int, list[np.ndarray]] = {}
    for s in structs.values():
        seq, mask = s.sequence, s.atom_mask
        ref, is_ca = compact._references(seq, mask)
        classes = compact._atom_classes(seq, mask)
        g, gg = compact._frames_for(3, seq, mask, ref, is_ca, classes)
        rows, q, _ = frame_components(s.coords, ref, g, gg, is_ca)
        for c in np.unique(classes[rows]):
            samples.setdefault(int(c), []).append(q[classes[rows] == c])
    table = {}
    for c, parts in sorted(samples.items()):
        if c % len(ATOM_TYPES) == ATOM_TYPES.index("OXT"):
            continue
        qs = np.concatenate(parts)
        m = np.rint(np.median(qs, axis=0)).astype(int)
        hyp = np.sqrt(qs[:, 1].astype(np.float64) ** 2 + qs[:, 2].astype(np.float64) ** 2)
        radius = int(np.rint(np.median(hyp)))
        small = np.where(np.abs(qs[:, 1]) > np.abs(qs[:, 2]), qs[:, 2], qs[:, 1])
        fixed_bits = _mad_bits(qs[:, 1]) + _mad_bits(qs[:, 2])
        free_bits = np.log2(max(2 * int(np.abs(small).max()), 2)) + 2 + _mad_bits(hyp - radius)
        table[c] = (int(m[0]), int(m[1]), int(m[2]), radius, int(fixed_bits < free_bits))
    return table


def render(table: dict[int, tuple[int, int, int, int, int]]) -> str:
    from storage.mmcif import ATOM_TYPES

    letters = "ARNDCQEGHILKMFPSTWYVX"
    rows = [f"    {c}: {v},  # {letters[c // 37]} {ATOM_TYPES[c % 37]}" for c, v in sorted(table.items())]
    return HEADER + "\n".join(rows) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 unless the committed table is derived again")
    group.add_argument("--write", action="store_true", help=f"rewrite {TABLE.relative_to(ROOT)}")
    group.add_argument("--without", metavar="ACCESSION", help="leave one entry out and compare its record size")
    args = parser.parse_args(argv)
    structs = structures()
    if args.without:
        return _leave_out(structs, args.without)
    text = render(derive(structs))
    if args.write:
        TABLE.write_text(text)
    elif args.check:
        same = TABLE.read_text() == text
        print("committed table matches" if same else "committed table differs from the derived one")
        return 0 if same else 1
    else:
        print(text)
    return 0


def _leave_out(structs: dict[str, CompactStructure], held: str) -> int:
    from storage import compact, compact_model

    train = derive({k: v for k, v in structs.items() if k != held})
    full = compact_model._CLASS_ARRAY
    sizes = []
    for table in (None, train):
        if table is not None:
            compact_model._CLASS_ARRAY = np.array([table.get(c, (0, 0, 0, 0, 0)) for c in range(full.shape[0])],
                                                  dtype=np.int64)
        try:
            s = structs[held]
            parts = compact.section_sizes(compact.encode_structure(s))
            sizes.append((parts["coordinates"] + parts["plddt"]) / len(s.sequence))
        finally:
            compact_model._CLASS_ARRAY = full
    print(f"{held}: coordinates + pLDDT {sizes[0]:.2f} B/res with the committed table, "
          f"{sizes[1]:.2f} with a table derived without it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
