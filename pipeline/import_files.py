"""Read existing predictions for ``foldatlas import``: AlphaFold DB mmCIF + PAE JSON, PDB files.

Sources and the ``model`` name their structures get in the atlas:

========== ============================================== ===================== ==============
source     files                                          model                 PAE
========== ============================================== ===================== ==============
afdb       ``AF-<acc>-F1-model_v<N>.cif[.gz]`` (or .pdb)  ``alphafold-db-v<N>`` paired by name:
           + ``AF-<acc>-F1-predicted_aligned_error_v<N>``                       required
colabfold  ColabFold PDB (``*_unrelaxed_rank_*.pdb`` ...)  ``colabfold``          none
esmfold    ESMFold PDB (``--source esmfold``)             ``esmfold-import``    none
========== ============================================== ===================== ==============

pLDDT comes from the B-factor column (``_atom_site.B_iso_or_equiv``; for AFDB mmCIF
``_ma_qa_metric_local``, which holds the same values). Per residue it is the CA atom's value
(ESMFold writes a different pLDDT per atom; AlphaFold the same for every atom of a residue).
Scale: AFDB and ColabFold write 0-100; ESMFold PDBs are 0-1 in some versions (the ESM repository
and API since 2023) and 0-100 in others. A file whose largest per-residue B-factor is <= 1.0 is
taken as 0-1 and multiplied by 100 (a 0-100 model whose every residue is below pLDDT 1 is not a
real model); the scale used is recorded in the entry's ``ingest_notes``. Hydrogens (relaxed
ColabFold models) are dropped: the atlas stores heavy atoms, like AFDB; that too is noted.

Every problem is an :class:`ImportReject` with a reason code (:data:`IMPORT_REJECT_REASONS`),
never a silent skip.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from model.base import Prediction
from pipeline.errors import InputError
from storage.afdb_json import read_pae_json
from storage.mmcif import ATOM_TYPES, RESTYPE_1TO3

logger = logging.getLogger(__name__)

SOURCES = ("afdb", "colabfold", "esmfold")
PDB_MODELS = {"colabfold": "colabfold", "esmfold": "esmfold-import"}

#: Reason codes of rejected import files (``rejects.reason``).
IMPORT_REJECT_REASONS: dict[str, str] = {
    "unreadable_file": "The file cannot be read or parsed as mmCIF/PDB/PAE JSON.",
    "unknown_source": "A structure file whose source cannot be told from its name; pass --source.",
    "unrecognised_file": "A file that is neither a structure nor an AFDB PAE JSON.",
    "missing_pae": "An AlphaFold DB model without its predicted_aligned_error JSON beside it.",
    "orphan_pae": "An AlphaFold DB PAE JSON without its model file.",
    "pae_size_mismatch": "The PAE matrix is not L x L for the model's L residues.",
    "missing_plddt": "No pLDDT: every B-factor is 0 (or absent).",
    "invalid_plddt": "pLDDT outside 0-100 (after scale detection) or not finite.",
    "unsupported_structure": "Not one protein chain of standard residues and atom37 heavy atoms.",
    "accession_mismatch": "The mmCIF names another accession than its file name.",
    "duplicate_file": "The same file was given twice.",
    "duplicate_accession": "The accession is already imported earlier in this import for the same model.",
}

_AFDB_MODEL = re.compile(r"^AF-(?P<acc>.+)-F(?P<frag>\d+)-model_v(?P<ver>\d+)\.(?P<ext>cif|pdb)(\.gz)?$")
_AFDB_PAE = re.compile(r"^AF-(?P<acc>.+)-F(?P<frag>\d+)-predicted_aligned_error_v(?P<ver>\d+)\.json(\.gz)?$")
_COLABFOLD = re.compile(r"_(un)?relaxed_rank_\d+|_rank_\d+_")
_STRUCTURE_SUFFIXES = (".cif", ".cif.gz", ".pdb", ".pdb.gz", ".mmcif", ".ent")
_RESTYPE_3TO1 = {three: one for one, three in RESTYPE_1TO3.items()} | {"UNK": "X"}
_ATOM_INDEX = {name: i for i, name in enumerate(ATOM_TYPES)}
_CA = _ATOM_INDEX["CA"]


@dataclass(frozen=True)
class ImportReject:
    path: str
    reason: str  # a key of IMPORT_REJECT_REASONS
    detail: str
    accession: str | None = None


@dataclass(frozen=True)
class AfdbMetadata:
    """What an AFDB v4 mmCIF says about its entry (AFDB BigQuery ``metadata`` names in comments)."""

    uniprot_id: str | None  # uniprotId (_ma_target_ref_db_details.db_code)
    description: str  # uniprotDescription (_entity.pdbx_description)
    organism: str | None  # organismScientificName
    tax_id: int | None  # taxId
    gene: str | None  # gene
    sequence_checksum: str | None  # sequenceChecksum
    sequence_version_date: str | None  # sequenceVersionDate
    model_created_date: str | None  # modelCreatedDate (_pdbx_database_status.recvd_initial_deposition_date)
    global_metric_value: float | None  # globalMetricValue (_ma_qa_metric_global pLDDT)
    uniprot_start: int | None
    uniprot_end: int | None
    software: str  # "AlphaFold v2.0"


@dataclass(frozen=True, eq=False)
class ImportedStructure:
    """One structure read from files, ready to become a structures row and an entry.

    ``prediction.ptm`` is NaN (no source has one in its files) and ``prediction.pae`` zeros when
    ``has_pae`` is False. Coordinates are float64, exactly the decimal text of the file.
    """

    source: str
    model: str
    accession: str
    path: str
    pae_path: str | None
    prediction: Prediction
    has_pae: bool
    files_sha256: str  # SHA-256 over the source files' bytes
    software: str
    source_version: str | None  # AFDB version ("4"), None for PDB sources
    notes: tuple[str, ...]
    afdb: AfdbMetadata | None = None


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def collect_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files to import: files as given, directories searched recursively for structure files and
    AFDB PAE JSON. A path that does not exist is an :class:`InputError` (nothing is imported)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and (
                f.name.endswith(_STRUCTURE_SUFFIXES) or _AFDB_PAE.match(f.name)))
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p} does not exist", hint="Give existing mmCIF/PDB/PAE JSON files or directories.")
    return out


def _one_letter(name: str) -> str | None:
    return _RESTYPE_3TO1.get(name)


def _atoms_from_structure(st: gemmi.Structure) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, int]:
    """(sequence, positions float64 (L,37,3), mask, per-atom B (L,37), hydrogens dropped)."""
    st.remove_empty_chains()
    if len(st) == 0:
        raise ValueError("no model in the file")
    chains = [ch for ch in st[0] if len(ch) > 0]
    if len(chains) != 1:
        raise ValueError(f"expected one protein chain, found {len(chains)}")
    residues = list(chains[0])
    n = len(residues)
    positions = np.zeros((n, 37, 3), dtype=np.float64)
    mask = np.zeros((n, 37), dtype=bool)
    bfactor = np.zeros((n, 37), dtype=np.float64)
    letters: list[str] = []
    hydrogens = 0
    for i, res in enumerate(residues):
        letter = _one_letter(res.name)
        if letter is None:
            raise ValueError(f"residue {res.seqid.num} {res.name} is not one of the 20 standard amino acids")
        letters.append(letter)
        for atom in res:
            if atom.element.name in ("H", "D"):
                hydrogens += 1
                continue
            if atom.name not in _ATOM_INDEX:
                raise ValueError(f"atom {atom.name} of residue {res.seqid.num} {res.name} is not an atom37 atom")
            a = _ATOM_INDEX[atom.name]
            positions[i, a] = (atom.pos.x, atom.pos.y, atom.pos.z)
            mask[i, a] = True
            bfactor[i, a] = atom.b_iso
    return "".join(letters), positions, mask, bfactor, hydrogens


def _per_residue_plddt(bfactor: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The CA atom's B-factor per residue (the first atom's where a residue has no CA)."""
    first = np.argmax(mask, axis=1)
    column = np.where(mask[:, _CA], _CA, first)
    return bfactor[np.arange(len(bfactor)), column]


def _cif_value(block: gemmi.cif.Block, tag: str) -> str | None:
    value = block.find_value(tag)
    if value is None or value in ("?", "."):
        return None
    return str(gemmi.cif.as_string(value))


def read_afdb_metadata(block: gemmi.cif.Block) -> tuple[str | None, AfdbMetadata]:
    """(db_accession, metadata) from an AFDB ModelCIF block."""
    glob = block.get_mmcif_category("_ma_qa_metric_global.")
    metrics = block.get_mmcif_category("_ma_qa_metric.")
    types = dict(zip(metrics.get("id", []), metrics.get("type", []), strict=False))
    gmv = next((float(v) for m, v in zip(glob.get("metric_id", []), glob.get("metric_value", []), strict=False)
                if types.get(m) == "pLDDT"), None)
    software = block.get_mmcif_category("_software.")
    names = list(software.get("name", []))
    i = names.index("AlphaFold") if "AlphaFold" in names else 0
    soft = f"{names[i]} {software['version'][i]}" if names else "AlphaFold"
    tax = _cif_value(block, "_ma_target_ref_db_details.ncbi_taxonomy_id")
    begin = _cif_value(block, "_ma_target_ref_db_details.seq_db_align_begin")
    end = _cif_value(block, "_ma_target_ref_db_details.seq_db_align_end")
    return _cif_value(block, "_ma_target_ref_db_details.db_accession"), AfdbMetadata(
        uniprot_id=_cif_value(block, "_ma_target_ref_db_details.db_code"),
        description=_cif_value(block, "_entity.pdbx_description") or "",
        organism=_cif_value(block, "_ma_target_ref_db_details.organism_scientific"),
        tax_id=int(tax) if tax else None,
        gene=_cif_value(block, "_ma_target_ref_db_details.gene_name"),
        sequence_checksum=_cif_value(block, "_ma_target_ref_db_details.seq_db_sequence_checksum"),
        sequence_version_date=_cif_value(block, "_ma_target_ref_db_details.seq_db_sequence_version_date"),
        model_created_date=_cif_value(block, "_pdbx_database_status.recvd_initial_deposition_date"),
        global_metric_value=gmv,
        uniprot_start=int(begin) if begin else None,
        uniprot_end=int(end) if end else None,
        software=soft,
    )


def _plddt_scale(per_residue: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    if source == "afdb" or per_residue.max(initial=0.0) > 1.0:
        return per_residue, "0-100"
    return per_residue * 100.0, "0-1"


def read_structure_file(path: Path, source: str, accession: str, pae_path: Path | None = None,
                        version: str | None = None) -> ImportedStructure:
    """Parse one structure (and its PAE JSON). Raises ValueError with the reason's detail."""
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw)
    is_cif = ".cif" in path.name or ".mmcif" in path.name
    try:
        text = raw.decode()
        st = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block()) if is_cif \
            else gemmi.read_pdb_string(text)
    except (RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise _Reject("unreadable_file", f"gemmi cannot read it: {e}") from e
    try:
        sequence, positions, mask, bfactor, hydrogens = _atoms_from_structure(st)
    except ValueError as e:
        raise _Reject("unsupported_structure", str(e)) from e
    per_residue = _per_residue_plddt(bfactor, mask)
    if not per_residue.size or not np.any(per_residue != 0):
        raise _Reject("missing_plddt", "every B-factor is 0: the file carries no pLDDT")
    plddt, scale = _plddt_scale(per_residue, source)
    if not np.all(np.isfinite(plddt)) or plddt.min() < 0 or plddt.max() > 100:
        raise _Reject("invalid_plddt", f"pLDDT range {plddt.min():.2f}-{plddt.max():.2f} after scale {scale}")
    notes = [f"imported {source} file {path.name}", f"pLDDT scale in the file: {scale}"]
    if hydrogens:
        notes.append(f"dropped {hydrogens} hydrogen atoms")
    afdb = None
    if source == "afdb" and is_cif:
        block = gemmi.cif.read_string(text).sole_block()
        file_accession, afdb = read_afdb_metadata(block)
        if file_accession and file_accession != accession:
            raise _Reject("accession_mismatch", f"the file names {file_accession}, its name says {accession}")
        local = _afdb_local_plddt(block, len(sequence))
        if local is not None:
            plddt = local
    n = len(sequence)
    pae = np.zeros((n, n), dtype=np.float64)
    max_pae = 0.0
    if pae_path is not None:
        pae_raw = _read_bytes(pae_path)
        digest.update(pae_raw)
        try:
            parsed = read_pae_json(pae_raw)
        except ValueError as e:
            raise _Reject("unreadable_file", f"{pae_path.name}: {e}") from e
        if parsed.pae.shape != (n, n):
            raise _Reject("pae_size_mismatch", f"{pae_path.name} is {parsed.pae.shape[0]} x {parsed.pae.shape[1]}, "
                                               f"the model has {n} residues")
        pae, max_pae = parsed.pae.astype(np.float64), parsed.max_pae
        notes.append(f"PAE from {pae_path.name}")
    model = f"alphafold-db-v{version}" if source == "afdb" else PDB_MODELS[source]
    software = afdb.software if afdb else {"afdb": "AlphaFold", "colabfold": "ColabFold",
                                           "esmfold": "ESMFold"}[source]
    prediction = Prediction(sequence, positions, mask, plddt, pae, max_pae, float("nan"))
    return ImportedStructure(source, model, accession, str(path), str(pae_path) if pae_path else None, prediction,
                             pae_path is not None, digest.hexdigest(), software, version, tuple(notes), afdb)


def _afdb_local_plddt(block: gemmi.cif.Block, n: int) -> np.ndarray | None:
    """``_ma_qa_metric_local`` pLDDT per residue (the AFDB per-residue values), None if absent."""
    local = block.get_mmcif_category("_ma_qa_metric_local.")
    if not local or len(local.get("label_seq_id", [])) != n:
        return None
    values = np.full(n, np.nan)
    for seq_id, value in zip(local["label_seq_id"], local["metric_value"], strict=True):
        values[int(seq_id) - 1] = float(value)
    return values if np.all(np.isfinite(values)) else None


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _pdb_accession(name: str) -> str:
    stem = re.sub(r"\.(pdb|cif|mmcif|ent)(\.gz)?$", "", name)
    return re.split(r"_(?:un)?relaxed_|_scores_", stem)[0]


def read_import_files(files: Iterable[Path], source: str | None = None,
                      ) -> tuple[list[ImportedStructure], list[ImportReject]]:
    """Pair, classify and parse ``files``; every file ends as a structure (or part of one) or a reject."""
    structures: list[ImportedStructure] = []
    rejects: list[ImportReject] = []
    seen: set[Path] = set()
    paes: dict[tuple[Path, str, str, str], Path] = {}
    models: list[tuple[Path, str, str, str | None]] = []  # (path, source, accession, version)
    for f in files:
        key = f.resolve()
        if key in seen:
            rejects.append(ImportReject(str(f), "duplicate_file", "given more than once"))
            continue
        seen.add(key)
        if m := _AFDB_PAE.match(f.name):
            paes[(key.parent, m["acc"], m["frag"], m["ver"])] = f
        elif (m := _AFDB_MODEL.match(f.name)) and source in (None, "afdb"):
            models.append((f, "afdb", m["acc"], m["ver"]))
        elif f.name.endswith(_STRUCTURE_SUFFIXES):
            chosen = source or ("colabfold" if _COLABFOLD.search(f.name) else None)
            if chosen is None:
                rejects.append(ImportReject(str(f), "unknown_source", "not an AlphaFold DB or ColabFold file name; "
                                            "pass --source colabfold|esmfold"))
                continue
            models.append((f, chosen, _pdb_accession(f.name), None))
        else:
            rejects.append(ImportReject(str(f), "unrecognised_file", "not .cif/.pdb or an AFDB PAE JSON"))
    for path, src, accession, version in models:
        pae_path = None
        if src == "afdb":
            m = _AFDB_MODEL.match(path.name)
            assert m is not None
            pae_path = paes.get((path.resolve().parent, m["acc"], m["frag"], m["ver"]))
            if pae_path is None:
                rejects.append(ImportReject(str(path), "missing_pae", f"no AF-{accession}-F{m['frag']}-predicted_"
                                            f"aligned_error_v{version}.json beside it", accession))
                continue
        try:
            structures.append(read_structure_file(path, src, accession, pae_path, version))
        except _Reject as e:
            rejects.append(ImportReject(str(path), e.reason, e.detail, accession))
        except (OSError, ValueError) as e:
            rejects.append(ImportReject(str(path), "unreadable_file", str(e), accession))
    model_keys = {(p.resolve().parent, *_AFDB_MODEL.match(p.name).group("acc", "frag", "ver"))  # type: ignore[union-attr]
                  for p, src, _, _ in models if src == "afdb"}
    for pae_key, pae_path in paes.items():
        if pae_key not in model_keys:
            rejects.append(ImportReject(str(pae_path), "orphan_pae", "no AlphaFold DB model file of that name "
                                        "beside it", pae_key[1]))
    logger.info("read %d structures, %d rejected files", len(structures), len(rejects))
    return structures, rejects
