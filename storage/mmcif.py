"""ModelCIF (mmCIF) files for predictions, written the way AlphaFold DB v4 writes them.

Layout (compare ``tests/data/afdb/AF-P00221-F1-model_v4.cif``): one data block named after the
entry id; per-residue pLDDT in ``_atom_site.B_iso_or_equiv`` (all atoms of a residue share it) and
in ``_ma_qa_metric_local`` (metric 2); the global pLDDT (mean over atoms, 2 decimals) in
``_ma_qa_metric_global`` (metric 1) and pTM as a second global metric (metric 3, type ``pTM``);
the sequence cross-reference in ``_ma_target_ref_db_details`` (and ``_struct_ref``); the model in
``_software`` / ``_ma_software_group`` / ``_ma_protocol_step`` / ``_ma_model_list`` / ``_ma_data``.

Provenance lives in ``_ma_software_parameter``: parameter group 1 belongs to the structure model
(weights sha256, trained, precision, ...), group 2 to the FoldAtlas pipeline (the ``provenance``
key/values: package version, git commit, config hash, run id, timestamps ...). Both are tied to
their ``_software`` rows through ``_ma_software_group.parameter_group_id``.

Differences from AFDB on purpose: no template, DSSP, citation or author categories (we have none);
no per-atom SIFTS columns (``_atom_site.pdbx_sifts_xref_*``), so re-labelling an entry for another
accession never touches ``_atom_site``; ``_ma_data`` has a ``target`` row that
``_ma_target_entity.data_id`` points to (AFDB points it at the model coordinates).

Speed: gemmi writes every category but ``_atom_site``, whose loop (one row per atom, most of the
file) :mod:`storage.mmcif_text` formats with numpy into the text gemmi would write; it is appended
after gemmi's text (``_atom_site`` is the last category). ``_render_modelcif_gemmi`` keeps the
gemmi-only path as the reference the tests compare against.

Validation: :func:`validate_modelcif` runs gemmi's DDL2 validator with the combined PDBx + ModelCIF
dictionary and drops the notes every AFDB file also gets (see its docstring).

Atom names and residue names follow ``transformers.models.esm.openfold_utils.residue_constants``
(``atom_types`` and ``restype_1to3``; X becomes UNK). They are copied here so that importing this
module does not import torch; ``tests/storage/test_mmcif.py`` pins them to the transformers values.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
from gemmi import cif

from model.base import ModelInfo, Prediction
from storage.mmcif_text import FIXED3_LIMIT, fixed3_column, loop_text, serial_column, take_rows, text_column
from storage.mmcif_validate import validate_modelcif  # re-exported: callers import it from here

logger = logging.getLogger(__name__)

__all__ = [
    "ATOM_TYPES",
    "DICTIONARY_VERSION",
    "RESTYPE_1TO3",
    "ModelCIFContents",
    "ModelCIFEntry",
    "read_modelcif",
    "render_modelcif",
    "retarget_modelcif",
    "validate_modelcif",
]

#: AlphaFold atom37 order (``residue_constants.atom_types``).
ATOM_TYPES: tuple[str, ...] = (
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1",
    "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2",
    "NH1", "NH2", "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
)  # fmt: skip
_ATOM_INDEX = {name: i for i, name in enumerate(ATOM_TYPES)}

#: ``residue_constants.restype_1to3``; X (unknown) is written as UNK.
RESTYPE_1TO3: dict[str, str] = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
    "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
    "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
_UNK = "UNK"
_RESTYPE_3TO1 = {three: one for one, three in RESTYPE_1TO3.items()}

# _chem_comp rows (name, formula, formula weight, type) as AFDB writes them; UNK from the PDB CCD.
_CHEM_COMP: dict[str, tuple[str, str, str, str]] = {
    "ALA": ("ALANINE", "C3 H7 N O2", "89.093", "L-PEPTIDE LINKING"),
    "ARG": ("ARGININE", "C6 H15 N4 O2", "175.209", "L-PEPTIDE LINKING"),
    "ASN": ("ASPARAGINE", "C4 H8 N2 O3", "132.118", "L-PEPTIDE LINKING"),
    "ASP": ("ASPARTIC ACID", "C4 H7 N O4", "133.103", "L-PEPTIDE LINKING"),
    "CYS": ("CYSTEINE", "C3 H7 N O2 S", "121.158", "L-PEPTIDE LINKING"),
    "GLN": ("GLUTAMINE", "C5 H10 N2 O3", "146.144", "L-PEPTIDE LINKING"),
    "GLU": ("GLUTAMIC ACID", "C5 H9 N O4", "147.129", "L-PEPTIDE LINKING"),
    "GLY": ("GLYCINE", "C2 H5 N O2", "75.067", "PEPTIDE LINKING"),
    "HIS": ("HISTIDINE", "C6 H10 N3 O2", "156.162", "L-PEPTIDE LINKING"),
    "ILE": ("ISOLEUCINE", "C6 H13 N O2", "131.173", "L-PEPTIDE LINKING"),
    "LEU": ("LEUCINE", "C6 H13 N O2", "131.173", "L-PEPTIDE LINKING"),
    "LYS": ("LYSINE", "C6 H15 N2 O2", "147.195", "L-PEPTIDE LINKING"),
    "MET": ("METHIONINE", "C5 H11 N O2 S", "149.211", "L-PEPTIDE LINKING"),
    "PHE": ("PHENYLALANINE", "C9 H11 N O2", "165.189", "L-PEPTIDE LINKING"),
    "PRO": ("PROLINE", "C5 H9 N O2", "115.130", "L-PEPTIDE LINKING"),
    "SER": ("SERINE", "C3 H7 N O3", "105.093", "L-PEPTIDE LINKING"),
    "THR": ("THREONINE", "C4 H9 N O3", "119.119", "L-PEPTIDE LINKING"),
    "TRP": ("TRYPTOPHAN", "C11 H12 N2 O2", "204.225", "L-PEPTIDE LINKING"),
    "TYR": ("TYROSINE", "C9 H11 N O3", "181.189", "L-PEPTIDE LINKING"),
    "VAL": ("VALINE", "C5 H11 N O2", "117.146", "L-PEPTIDE LINKING"),
    "UNK": ("UNKNOWN", "C4 H9 N O2", "103.120", "L-PEPTIDE LINKING"),
}

DICTIONARY_NAME = "mmcif_ma.dic"
DICTIONARY_VERSION = "1.4.2"
DICTIONARY_LOCATION = "https://raw.githubusercontent.com/ihmwg/ModelCIF/master/dist/mmcif_ma.dic"

#: ``_ma_target_ref_db_details.db_name`` values the dictionary allows; others become "Other".
_REF_DB_NAMES = frozenset({"UNP", "GB", "OrthoDB", "NCBI", "JGI", "Phytozyme"})

_SIMPLE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-()/:,*@]*")
_METRIC_GLOBAL_PLDDT, _METRIC_LOCAL_PLDDT, _METRIC_PTM = "1", "2", "3"
_DATA_TARGET, _DATA_MODEL = "1", "2"
_CHAIN = "A"
_ALIGN_LOOPS = 30  # gemmi WriteOptions.align_loops: loop columns padded to at most this width


@dataclass(frozen=True)
class ModelCIFEntry:
    """Who the structure is about: the entry's identifiers and sequence-database metadata.

    Attributes:
        entry_id: data block name and ``_entry.id``, e.g. "FA-P00221-F1" (no whitespace).
        accession: sequence-database accession ("P00221"); None for inputs without one.
        uniprot_id: UniProt entry name ("FER1_SPIOL"); None when not UniProt.
        description: protein name, e.g. "Ferredoxin-1, chloroplastic" ("" when unknown).
        organism_scientific_name, tax_id: source organism (None when unknown).
        sequence_db_name: "UNP" for UniProt, else the source's name ("MGnify" ...); names the
            dictionary does not enumerate are written as db_name "Other" plus
            ``db_name_other_details``.
        sequence_version_date: ISO date of the sequence version (AFDB ``sequenceVersionDate``).
        model_created_date: date the model was made (AFDB ``modelCreatedDate``).
        Dates may be given as ``datetime.date`` or ISO strings; they are stored as ISO strings.
        gene_name: gene name (AFDB ``gene``), optional.
        sequence_checksum: AFDB ``sequenceChecksum`` (UniProt CRC64, upper-case hex), optional.
    """

    entry_id: str
    accession: str | None
    uniprot_id: str | None
    description: str
    organism_scientific_name: str | None
    tax_id: int | None
    sequence_db_name: str
    sequence_version_date: dt.date | str | None
    model_created_date: dt.date | str | None
    gene_name: str | None = None
    sequence_checksum: str | None = None
    db_align_begin: int = 1  # first residue of the model in the database sequence (fragments: > 1)

    def __post_init__(self) -> None:
        if not self.entry_id or any(c.isspace() for c in self.entry_id):
            raise ValueError(f"entry_id must be non-empty without whitespace, got {self.entry_id!r}")
        for name in ("sequence_version_date", "model_created_date"):
            value = getattr(self, name)
            if isinstance(value, dt.datetime):
                value = value.date()
            if isinstance(value, dt.date):
                object.__setattr__(self, name, value.isoformat())
            elif value is not None:
                try:
                    dt.date.fromisoformat(value)
                except ValueError as e:
                    raise ValueError(f"{name} must be an ISO date YYYY-MM-DD, got {value!r}") from e
        if not self.sequence_db_name:
            raise ValueError("sequence_db_name must be non-empty ('UNP' for UniProt)")
        for name in (
            "description",
            "sequence_db_name",
            "accession",
            "uniprot_id",
            "organism_scientific_name",
        ):
            value = getattr(self, name)
            if value is not None and ("\n" in value or "\r" in value):
                raise ValueError(f"{name} must be a single line, got {value!r}")


@dataclass(frozen=True, eq=False)
class ModelCIFContents:
    """What :func:`read_modelcif` returns (shapes as in :class:`model.base.Prediction`).

    Attributes:
        entry_id: the data block name.
        sequence: one-letter sequence from ``_entity_poly_seq`` (UNK and others read as X).
        atom_positions: float32 (L, 37, 3) Angstrom, atom37 order, zeros where absent.
        atom_mask: bool (L, 37).
        plddt: float32 (L,) per-residue pLDDT from ``_ma_qa_metric_local`` (else the B-factor);
            NaN for residues without atoms.
        global_plddt: ``_ma_qa_metric_global`` pLDDT value, None if absent.
        ptm: ``_ma_qa_metric_global`` pTM value, None if absent (AFDB v4 has none).
    """

    entry_id: str
    sequence: str
    atom_positions: np.ndarray
    atom_mask: np.ndarray
    plddt: np.ndarray
    global_plddt: float | None
    ptm: float | None


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _residue_names(sequence: str) -> list[str]:
    unknown = sorted({c for c in sequence if c not in RESTYPE_1TO3 and c != "X"})
    if unknown:
        raise ValueError(f"sequence has letters {unknown} that have no residue name (only the 20 and X)")
    return [RESTYPE_1TO3.get(c, _UNK) for c in sequence]


def _line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must be a single line, got {value!r}")
    return value


def _iso(value: dt.date | str | None) -> str | None:
    return value.isoformat() if isinstance(value, dt.date) else value


def _title(model_name: str, model_version: str, trained: bool, entry: ModelCIFEntry) -> str:
    ident = entry.accession or entry.entry_id
    target = f"{entry.description} ({ident})" if entry.description else ident
    if trained:
        return f"{model_name} ({model_version}) predicted structure of {target}"
    return (
        f"UNTRAINED MODEL OUTPUT, NOT A REAL PREDICTION: {model_name} ({model_version}) with randomly "
        f"initialised weights, run on the sequence of {target}"
    )


def _details(model_name: str, weights: str, trained: bool, with_ptm: bool = True) -> str:
    if trained:
        where = "global pLDDT and pTM are" if with_ptm else "global pLDDT is"
        return (
            f"Ab initio structure prediction by {model_name} (weights sha256 {weights}). Per-residue "
            f"pLDDT is in _atom_site.B_iso_or_equiv and _ma_qa_metric_local; {where} in "
            "_ma_qa_metric_global."
        )
    return (
        f"This structure comes from an UNTRAINED, randomly initialised {model_name} model "
        f"(weights {weights}). It is NOT a real prediction and must not be used as one; it exists "
        "to test the FoldAtlas pipeline."
    )


_RESERVED_PREFIXES = ("data_", "loop_", "save_", "global_", "stop_")


_Value = str | Literal[False] | None  # None is written "?", False "."


def _q(value: _Value) -> str:
    """One CIF value: None -> ``?``, False -> ``.``; simple tokens bare (as AFDB), else gemmi quoting."""
    if value is None:
        return "?"
    if value is False:
        return "."
    if _SIMPLE_TOKEN.fullmatch(value) and not value.lower().startswith(_RESERVED_PREFIXES):
        return value
    return str(cif.quote(value))


def _category(block: cif.Block, name: str, columns: Mapping[str, Sequence[_Value]]) -> None:
    """Write a category (one row = pairs, more = loop) with AFDB-style quoting."""
    block.set_mmcif_category(
        name, {tag: [_q(v) for v in values] for tag, values in columns.items()}, raw=True
    )


def _wrap(sequence: str, width: int = 80) -> str:
    """Long one-letter sequences as AFDB writes them: a text field wrapped at 80 characters."""
    return "\n".join(sequence[i : i + width] for i in range(0, len(sequence), width))


def _row(block: cif.Block, category: str, /, **values: _Value) -> None:
    """Write a one-row category (written as pairs)."""
    _category(block, category, {tag: [value] for tag, value in values.items()})


def _set_entry_categories(
    block: cif.Block, entry: ModelCIFEntry, sequence: str, title: str, details: str
) -> None:
    """(Re)write every category that depends on the entry rather than on the structure."""
    n = str(len(sequence))
    block.set_pair("_entry.id", _q(entry.entry_id))
    _row(block, "_entity.", id="1", pdbx_description=entry.description or None, pdbx_number_of_molecules="1",
         src_method="man", type="polymer")  # fmt: skip
    _row(block, "_pdbx_database_status.", entry_id=entry.entry_id,
         recvd_initial_deposition_date=_iso(entry.model_created_date), status_code="REL")  # fmt: skip
    _row(block, "_struct.", entry_id=entry.entry_id, pdbx_model_details=details,
         pdbx_structure_determination_methodology="computational", title=title)  # fmt: skip
    origin = "reference database" if entry.accession else "designed"
    _row(block, "_ma_target_entity.", data_id=_DATA_TARGET, entity_id="1", origin=origin)
    for category in ("_ma_target_ref_db_details.", "_struct_ref.", "_struct_ref_seq."):
        found = block.find_mmcif_category(category)
        if found:
            found.erase()
    if entry.accession is None:
        return
    db_name = entry.sequence_db_name if entry.sequence_db_name in _REF_DB_NAMES else "Other"
    db_beg, db_end = str(entry.db_align_begin), str(entry.db_align_begin + len(sequence) - 1)
    db_code = entry.uniprot_id or entry.accession
    _row(block, "_ma_target_ref_db_details.", db_accession=entry.accession, db_code=db_code, db_name=db_name,
         db_name_other_details=entry.sequence_db_name if db_name == "Other" else None,
         gene_name=entry.gene_name, ncbi_taxonomy_id=None if entry.tax_id is None else str(entry.tax_id),
         organism_scientific=entry.organism_scientific_name, seq_db_align_begin=db_beg, seq_db_align_end=db_end,
         seq_db_isoform=None, seq_db_sequence_checksum=entry.sequence_checksum,
         seq_db_sequence_version_date=_iso(entry.sequence_version_date), target_entity_id="1")  # fmt: skip
    _row(block, "_struct_ref.", db_code=db_code, db_name=entry.sequence_db_name, entity_id="1", id="1",
         pdbx_align_begin=db_beg, pdbx_align_end=db_end, pdbx_db_accession=entry.accession, pdbx_db_isoform=None,
         pdbx_seq_one_letter_code=_wrap(sequence))  # fmt: skip
    _row(block, "_struct_ref_seq.", align_id="1", db_align_beg=db_beg, db_align_end=db_end,
         pdbx_PDB_id_code=entry.entry_id, pdbx_auth_seq_align_beg="1", pdbx_auth_seq_align_end=n,
         pdbx_db_accession=entry.accession, pdbx_strand_id=_CHAIN, ref_id="1", seq_align_beg="1",
         seq_align_end=n)  # fmt: skip


def _category_of(item: cif.Item) -> str:
    """Category name of a block item; "" for an erased item (gemmi keeps those, never writes them)."""
    if item.pair is not None:
        return cast("tuple[str, str]", item.pair)[0].split(".", 1)[0]
    if item.loop is not None:
        return str(item.loop.tags[0]).split(".", 1)[0]
    return ""


def _sort_categories(block: cif.Block) -> None:
    """AFDB order: ``_entry`` first, then categories alphabetically, ``_atom_site`` last."""

    def rank(category: str) -> tuple[int, str]:
        special = {"_entry": 0, "_atom_site": 2, "": 3}
        return (special.get(category, 1), category)

    names = [_category_of(item) for item in block]
    order = sorted(range(len(names)), key=lambda i: (rank(names[i]), i))
    current = list(range(len(names)))  # current[pos] = original index of the item at pos
    for target_pos, original in enumerate(order):
        pos = current.index(original)
        if pos != target_pos:
            block.move_item(pos, target_pos)
            current.insert(target_pos, current.pop(pos))


def _write_options() -> cif.WriteOptions:
    options = cif.WriteOptions()
    options.prefer_pairs = True
    options.misuse_hash = True
    options.align_pairs = 48
    options.align_loops = _ALIGN_LOOPS
    return options


def _parameter_rows(groups: Mapping[str, Mapping[str, tuple[str, str]]]) -> dict[str, list[_Value]]:
    """``_ma_software_parameter`` columns; ``parameter_id`` is the category key, unique over groups."""
    rows: dict[str, list[_Value]] = {
        k: [] for k in ("group_id", "parameter_id", "name", "data_type", "value")
    }
    params = [(group_id, name, spec) for group_id, group in groups.items() for name, spec in group.items()]
    for i, (group_id, name, (data_type, value)) in enumerate(params, start=1):
        rows["group_id"].append(group_id)
        rows["parameter_id"].append(str(i))
        rows["name"].append(_line(name, "parameter name"))
        rows["data_type"].append(data_type)
        rows["value"].append(_line(value, f"value of {name!r}") if value else None)
    return rows


def _sequence_categories(block: cif.Block, sequence: str, names: list[str], observed: list[bool]) -> None:
    """Chemistry and sequence: _chem_comp, _entity_poly(_seq), _pdbx_poly_seq_scheme, _struct_asym."""
    n = len(sequence)
    seq_ids = [str(i) for i in range(1, n + 1)]
    present = sorted(set(names))
    _category(block, "_chem_comp.", {
        "formula": [_CHEM_COMP[r][1] for r in present],
        "formula_weight": [_CHEM_COMP[r][2] for r in present],
        "id": present,
        "mon_nstd_flag": ["y" if r != _UNK else False for r in present],
        "name": [_CHEM_COMP[r][0] for r in present],
        "pdbx_synonyms": [None] * len(present),
        "type": [_CHEM_COMP[r][3] for r in present],
    })  # fmt: skip
    one_letter = "".join("(UNK)" if c == "X" else c for c in sequence)
    _row(block, "_entity_poly.", entity_id="1", nstd_linkage="no", nstd_monomer="no",
         pdbx_seq_one_letter_code=_wrap(one_letter), pdbx_seq_one_letter_code_can=_wrap(sequence),
         pdbx_strand_id=_CHAIN, type="polypeptide(L)")  # fmt: skip
    block.set_mmcif_category(  # residue names and numbers: simple tokens, no quoting
        "_entity_poly_seq.", {"entity_id": ["1"] * n, "hetero": ["n"] * n, "mon_id": names, "num": seq_ids}, raw=True
    )
    block.set_mmcif_category("_pdbx_poly_seq_scheme.", {
        "asym_id": [_CHAIN] * n,
        "auth_seq_num": [s if o else "?" for s, o in zip(seq_ids, observed, strict=True)],
        "entity_id": ["1"] * n,
        "hetero": ["n"] * n,
        "mon_id": names,
        "pdb_ins_code": ["."] * n,
        "pdb_mon_id": [r if o else "?" for r, o in zip(names, observed, strict=True)],
        "pdb_seq_num": seq_ids,
        "pdb_strand_id": [_CHAIN] * n,
        "seq_id": seq_ids,
    }, raw=True)  # fmt: skip
    _row(block, "_struct_asym.", entity_id="1", id=_CHAIN)
    _row(block, "_ma_target_entity_instance.", asym_id=_CHAIN, details=False, entity_id="1")


def _model_categories(block: cif.Block, model: ModelInfo, provenance: Mapping[str, str],
                      with_ptm: bool = True) -> None:
    """Software, protocol, model list, data and provenance parameters."""
    untrained = "" if model.trained else "UNTRAINED random-init "
    _category(block, "_ma_data.", {
        "content_type": ["target", "model coordinates"],
        "id": [_DATA_TARGET, _DATA_MODEL],
        "name": ["Target sequence", f"{untrained}Model"],
    })  # fmt: skip
    model_name = "Top ranked model" if model.trained else "UNTRAINED model output, not a real prediction"
    _row(block, "_ma_model_list.", data_id=_DATA_MODEL, model_group_id="1",
         model_group_name=f"{model.name} {model.version} {untrained}model", model_id="1", model_name=model_name,
         model_type="Ab initio model", ordinal_id="1")  # fmt: skip
    steps: list[tuple[str, str, str | None]] = []
    if model.uses_msa:
        steps.append(("coevolution MSA", "multiple sequence alignment of the target", None))
    steps.append(("modeling", _details(model.name, model.weights_sha256, model.trained, with_ptm), "1"))
    steps.append(("other", "FoldAtlas pipeline: confidence metrics and file writing", "2"))
    ordinals = [str(i) for i in range(1, len(steps) + 1)]
    _category(block, "_ma_protocol_step.", {
        "details": [s[1] for s in steps], "method_type": [s[0] for s in steps], "ordinal_id": ordinals,
        "protocol_id": ["1"] * len(steps), "software_group_id": [s[2] for s in steps], "step_id": ordinals,
    })  # fmt: skip
    _category(block, "_software.", {
        "classification": ["other", "other"],
        "description": ["Structure prediction", "Proteome-scale structure prediction pipeline"],
        "name": [model.name, "FoldAtlas"],
        "pdbx_ordinal": ["1", "2"],
        "type": ["package", "package"],
        "version": [model.version, provenance.get("package_version") or None],
    })  # fmt: skip
    model_params: dict[str, tuple[str, str]] = {
        "weights_sha256": ("string", model.weights_sha256),
        "trained": ("boolean", "true" if model.trained else "false"),
        "precision": ("string", model.precision),
        "uses_msa": ("boolean", "true" if model.uses_msa else "false"),
    }
    model_params.update({k: ("string", v) for k, v in model.extra.items() if k not in model_params})
    pipeline_params = {k: ("string", str(v)) for k, v in provenance.items()}
    _category(block, "_ma_software_group.", {
        "group_id": ["1", "2"], "ordinal_id": ["1", "2"],
        "parameter_group_id": ["1", "2" if pipeline_params else None], "software_id": ["1", "2"],
    })  # fmt: skip
    _category(block, "_ma_software_parameter.", _parameter_rows({"1": model_params, "2": pipeline_params}))
    disclaimer = (
        "THE INFORMATION IS THEORETICAL MODELLING ONLY AND CAUTION SHOULD BE EXERCISED IN ITS USE. "
        "IT IS PROVIDED AS-IS WITHOUT ANY WARRANTY OF ANY KIND."
    )
    if not model.trained:
        disclaimer = "UNTRAINED, RANDOMLY INITIALISED MODEL: THIS IS NOT A REAL PREDICTION. " + disclaimer
    _row(block, "_pdbx_data_usage.", details=disclaimer, id="1", name=None, type="disclaimer", url=None)


def _confidence_categories(
    block: cif.Block,
    names: list[str],
    b_text: list[str],
    observed: list[bool],
    global_plddt: float,
    ptm: float | None,
) -> None:
    """pLDDT (global, and local for residues with atoms) and pTM (global, unless None) as QA metrics."""
    rows = [i for i, o in enumerate(observed) if o]  # a local metric needs the residue in _atom_site
    seq_ids = [str(i + 1) for i in rows]
    n = len(rows)
    k = 3 if ptm is not None else 2  # without pTM (imported AFDB models): the two pLDDT metrics only
    _category(block, "_ma_qa_metric.", {
        "id": [_METRIC_GLOBAL_PLDDT, _METRIC_LOCAL_PLDDT, _METRIC_PTM][:k],
        "mode": ["global", "local", "global"][:k], "name": ["pLDDT", "pLDDT", "pTM"][:k],
        "software_group_id": ["1", "1", "1"][:k], "type": ["pLDDT", "pLDDT", "pTM"][:k],
    })  # fmt: skip
    _category(block, "_ma_qa_metric_global.", {
        "metric_id": [_METRIC_GLOBAL_PLDDT, _METRIC_PTM][: k - 1],
        "metric_value": [f"{global_plddt:.2f}"] + ([f"{ptm:.4f}"] if ptm is not None else []),
        "model_id": ["1", "1"][: k - 1], "ordinal_id": ["1", "2"][: k - 1],
    })  # fmt: skip
    block.set_mmcif_category("_ma_qa_metric_local.", {
        "label_asym_id": [_CHAIN] * n, "label_comp_id": [names[i] for i in rows], "label_seq_id": seq_ids,
        "metric_id": [_METRIC_LOCAL_PLDDT] * n, "metric_value": [b_text[i] for i in rows], "model_id": ["1"] * n,
        "ordinal_id": [str(i) for i in range(1, n + 1)],
    }, raw=True)  # fmt: skip


def _atom_type(block: cif.Block, atom_idx: np.ndarray) -> None:
    """``_atom_type``: the element symbols present (first letter of the atom37 names)."""
    _category(block, "_atom_type.", {"symbol": sorted({ATOM_TYPES[a][0] for a in np.unique(atom_idx)})})


def _atom_site(
    block: cif.Block, names: list[str], b_text: list[str], mask: np.ndarray, xyz: np.ndarray
) -> None:
    """``_atom_site`` in AFDB's column order through gemmi (``xyz``: coordinates of the masked atoms).

    The reference for :func:`_atom_site_text`, and its fallback.
    """
    res_idx, atom_idx = np.nonzero(mask)  # residue-major, atom37 order within a residue
    n_atoms = int(res_idx.size)
    atom_names = [ATOM_TYPES[a] for a in atom_idx]
    res_names = [names[r] for r in res_idx]
    res_nums = [str(r + 1) for r in res_idx]
    coords = [[f"{v:.3f}" for v in xyz[:, k]] for k in range(3)]
    block.set_mmcif_category("_atom_site.", {
        "group_PDB": ["ATOM"] * n_atoms, "id": [str(i) for i in range(1, n_atoms + 1)],
        "type_symbol": [a[0] for a in atom_names], "label_atom_id": atom_names, "label_alt_id": ["."] * n_atoms,
        "label_comp_id": res_names, "label_asym_id": [_CHAIN] * n_atoms, "label_entity_id": ["1"] * n_atoms,
        "label_seq_id": res_nums, "pdbx_PDB_ins_code": ["?"] * n_atoms,
        "Cartn_x": coords[0], "Cartn_y": coords[1], "Cartn_z": coords[2], "occupancy": ["1.0"] * n_atoms,
        "B_iso_or_equiv": [b_text[r] for r in res_idx], "pdbx_formal_charge": ["?"] * n_atoms,
        "auth_seq_id": res_nums, "auth_comp_id": res_names, "auth_asym_id": [_CHAIN] * n_atoms,
        "auth_atom_id": atom_names, "pdbx_PDB_model_num": ["1"] * n_atoms,
    }, raw=True)  # fmt: skip


_ATOM_SITE_TAGS = tuple(f"_atom_site.{t}" for t in (
    "group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id", "label_asym_id",
    "label_entity_id", "label_seq_id", "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y", "Cartn_z", "occupancy",
    "B_iso_or_equiv", "pdbx_formal_charge", "auth_seq_id", "auth_comp_id", "auth_asym_id", "auth_atom_id",
    "pdbx_PDB_model_num",
))  # fmt: skip
_ATOM_NAME_COLUMN = text_column(ATOM_TYPES)


def _atom_site_text(names: list[str], b_text: list[str], mask: np.ndarray, xyz: np.ndarray) -> str | None:
    """The text gemmi writes for :func:`_atom_site`'s loop, formatted with numpy (None: use gemmi).

    Needs more than one atom (gemmi writes a single row as pairs), coordinates below
    ``FIXED3_LIMIT`` and columns no wider than ``align_loops``.
    """
    res_idx, atom_idx = np.nonzero(mask)  # the rows of _atom_site's
    n = int(res_idx.size)
    if n < 2 or not np.all(np.abs(xyz) < FIXED3_LIMIT):
        return None
    atom = take_rows(_ATOM_NAME_COLUMN, atom_idx)
    comp = np.take(text_column(names), res_idx, axis=0)
    seq = take_rows(serial_column(len(names)), res_idx)
    b = take_rows(text_column(b_text), res_idx)
    x, y, z = (fixed3_column(xyz[:, k]) for k in range(3))
    columns: list[np.ndarray | str] = [
        "ATOM", serial_column(n), atom[:, :1], atom, ".", comp, _CHAIN, "1", seq, "?", x, y, z, "1.0", b, "?", seq,
        comp, _CHAIN, atom, "1",
    ]  # fmt: skip
    return loop_text(_ATOM_SITE_TAGS, columns, _ALIGN_LOOPS)


def render_modelcif(
    prediction: Prediction, entry: ModelCIFEntry, model: ModelInfo, provenance: Mapping[str, str],
    *, with_ptm: bool = True,
) -> str:
    """ModelCIF text for one prediction, in AFDB v4's layout (see the module docstring).

    Args:
        prediction: the structure; atoms are written where ``atom_mask`` is True, in atom37 order.
        entry: identifiers and sequence-database metadata of the entry.
        model: provenance of the model (name, version, weights sha256, trained).
        provenance: pipeline key/values written to ``_ma_software_parameter`` group 2; the key
            ``package_version`` also becomes the FoldAtlas ``_software.version``.

    Raises:
        ValueError: unknown residue letters, no atoms, non-finite coordinates or confidence
            (those predictions are failures, see :func:`pipeline.confidence.check_geometry`), or a
            multi-line provenance value.

    ``with_ptm=False`` writes no pTM metric and ignores ``prediction.ptm``: for imported models
    whose source has none (AlphaFold DB v4 files, PDB files).
    """
    return _render(prediction, entry, model, provenance, with_ptm=with_ptm, fast=True)


def _render_modelcif_gemmi(
    prediction: Prediction, entry: ModelCIFEntry, model: ModelInfo, provenance: Mapping[str, str],
    *, with_ptm: bool = True,
) -> str:
    """:func:`render_modelcif` with every category written by gemmi, ``_atom_site`` included.

    The reference the fast path is tested against (``tests/storage/test_mmcif_text.py``) and compared
    with by ``benchmarks/render_speed.py``: both return the same text.
    """
    return _render(prediction, entry, model, provenance, with_ptm=with_ptm, fast=False)


def _render(
    prediction: Prediction, entry: ModelCIFEntry, model: ModelInfo, provenance: Mapping[str, str],
    *, with_ptm: bool, fast: bool,
) -> str:
    names = _residue_names(prediction.sequence)
    mask = np.asarray(prediction.atom_mask, dtype=bool)
    if not mask.any():
        raise ValueError("the prediction has no atoms to write")
    xyz = np.asarray(prediction.atom_positions, dtype=np.float64)[mask]
    plddt = np.asarray(prediction.plddt, dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise ValueError("non-finite atom coordinates: record a failure instead of writing a structure")
    if not (np.all(np.isfinite(plddt)) and (np.isfinite(prediction.ptm) or not with_ptm)):
        raise ValueError("non-finite pLDDT or pTM: record a failure instead of writing a structure")

    b_text = [f"{v:.2f}" for v in plddt]  # pLDDT as written; the global value is its mean over atoms
    atoms_per_residue = mask.sum(axis=1).astype(np.float64)
    written = np.array([float(b) for b in b_text])
    global_plddt = round(float((written * atoms_per_residue).sum() / atoms_per_residue.sum()), 2)

    doc = cif.Document()
    block = doc.add_new_block(entry.entry_id)
    title = _title(model.name, model.version, model.trained, entry)
    details = _details(model.name, model.weights_sha256, model.trained, with_ptm)
    _set_entry_categories(block, entry, prediction.sequence, title, details)
    _row(block, "_audit_conform.", dict_location=DICTIONARY_LOCATION, dict_name=DICTIONARY_NAME,
         dict_version=DICTIONARY_VERSION)  # fmt: skip
    observed: list[bool] = np.asarray(mask.any(axis=1)).tolist()
    _sequence_categories(block, prediction.sequence, names, observed)
    _model_categories(block, model, provenance, with_ptm)
    _confidence_categories(block, names, b_text, observed, global_plddt,
                           float(prediction.ptm) if with_ptm else None)
    _atom_type(block, np.nonzero(mask)[1])
    atom_site = _atom_site_text(names, b_text, mask, xyz) if fast else None
    if atom_site is None:
        _atom_site(block, names, b_text, mask, xyz)
    _sort_categories(block)
    text: str = doc.as_string(_write_options())
    if atom_site is not None:  # _atom_site is the last category: its text follows the other's closing "#"
        text += atom_site + "#\n"
    logger.debug("rendered %s: %d residues, %d atoms", entry.entry_id, len(names), len(xyz))
    return text


def _model_params(block: cif.Block) -> tuple[str, str, bool, str]:
    """(model name, version, trained, details) of a FoldAtlas ModelCIF block."""
    software = block.get_mmcif_category("_software.")
    params = block.get_mmcif_category("_ma_software_parameter.")
    struct = block.get_mmcif_category("_struct.")
    try:
        i = software["pdbx_ordinal"].index("1")
        name, version = software["name"][i], software["version"][i]
        trained = {
            (g, p): v for g, p, v in zip(params["group_id"], params["name"], params["value"], strict=True)
        }[("1", "trained")]
        details = struct["pdbx_model_details"][0]
    except (KeyError, ValueError) as e:
        raise ValueError(
            "not a FoldAtlas ModelCIF (no model software row / 'trained' parameter); "
            "retarget only files written by render_modelcif"
        ) from e
    return str(name), str(version), trained == "true", str(details)


def retarget_modelcif(cif_text: str, entry: ModelCIFEntry) -> str:
    """The same structure re-labelled for another entry whose sequence is identical.

    Rewrites the data block name, ``_entry``, ``_struct`` (title), ``_entity.pdbx_description``,
    ``_pdbx_database_status``, ``_ma_target_entity``, ``_ma_target_ref_db_details`` and
    ``_struct_ref``/``_struct_ref_seq``; coordinates, confidence and provenance are untouched.
    """
    doc = cif.read_string(cif_text)
    block = doc.sole_block()
    name, version, trained, details = _model_params(block)
    sequence = "".join(cif.as_string(block.find_value("_entity_poly.pdbx_seq_one_letter_code_can")).split())
    block.name = entry.entry_id
    _set_entry_categories(block, entry, sequence, _title(name, version, trained, entry), details)
    _sort_categories(block)
    text: str = doc.as_string(_write_options())
    return text


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_modelcif(text: str | bytes) -> ModelCIFContents:
    """Sequence, atom37 coordinates and mask, and per-residue pLDDT of a single-chain ModelCIF.

    Reads AFDB files and ours. Only the first model (``pdbx_PDB_model_num``) is read.

    Raises:
        ValueError: unparsable text, more than one chain, or atom names outside atom37.
    """
    try:
        doc = cif.read_string(text.decode() if isinstance(text, bytes) else text)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"cannot parse mmCIF: {e}") from e
    block = doc.sole_block()
    mon_ids = list(block.find_values("_entity_poly_seq.mon_id"))
    sequence = "".join(_RESTYPE_3TO1.get(m, "X") for m in mon_ids)
    n = len(sequence)
    atoms = block.find(
        "_atom_site.",
        [
            "label_seq_id",
            "label_atom_id",
            "Cartn_x",
            "Cartn_y",
            "Cartn_z",
            "B_iso_or_equiv",
            "label_asym_id",
            "pdbx_PDB_model_num",
        ],
    )
    positions = np.zeros((n, len(ATOM_TYPES), 3), dtype=np.float32)
    mask = np.zeros((n, len(ATOM_TYPES)), dtype=bool)
    b_first = np.full(n, np.nan, dtype=np.float32)
    chains, first_model = set(), None
    for row in atoms:
        model_num = row[7]
        first_model = first_model or model_num
        if model_num != first_model:
            continue
        chains.add(row[6])
        r = int(row[0]) - 1
        name = cif.as_string(row[1])
        if name not in _ATOM_INDEX:
            raise ValueError(f"atom {name!r} of residue {r + 1} is not an atom37 atom")
        a = _ATOM_INDEX[name]
        positions[r, a] = (float(row[2]), float(row[3]), float(row[4]))
        mask[r, a] = True
        if np.isnan(b_first[r]):
            b_first[r] = float(row[5])
    if len(chains) > 1:
        raise ValueError(f"expected one chain, found {sorted(chains)}")
    plddt = b_first
    metrics = block.get_mmcif_category("_ma_qa_metric.")
    local_ids = [
        i
        for i, m, t in zip(
            metrics.get("id", []), metrics.get("mode", []), metrics.get("type", []), strict=False
        )
        if m == "local" and t == "pLDDT"
    ]
    local = block.get_mmcif_category("_ma_qa_metric_local.")
    if local_ids and local:
        plddt = np.full(n, np.nan, dtype=np.float32)
        for seq_id, metric_id, value in zip(
            local["label_seq_id"], local["metric_id"], local["metric_value"], strict=True
        ):
            if metric_id == local_ids[0]:
                plddt[int(seq_id) - 1] = float(value)
    global_values: dict[str | None, float] = {}
    glob = block.get_mmcif_category("_ma_qa_metric_global.")
    types = dict(zip(metrics.get("id", []), metrics.get("type", []), strict=False))
    for metric_id, value in zip(glob.get("metric_id", []), glob.get("metric_value", []), strict=True):
        global_values.setdefault(types.get(metric_id), float(value))
    return ModelCIFContents(
        entry_id=block.name,
        sequence=sequence,
        atom_positions=positions,
        atom_mask=mask,
        plddt=plddt,
        global_plddt=global_values.get("pLDDT"),
        ptm=global_values.get("pTM"),
    )
