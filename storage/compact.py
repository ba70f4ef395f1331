"""Compact structure records: coordinates, pLDDT and PAE, lossless at the precision of the files.

A record holds one structure in a few kilobytes and renders back to the exact ModelCIF and AFDB
PAE JSON text (:mod:`storage.structure_record` does the rendering). What is stored is only what
the sequence does not imply:

* **coordinates** as int32 thousandths of an Angstrom (mmCIF writes 3 decimals, so this is
  lossless for every file we write or import), in the order of ``_atom_site`` (residue by
  residue, atom37 order within a residue);
* **pLDDT** per residue as integer hundredths (AFDB and we write 2 decimals);
* **PAE** as integer Angstrom (AFDB v4 files hold integers; :func:`storage.afdb_json.write_pae_json`
  rounds to integers too), optional (PDB imports have none);
* **which atoms exist**: implied by the sequence (standard heavy atoms of each residue type,
  :data:`RESIDUE_ATOMS`), with a flag for AlphaFold's terminal OXT; anything else (missing atoms,
  unknown residues) falls back to an explicit packed atom mask;
* a small JSON object (``meta``) for the rest: sequence, max PAE, pTM, model and provenance.

Encoding (format version 4, written; formats 1-3 are still read)
-----------------------------------------------------------------
Format 4 is format 3 with one more PAE codec (the mixing coder, below); everything else is
byte-identical to format 3.

Coordinates (:mod:`storage.compact_geometry`): each atom has a bonded *reference* atom known to
the decoder first: CA the previous residue's CA, N/C/CB their residue's CA, O/OXT their C,
side-chain atoms their covalent parent (:data:`_PARENT`). An atom whose reference P has two more
decoded *frame* atoms G and GG is stored in the local frame they span (e1 along G->P; one
component nearly constant per residue type and atom, two on a circle of nearly constant radius)
plus an integer correction that makes the coding exact; CA atoms and atoms without frame atoms
are stored as differences to their reference. The frame atoms are, in format 1, the reference's
own reference and its reference (for N, C, CB: the two previous CAs); format 2 keeps that for
side chains but gives the backbone frames in which its geometry is nearly fixed
(:func:`_backbone_frames`): C(i) in (CA(i+1), CA(i-1)), N(i) in (CA(i-1), C(i-1)) (trans peptide
plane), O(i) in (CA(i), N(i+1)) and CB(i) in (N(i), C(i)) (8 % fewer coordinate bytes). Formats
1-2 zigzag code every integer stream (signed -> unsigned), narrow it to the smallest byte width,
byte-shuffle it (all low bytes, then all second bytes, ...) and compress it with zstd level 19;
pLDDT: differences along the chain, same integer coding.

Format 3 (:mod:`storage.compact_model`) keeps those frames and adds side-chain ones (atoms bonded
to CB in the (CB, CA, N) frame, second branches such as Leu CD2 in a frame through their sibling,
where they are fixed), stores each frame component against a built-in per-class geometry
(:mod:`storage.compact_table`, no table in the record), replaces the correction by the index of
the bond vector among the few integer points that round to the same frame components (almost
always one or two), codes the CA steps against the 3.8 A sphere, and range codes everything,
pLDDT differences too, with one-byte models chosen per group of values
(:mod:`storage.compact_entropy`, ``constriction``). Coordinates + pLDDT: 25.3-26.9 B per residue
on the five AFDB entries of ``tests/data/afdb`` (format 2: 31.6-38.8).

PAE (:mod:`storage.compact_pae`): format 4 a mixing coder (least-squares prediction from 46 or 236
causal neighbours, binary decisions whose probabilities mix seven adaptive context models, range
coding; 3.7-11.3 % smaller than format 3's context coder on the five real AFDB entries), up to 256
residues lossless JPEG XL where smaller, lossless JPEG XL where values exceed
63; format 3 a context coder (least-squares prediction from 16 causal neighbours, adaptive
contexts, range coding; 7-14 % smaller than JPEG XL on real AFDB entries) or, where smaller or
values exceed 63, lossless JPEG XL; format 2 always a lossless JPEG
XL greyscale image; format 1 2-D differences (each value minus its upper and left neighbours plus
the upper-left one) in the integer coding. Decoding is vectorised: cumulative sums along the chain, the atoms level by level (a level
= one more than every atom it uses), and the PAE only when asked for (:func:`decode_structure`
``pae=False``, :func:`decode_pae`).

Byte layout (little-endian)::

    b"FAC" | version u8 | flags u8 | L u32 | n_atoms u32 | sections...

flags: bit 0 = explicit atom mask section present, bit 1 = OXT on the last residue (template
mode), bit 2 = PAE present. Each section is ``width u8 | count u32 | stored u32 | bytes``
(``width`` 0 = opaque bytes, else bytes per integer; the bytes are zstd frames, except the PAE
section of formats 2-4: ``count`` L*L, ``width`` the codec (:data:`storage.compact_pae.PAE_CODECS_OF`:
format 2 only 1 or 2, format 3 up to 3): 1 or 2 = a JPEG XL codestream as is with 1- or 2-byte
samples, 3 = the context coder's bytes, 4 = the mixing coder's; and the format 3-4 coordinate and pLDDT sections: ``width`` 0, ``count``
n_atoms or L, the model bytes and range-coded words as is). Sections in order: meta JSON, [mask
bits], coordinates (formats 1-2: the seven streams of
:func:`storage.compact_geometry.encode_coordinates`: plain deltas, class table (q0 offset, radius),
q0 - offset, small component, quadrant code, big component's residual, correction; format 3: one
section), pLDDT, [PAE]. A new version must keep :data:`READABLE_VERSIONS` reading every older one
(atlases keep their records).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from storage import compact_model, compact_pae
from storage.compact_geometry import chain_frames, decode_coordinates, stream_sizes
from storage.compact_pae import decode_pae_image, undo_pae_deltas
from storage.mmcif import ATOM_TYPES as _ATOM37  # atom37 order

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "READABLE_VERSIONS",
    "RESIDUE_ATOMS",
    "CompactStructure",
    "decode_pae",
    "decode_structure",
    "encode_structure",
    "quantize",
    "record_has_pae",
    "section_sizes",
    "template_atom_mask",
]

MAGIC = b"FAC"
FORMAT_VERSION = 4
#: Versions this reader decodes (records written by older FoldAtlas releases stay readable).
READABLE_VERSIONS = (1, 2, 3, 4)

_INDEX = {name: i for i, name in enumerate(_ATOM37)}
_CA, _C, _OXT = _INDEX["CA"], _INDEX["C"], _INDEX["OXT"]

#: Heavy atoms of each residue type (one-letter code), without OXT. X (unknown) has the backbone.
RESIDUE_ATOMS: dict[str, tuple[str, ...]] = {
    "A": ("CB",), "R": ("CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"), "N": ("CB", "CG", "OD1", "ND2"),
    "D": ("CB", "CG", "OD1", "OD2"), "C": ("CB", "SG"), "Q": ("CB", "CG", "CD", "OE1", "NE2"),
    "E": ("CB", "CG", "CD", "OE1", "OE2"), "G": (), "H": ("CB", "CG", "ND1", "CD2", "CE1", "NE2"),
    "I": ("CB", "CG1", "CG2", "CD1"), "L": ("CB", "CG", "CD1", "CD2"), "K": ("CB", "CG", "CD", "CE", "NZ"),
    "M": ("CB", "CG", "SD", "CE"), "F": ("CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"),
    "P": ("CB", "CG", "CD"), "S": ("CB", "OG"), "T": ("CB", "OG1", "CG2"),
    "W": ("CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"),
    "Y": ("CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"), "V": ("CB", "CG1", "CG2"), "X": (),
}  # fmt: skip
_RESTYPES = "ARNDCQEGHILKMFPSTWYVX"
_RESTYPE_INDEX = {c: i for i, c in enumerate(_RESTYPES)}

# Covalent parent of each atom (generic), with the residue-specific exceptions below.
_PARENT_GENERIC = {
    "N": "CA", "C": "CA", "O": "C", "OXT": "C", "CB": "CA", "CG": "CB", "CG1": "CB", "CG2": "CB",
    "OG": "CB", "OG1": "CB", "SG": "CB", "CD": "CG", "CD1": "CG", "CD2": "CG", "ND1": "CG", "ND2": "CG",
    "OD1": "CG", "OD2": "CG", "SD": "CG", "CE": "CD", "CE1": "CD1", "CE2": "CD2", "CE3": "CD2",
    "NE": "CD", "NE1": "CD1", "NE2": "CD", "OE1": "CD", "OE2": "CD", "CH2": "CZ2", "NH1": "CZ",
    "NH2": "CZ", "OH": "CZ", "CZ": "CE1", "CZ2": "CE2", "CZ3": "CE3", "NZ": "CE",
}  # fmt: skip
_PARENT_SPECIFIC = {("I", "CD1"): "CG1", ("M", "CE"): "SD", ("H", "CE1"): "ND1", ("H", "NE2"): "CD2",
                    ("R", "CZ"): "NE"}


def _parent_table() -> np.ndarray:
    """(21, 37) atom37 index of each atom's parent per residue type; -1 for CA (chained)."""
    table = np.full((len(_RESTYPES), len(_ATOM37)), -1, dtype=np.int64)
    for r, letter in enumerate(_RESTYPES):
        for a, name in enumerate(_ATOM37):
            if name != "CA":
                table[r, a] = _INDEX[_PARENT_SPECIFIC.get((letter, name), _PARENT_GENERIC[name])]
    return table


_PARENT = _parent_table()
_FLAG_MASK, _FLAG_OXT, _FLAG_PAE = 1, 2, 4
_HEADER = struct.Struct("<3sBBII")
_SECTION = struct.Struct("<BII")
_ZSTD_LEVEL = 19
_COORDINATE_STREAMS = 7  # storage.compact_geometry.encode_coordinates (formats 1, 2)
_MAX_COORD = 2**31 - 1  # int32 thousandths: +-2,147,483.647 Angstrom


def _restypes(sequence: str) -> np.ndarray:
    """Residue type index (into _RESTYPES) of each letter; -1 for any other character."""
    if not sequence.isascii():
        return np.array([_RESTYPE_INDEX.get(c, -1) for c in sequence], dtype=np.int64)
    return _RESTYPE_OF_BYTE[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]


_RESTYPE_OF_BYTE = np.full(256, -1, dtype=np.int64)
_RESTYPE_OF_BYTE[[ord(c) for c in _RESTYPES]] = np.arange(len(_RESTYPES))
_TEMPLATE = np.zeros((len(_RESTYPES), len(_ATOM37)), dtype=bool)
for _r, _letter in enumerate(_RESTYPES):
    _TEMPLATE[_r, [_INDEX[n] for n in ("N", "CA", "C", "O", *RESIDUE_ATOMS[_letter])]] = True


def template_atom_mask(sequence: str, oxt: bool = False) -> np.ndarray:
    """bool (L, 37): the standard heavy atoms of each residue (plus OXT on the last if ``oxt``)."""
    restype = _restypes(sequence)
    if (restype < 0).any():
        i = int(np.argmax(restype < 0))
        raise ValueError(f"residue {i + 1} is {sequence[i]!r}: only the 20 standard letters and X are stored")
    mask = _TEMPLATE[restype]
    if oxt and len(sequence):
        mask[-1, _OXT] = True
    return mask


@dataclass(frozen=True, eq=False)
class CompactStructure:
    """One structure at file precision (all integers).

    Attributes:
        sequence: one-letter sequence (20 standard letters and X), length L.
        atom_mask: bool (L, 37), atom37 order.
        coords: int64 (n_atoms, 3), thousandths of an Angstrom, for the atoms where ``atom_mask``
            is True in residue-major, atom37 order (the ``_atom_site`` order).
        plddt: int64 (L,), pLDDT in hundredths (0-10000).
        pae: int64 (L, L) integer Angstrom, or None.
        meta: JSON-serialisable key/values (max PAE, pTM, model, provenance ...).
    """

    sequence: str
    atom_mask: np.ndarray
    coords: np.ndarray
    plddt: np.ndarray
    pae: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.sequence)
        if self.atom_mask.shape != (n, len(_ATOM37)):
            raise ValueError(f"atom_mask has shape {self.atom_mask.shape}, expected ({n}, 37)")
        n_atoms = int(np.count_nonzero(self.atom_mask))
        if self.coords.shape != (n_atoms, 3):
            raise ValueError(f"coords has shape {self.coords.shape}, expected ({n_atoms}, 3)")
        if self.plddt.shape != (n,):
            raise ValueError(f"plddt has shape {self.plddt.shape}, expected ({n},)")
        if self.pae is not None and self.pae.shape != (n, n):
            raise ValueError(f"pae has shape {self.pae.shape}, expected ({n}, {n})")
        if self.coords.size and int(np.abs(self.coords).max()) > _MAX_COORD:
            raise ValueError("coordinates beyond +-2,147,483.647 Angstrom cannot be stored")
        if self.plddt.size and (self.plddt.min() < 0 or self.plddt.max() > 10000):
            raise ValueError("pLDDT hundredths must be within 0-10000")
        if self.pae is not None and self.pae.size and (self.pae.min() < 0 or self.pae.max() > 65535):
            raise ValueError("PAE values must be integers within 0-65535")


def _decimal_ints(values: np.ndarray, decimals: int) -> np.ndarray:
    """Each value as the integer its ``f"{v:.{decimals}f}"`` text shows (exact decimal rounding)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError("values must be finite to be stored")
    fmt = f"{{:.{decimals}f}}"
    out = np.fromiter((int(fmt.format(v).replace(".", "")) for v in flat), dtype=np.int64, count=flat.size)
    return out.reshape(np.shape(values))


def quantize(
    sequence: str,
    atom_positions: np.ndarray,
    atom_mask: np.ndarray,
    plddt: np.ndarray,
    pae: np.ndarray | None,
    meta: Mapping[str, Any] | None = None,
) -> CompactStructure:
    """A structure at the precision the files carry: 3 decimals (coordinates), 2 (pLDDT), PAE integers.

    The integers are exactly what ``f"{v:.3f}"`` / ``f"{v:.2f}"`` write (mmCIF; a value in
    (-0.0005, 0] written "-0.000" is stored as 0 and renders "0.000", the same number) and what
    ``numpy.rint`` gives for PAE (:func:`storage.afdb_json.write_pae_json`), so rendering from the
    record gives the same text as rendering from the floats.
    """
    mask = np.asarray(atom_mask, dtype=bool)
    coords = _decimal_ints(np.asarray(atom_positions, dtype=np.float64)[mask], 3).reshape(-1, 3)
    pae_int = None
    if pae is not None:
        values = np.asarray(pae, dtype=np.float64)
        if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
            raise ValueError("PAE values must be finite and non-negative")
        pae_int = np.rint(values).astype(np.int64)
    return CompactStructure(sequence, mask, coords, _decimal_ints(plddt, 2), pae_int, dict(meta or {}))


# ----------------------------------------------------------------------------------------------
# Integer streams
# ----------------------------------------------------------------------------------------------


def _zstd(data: bytes) -> bytes:
    return bytes(pa.Codec("zstd", compression_level=_ZSTD_LEVEL).compress(data, asbytes=True))


def _unzstd(data: bytes, size: int) -> bytes:
    return bytes(pa.Codec("zstd").decompress(data, decompressed_size=size, asbytes=True))


def _section(width: int, count: int, payload: bytes) -> bytes:
    stored = _zstd(payload) if payload else b""
    return _SECTION.pack(width, count, len(stored)) + stored


def _int_section(values: np.ndarray) -> bytes:
    """Zigzag, narrowest byte width, byte shuffle, zstd."""
    v = np.asarray(values, dtype=np.int64).ravel()
    zig = (v.astype(np.uint64) << np.uint64(1)) ^ (v >> 63).astype(np.uint64)
    top = int(zig.max()) if zig.size else 0
    width = next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))
    narrow = zig.astype(f"<u{width}")
    shuffled = narrow.view(np.uint8).reshape(-1, width).T.tobytes()
    return _section(width, v.size, shuffled)


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def raw(self) -> tuple[int, int, bytes]:
        """(width, count, stored bytes) of the next section, not decompressed."""
        if self.pos + _SECTION.size > len(self.data):
            raise ValueError("compact record is truncated (section header)")
        width, count, stored = _SECTION.unpack_from(self.data, self.pos)
        self.pos += _SECTION.size
        chunk = self.data[self.pos : self.pos + stored]
        if len(chunk) != stored:
            raise ValueError("compact record is truncated (section data)")
        self.pos += stored
        return width, count, chunk

    def opaque(self, expected: int) -> bytes:
        """The stored bytes of the next format 3 entropy-coded section (``count`` must be ``expected``)."""
        width, count, chunk = self.raw()
        if width != 0 or count != expected:
            raise ValueError(f"compact record: expected an entropy-coded section of {expected} values, "
                             f"found {count} (width {width})")
        return chunk

    def section(self) -> tuple[int, int, bytes]:
        """(width, count, decompressed bytes) of the next zstd section."""
        width, count, chunk = self.raw()
        size = count * (width or 1)
        try:
            payload = _unzstd(chunk, size) if chunk else b""
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"compact record section does not decompress: {e}") from e
        if len(payload) != size:
            raise ValueError("compact record section has the wrong size")
        return width, count, payload

    def ints(self, expected: int) -> np.ndarray:
        width, count, payload = self.section()
        if width not in (1, 2, 4, 8) or count != expected:
            raise ValueError(f"compact record: expected {expected} integers, found {count} (width {width})")
        narrow = np.frombuffer(payload, dtype=np.uint8).reshape(width, count).T.copy().view(f"<u{width}").ravel()
        zig = narrow.astype(np.uint64)
        return ((zig >> np.uint64(1)).astype(np.int64)) ^ -((zig & np.uint64(1)).astype(np.int64))


# ----------------------------------------------------------------------------------------------
# Coordinates: differences to a bonded reference atom
# ----------------------------------------------------------------------------------------------


def _references(sequence: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ref, is_ca) per stored atom: ref = stored index of the reference atom, -1 = absolute."""
    restype = _restypes(sequence)
    restype[restype < 0] = _RESTYPE_INDEX["X"]
    stored_index = np.full(mask.shape, -1, dtype=np.int64)
    stored_index[mask] = np.arange(int(mask.sum()))
    res, atom = np.nonzero(mask)
    parent = _PARENT[restype[res], atom]  # atom37 index, -1 for CA
    ref = np.where(parent >= 0, stored_index[res, np.maximum(parent, 0)], -1)
    via_ca = stored_index[res, _CA]
    ref = np.where((ref < 0) & (atom != _CA), via_ca, ref)  # parent missing: use the residue's CA
    is_ca = atom == _CA
    ca_rows = np.nonzero(is_ca)[0]
    ref[ca_rows] = np.concatenate([[-1], ca_rows[:-1]]) if ca_rows.size else ca_rows
    return ref, is_ca


def _backbone_frames(sequence: str, mask: np.ndarray, ref: np.ndarray, is_ca: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Format 2 frames (g, gg) per stored atom: format 1's chain frames, with the backbone overrides.

    Each override applies only when all its atoms exist and the atom's reference is the usual one:

    * C(i): reference CA(i), frame CA(i+1), CA(i-1): C lies near the CA(i)->CA(i+1) line, so its
      circle is small (the peptide plane's rotation);
    * N(i): reference CA(i), frame CA(i-1), C(i-1): N(i) lies in the peptide plane of C(i-1),
      so its torsion is fixed (trans peptide);
    * O(i): reference C(i), frame CA(i), N(i+1): O lies in the same plane (torsion fixed);
    * CB(i): reference CA(i), frame N(i), C(i): fixed by the tetrahedral geometry (chirality).
    """
    g, gg = chain_frames(ref, is_ca)
    stored = np.full(mask.shape, -1, dtype=np.int64)
    stored[mask] = np.arange(int(mask.sum()))
    ca, nn, c, o, cb = (stored[:, _INDEX[name]] for name in ("CA", "N", "C", "O", "CB"))
    none = np.full(1, -1, dtype=np.int64)
    next_ca, prev_ca = np.concatenate([ca[1:], none]), np.concatenate([none, ca[:-1]])
    prev_c, next_n = np.concatenate([none, c[:-1]]), np.concatenate([nn[1:], none])
    for atom, parent, frame_g, frame_gg in ((c, ca, next_ca, prev_ca), (nn, ca, prev_ca, prev_c),
                                            (o, c, ca, next_n), (cb, ca, nn, c)):
        ok = (atom >= 0) & (parent >= 0) & (frame_g >= 0) & (frame_gg >= 0)
        ok[ok] &= ref[atom[ok]] == parent[ok]
        g[atom[ok]], gg[atom[ok]] = frame_g[ok], frame_gg[ok]
    return g, gg


def _coordinate_deltas(coords: np.ndarray, ref: np.ndarray) -> np.ndarray:
    base = np.where(ref[:, None] >= 0, coords[np.maximum(ref, 0)], 0)
    return coords - base


def _atom_classes(sequence: str, mask: np.ndarray) -> np.ndarray:
    """(residue type, atom37 index) of each stored atom as one integer: restype * 37 + atom."""
    restype = _restypes(sequence)
    restype[restype < 0] = _RESTYPE_INDEX["X"]
    res, atom = np.nonzero(mask)
    return restype[res] * len(_ATOM37) + atom


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def _frames_for(version: int, sequence: str, mask: np.ndarray, ref: np.ndarray, is_ca: np.ndarray,
                classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if version == 1:
        return chain_frames(ref, is_ca)
    g, gg = _backbone_frames(sequence, mask, ref, is_ca)
    return compact_model.sidechain_frames(mask, classes, ref, g, gg) if version >= 3 else (g, gg)


def _coordinate_sections(version: int) -> int:
    """Sections holding coordinates and pLDDT: format 1-2 seven integer streams + pLDDT, format 3 two."""
    return 2 if version >= 3 else _COORDINATE_STREAMS + 1


def _opaque_section(count: int, payload: bytes) -> bytes:
    """A format 3 entropy-coded section: width 0, stored as is (no zstd)."""
    return _SECTION.pack(0, count, len(payload)) + payload


def _pae_section(pae: np.ndarray) -> bytes:
    n = pae.shape[0]
    if n == 0:
        return _SECTION.pack(1, 0, 0)
    codec, payload = compact_pae.encode_pae_payload(pae)  # formats 3-4: the width byte is the codec
    return _SECTION.pack(codec, n * n, len(payload)) + payload


def encode_structure(structure: CompactStructure) -> bytes:
    """The compact record bytes of ``structure`` in the current format (see the module docstring)."""
    seq, mask = structure.sequence, np.asarray(structure.atom_mask, dtype=bool)
    flags = 0
    if np.array_equal(mask, template_atom_mask(seq, oxt=True)) and len(seq):
        flags |= _FLAG_OXT
    elif not np.array_equal(mask, template_atom_mask(seq)):
        flags |= _FLAG_MASK
    if structure.pae is not None:
        flags |= _FLAG_PAE
    meta = json.dumps({**structure.meta, "sequence": seq}, separators=(",", ":"),
                      allow_nan=False).encode()
    coords = np.asarray(structure.coords, dtype=np.int64)
    ref, is_ca = _references(seq, mask)
    classes = _atom_classes(seq, mask)
    g, gg = _frames_for(FORMAT_VERSION, seq, mask, ref, is_ca, classes)
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, flags, len(seq), coords.shape[0]), _section(0, len(meta), meta)]
    if flags & _FLAG_MASK:
        bits = np.packbits(mask.ravel()).tobytes()
        parts.append(_section(0, len(bits), bits))
    plddt = np.asarray(structure.plddt, dtype=np.int64)
    parts.append(_opaque_section(coords.shape[0], compact_model.encode_coordinates(coords, ref, g, gg, is_ca, classes)))
    parts.append(_opaque_section(len(seq), compact_model.encode_plddt(plddt)))
    if structure.pae is not None:
        parts.append(_pae_section(np.asarray(structure.pae, dtype=np.int64)))
    record = b"".join(parts)
    logger.debug("compact record: %d residues, %d atoms, %d bytes", len(seq), coords.shape[0], len(record))
    return record


def _header(data: bytes) -> tuple[int, int, int, int]:
    """(version, flags, L, n_atoms), checked."""
    if len(data) < _HEADER.size or data[:3] != MAGIC:
        raise ValueError("not a FoldAtlas compact structure record (bad magic)")
    _, version, flags, n, n_atoms = _HEADER.unpack_from(data, 0)
    if version not in READABLE_VERSIONS:
        raise ValueError(f"compact record format version {version} is not supported (this reader: "
                         f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade FoldAtlas")
    return version, flags, n, n_atoms


def _read_pae(reader: _Reader, version: int, n: int) -> np.ndarray:
    if version == 1:
        return undo_pae_deltas(reader.ints(n * n).reshape(n, n))
    codec, count, payload = reader.raw()  # format 2: codec = JPEG XL sample width 1 or 2
    if count != n * n or codec not in compact_pae.PAE_CODECS_OF[version]:
        raise ValueError(f"compact record: PAE section holds {count} values of codec/width {codec}, expected {n * n}")
    if not n:
        return np.zeros((0, 0), dtype=np.int64)
    if version >= 3:
        return compact_pae.decode_pae_payload(payload, codec, n)
    return decode_pae_image(payload, codec, n)


def decode_structure(data: bytes, *, pae: bool = True) -> CompactStructure:
    """Parse a compact record of any readable format version.

    ``pae=False`` skips decoding the PAE (the slowest part: 0.3-0.45 s of CPU at 1,000 residues); the
    result then has ``pae`` None whatever the record holds (see :func:`decode_pae`).

    Raises:
        ValueError: not a compact record, an unknown format version, or corrupt/truncated bytes.
    """
    version, flags, n, n_atoms = _header(data)
    reader = _Reader(data, _HEADER.size)
    _, _, meta_bytes = reader.section()
    meta = json.loads(meta_bytes)
    sequence = str(meta.pop("sequence"))
    if len(sequence) != n:
        raise ValueError(f"compact record: sequence length {len(sequence)} != header length {n}")
    if flags & _FLAG_MASK:
        _, _, bits = reader.section()
        unpacked = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=n * len(_ATOM37))
        mask = unpacked.astype(bool).reshape(n, len(_ATOM37))
    else:
        mask = template_atom_mask(sequence, oxt=bool(flags & _FLAG_OXT))
    if int(mask.sum()) != n_atoms:
        raise ValueError(f"compact record: {n_atoms} atoms in the header, {int(mask.sum())} in the mask")
    ref, is_ca = _references(sequence, mask)
    classes = _atom_classes(sequence, mask)
    g, gg = _frames_for(version, sequence, mask, ref, is_ca, classes)
    if version >= 3:
        coords = compact_model.decode_coordinates(reader.opaque(n_atoms), ref, g, gg, is_ca, classes)
        plddt = compact_model.decode_plddt(reader.opaque(n), n)
    else:
        streams = [reader.ints(size) for size in stream_sizes(ref, g, gg, is_ca, classes)]
        coords = decode_coordinates(streams, ref, g, gg, is_ca, classes)
        plddt = np.cumsum(reader.ints(n))
    pae_values = None
    if flags & _FLAG_PAE:
        if pae:
            pae_values = _read_pae(reader, version, n)
        else:
            reader.raw()
    if reader.pos != len(data):
        raise ValueError(f"compact record has {len(data) - reader.pos} trailing bytes")
    return CompactStructure(sequence, mask, coords, plddt, pae_values, meta)


def record_has_pae(data: bytes) -> bool:
    """Whether a record holds a PAE matrix (from its header alone)."""
    return bool(_header(data)[1] & _FLAG_PAE)


def decode_pae(data: bytes) -> np.ndarray | None:
    """The PAE matrix of a record (int64 (L, L)), or None; skips the other sections undecoded."""
    version, flags, n, _ = _header(data)
    if not flags & _FLAG_PAE:
        return None
    reader = _Reader(data, _HEADER.size)
    for _ in range(1 + bool(flags & _FLAG_MASK) + _coordinate_sections(version)):  # meta, [mask], coordinates, pLDDT
        reader.raw()
    values = _read_pae(reader, version, n)
    if reader.pos != len(data):
        raise ValueError(f"compact record has {len(data) - reader.pos} trailing bytes")
    return values


def section_sizes(data: bytes) -> dict[str, int]:
    """Stored bytes of each part of a record (header, meta, mask, coordinates, plddt, pae)."""
    version, flags, _, _ = _header(data)
    names = ["meta", *(["mask"] if flags & _FLAG_MASK else []), *["coordinates"] * (_coordinate_sections(version) - 1),
             "plddt",
             *(["pae"] if flags & _FLAG_PAE else [])]
    sizes, pos = {"header": _HEADER.size}, _HEADER.size
    for name in names:
        _, _, stored = _SECTION.unpack_from(data, pos)
        sizes[name] = sizes.get(name, 0) + _SECTION.size + stored
        pos += _SECTION.size + stored
    return sizes
