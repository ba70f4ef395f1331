"""FoldAtlas exceptions: one small hierarchy with structured fields.

Messages say what to do next. Wrap lower-level errors with ``raise ... from e``.
"""

from __future__ import annotations


class FoldAtlasError(Exception):
    """Base class for every error FoldAtlas raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.hint = hint or self.hint
        super().__init__(f"{message}\n  hint: {self.hint}" if self.hint else message)


class ConfigError(FoldAtlasError):
    """The run configuration (TOML or flags) is invalid."""


class InputError(FoldAtlasError):
    """An input file cannot be read at all (missing, not FASTA, unreadable compression)."""


class WeightsError(FoldAtlasError):
    """Model weights are missing, unreadable or fail their checksum."""


class AtlasError(FoldAtlasError):
    """The atlas store is missing, locked, or inconsistent."""


class EntryNotFound(AtlasError):
    """A requested accession or entry is not in the atlas."""


class ReleaseError(AtlasError):
    """A release (export, download, validate) cannot be made or read: bad options, missing manifest."""
