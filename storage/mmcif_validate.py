"""Validation of ModelCIF files against the PDBx/ModelCIF DDL2 dictionary, with gemmi.

Split from :mod:`storage.mmcif`, which re-exports :func:`validate_modelcif`.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

from gemmi import cif

logger = logging.getLogger(__name__)


# Messages gemmi's DDL2 validator prints for every AFDB v4 file, which are not problems of the file:
# * "Bad DDL2: different parents for _struct_asym.entity_id ..." is about the dictionary itself
#   (ModelCIF adds a second parent for that item);
# * "category indicated as CONTRIBUTED/CHEM_COMP_INT: ..." reports the dictionary's
#   _pdbx_category_context of ma_* and pdbx_audit_revision_* categories: information, not an error;
# * (parent checks only) "_chem_comp_atom.atom_id ... parent of _atom_site.label_atom_id": the
#   standard atom names are defined by the PDB Chemical Component Dictionary, which model files
#   (AFDB's included) do not repeat.
_DICTIONARY_NOTE_PREFIXES = ("Bad DDL2:",)
_NOTE_MARKERS = ("category indicated as ",)
_CHEM_COMP_ATOM_PARENT = "_chem_comp_atom.atom_id"

_ddl_lock = threading.Lock()


class _Collector:
    """The logger gemmi calls; swapped per validation (gemmi keeps one logger per Ddl)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)


@lru_cache(maxsize=4)
def _load_ddl(dictionary_path: str, check_parents: bool) -> tuple[cif.Ddl, _Collector]:
    collector = _Collector()
    ddl = cif.Ddl(logger=collector, use_linked_groups=check_parents)
    # read_ddl takes the document over: a dictionary Document cannot be shared between Ddl objects.
    ddl.read_ddl(cif.read(dictionary_path))
    return ddl, collector


def _is_note(message: str, check_parents: bool) -> bool:
    if message.startswith(_DICTIONARY_NOTE_PREFIXES) or any(m in message for m in _NOTE_MARKERS):
        return True
    return check_parents and _CHEM_COMP_ATOM_PARENT in message and "_atom_site.label_atom_id" in message


def validate_modelcif(
    text_or_path: str | bytes | os.PathLike[str],
    dictionary_path: str | os.PathLike[str],
    *,
    check_parents: bool = False,
) -> list[str]:
    """Validate ModelCIF against a DDL2 dictionary (e.g. mmcif_ma_v1.4.2.dic, .gz is fine).

    Returns the real problems: an empty list means valid. This is the same verdict as the Debian
    ``gemmi validate -d DICT FILE`` command under which every AFDB v4 file passes: gemmi's checks
    of types, enumerations, regular expressions, mandatory items, unique keys and unknown tags,
    minus the dictionary's own notes listed above. ``check_parents=True`` adds parent/child link
    checks (``gemmi validate -p``), which AFDB files fail (``_citation_author.citation_id``) but
    ours pass, apart from the ``_chem_comp_atom`` note.

    Args:
        text_or_path: mmCIF text (str containing a newline, or bytes) or a path to a file.
        dictionary_path: the dictionary file.
    """
    if isinstance(text_or_path, bytes):
        source, text = "<text>", text_or_path.decode()
    elif isinstance(text_or_path, str) and "\n" in text_or_path:
        source, text = "<text>", text_or_path
    else:
        source, text = str(text_or_path), Path(text_or_path).read_text()
    try:
        doc = cif.read_string(text)
    except (RuntimeError, ValueError) as e:
        return [f"{source}: not parsable as CIF: {e}"]
    with _ddl_lock:
        ddl, collector = _load_ddl(str(dictionary_path), check_parents)
        collector.messages = []
        ok = ddl.validate_cif(doc)
        messages = collector.messages
        collector.messages = []
    problems = [m for m in messages if not _is_note(m, check_parents)]
    for m in messages:
        if m not in problems:
            logger.debug("dictionary note (not a problem): %s", m)
    if not ok and not problems:
        problems.append(f"{source}: gemmi reported the document invalid without a message")
    return problems
