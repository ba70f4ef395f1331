"""Arrow schemas of the atlas tables: defined once, here.

DuckDB views (:mod:`storage.query`), the column tables in ``docs/output.md`` and validation all
derive from these objects. Each field carries a ``description`` (and ``unit`` where it has one)
in its Arrow field metadata, so the Parquet files document themselves.

Tables (each stored as ``<atlas>/<table>/*.parquet``):

``entries``
    One row per accepted input record (an accession). The 27 AlphaFold DB BigQuery ``metadata``
    columns keep AFDB's names, types and meanings; FoldAtlas columns sit beside them.
``structures``
    One row per predicted or imported (sequence, model): metrics, per-residue pLDDT and where the
    structure's compact record (coordinates, pLDDT, PAE; mmCIF and PAE JSON rendered from it) lives
    inside the structure shard.
``rejects``
    One row per input record that failed validation, with a reason code.
``failures``
    One row per failed prediction attempt (out of memory, model error, bad geometry ...).
``msas``
    One row per (sequence, MSA database, tool and parameters): the A3M and its depth and Neff.
    It is the MSA cache: a sequence is never searched twice against the same database.
"""

from __future__ import annotations

import pyarrow as pa

ENTRY_STATUSES = ("predicted", "failed")


def _f(name: str, type_: pa.DataType, description: str, unit: str = "", nullable: bool = True) -> pa.Field:
    meta = {"description": description}
    if unit:
        meta["unit"] = unit
    return pa.field(name, type_, nullable=nullable, metadata=meta)


_TS = pa.timestamp("us", tz="UTC")

# The 27 columns of the AlphaFold DB BigQuery `metadata` table, same names, same meanings.
AFDB_METADATA_FIELDS: list[pa.Field] = [
    _f("allVersions", pa.list_(pa.int64()), "All model versions of this entry in the atlas"),
    _f("entryId", pa.string(), "Entry identifier, FA-<accession>-F1 (AFDB: AF-<accession>-F1)", nullable=False),
    _f("fractionPlddtConfident", pa.float64(), "Fraction of residues with 70 <= pLDDT < 90", "fraction 0-1"),
    _f("fractionPlddtLow", pa.float64(), "Fraction of residues with 50 <= pLDDT < 70", "fraction 0-1"),
    _f("fractionPlddtVeryHigh", pa.float64(), "Fraction of residues with pLDDT >= 90", "fraction 0-1"),
    _f("fractionPlddtVeryLow", pa.float64(), "Fraction of residues with pLDDT < 50", "fraction 0-1"),
    _f("gene", pa.string(), "Gene name (UniProt GN=)"),
    _f("geneSynonyms", pa.list_(pa.string()), "Gene name synonyms (not in FASTA headers: null)"),
    _f("globalMetricValue", pa.float64(), "Global pLDDT as AFDB computes it: mean over atoms", "pLDDT 0-100"),
    _f("isReferenceProteome", pa.bool_(), "Whether the entry is in a UniProt reference proteome (from config)"),
    _f("isReviewed", pa.bool_(), "Swiss-Prot (sp|) = true, TrEMBL (tr|) = false, other sources null"),
    _f("latestVersion", pa.int64(), "Latest model version of this entry"),
    _f("modelCreatedDate", pa.date32(), "Date the model was predicted"),
    _f("organismCommonNames", pa.list_(pa.string()), "Organism common names (not in FASTA headers: null)"),
    _f("organismScientificName", pa.string(), "Organism scientific name (UniProt OS=)"),
    _f("organismSynonyms", pa.list_(pa.string()), "Organism synonyms (not in FASTA headers: null)"),
    _f("proteinFullNames", pa.list_(pa.string()), "Protein full names (UniProt FASTA description)"),
    _f("proteinShortNames", pa.list_(pa.string()), "Protein short names (not in FASTA headers: null)"),
    _f("sequenceChecksum", pa.string(), "UniProt CRC64 checksum of the sequence, upper-case hex (AFDB v4)"),
    _f("sequenceVersionDate", pa.date32(), "Date of the UniProt sequence version (not in FASTA: null)"),
    _f("taxId", pa.int64(), "NCBI taxonomy id (UniProt OX=)"),
    _f("uniprotAccession", pa.string(), "UniProt accession; null for non-UniProt inputs"),
    _f("uniprotDescription", pa.string(), "Protein description from the header"),
    _f("uniprotEnd", pa.int64(), "Last residue of the modelled range (1-based, inclusive)", "residue"),
    _f("uniprotId", pa.string(), "UniProt entry name, e.g. FER1_SPIOL"),
    _f("uniprotSequence", pa.string(), "The modelled sequence (one-letter codes)"),
    _f("uniprotStart", pa.int64(), "First residue of the modelled range (1-based)", "residue"),
]

ENTRIES_SCHEMA = pa.schema(
    [
        *AFDB_METADATA_FIELDS,
        _f("accession", pa.string(), "Accession from the input header (UniProt or first header token)", nullable=False),
        _f("model", pa.string(), "Model name, e.g. esmfold or esmfold-tiny", nullable=False),
        _f("status", pa.string(), "predicted | failed (see docs/output.md)", nullable=False),
        _f("ptm", pa.float64(), "Predicted TM-score of the structure", "0-1"),
        _f("mean_plddt", pa.float64(), "Mean per-residue pLDDT (ESM Atlas's mean pLDDT)", "pLDDT 0-100"),
        _f("tier", pa.string(), "Confidence tier from the publication policy"),
        _f("published", pa.bool_(), "Whether the structure's mmCIF is published in the atlas"),
        _f("sequence_sha256", pa.string(), "SHA-256 of the sequence (content key)", nullable=False),
        _f("sequence_md5", pa.string(), "MD5 of the sequence (AFDB v6 API, ESM Atlas protein_hash)"),
        _f("sequence_length", pa.int64(), "Sequence length", "residues"),
        _f("failure_reason", pa.string(), "Failure reason code when status = failed"),
        _f("fold_route", pa.string(), "How the sequence reached the model: normal | chunked | oom_chunked | "
                                      "oom_fragment (docs/output.md); null for linked or reused entries"),
        _f("fragment_of_sha256", pa.string(), "For a fragment entry (F1..Fn): SHA-256 of the whole input sequence"),
        _f("msa_depth", pa.int64(), "Sequences in the MSA, query included (null: no MSA searched)", "sequences"),
        _f("msa_neff", pa.float64(), "Effective number of sequences at 80% identity", "sequences"),
        _f("msa_key", pa.string(), "Key of the MSA in the msas table"),
        _f("taxonomy_source", pa.string(), "Where organism fields came from: uniprot_header | afdb_mmcif | none"),
        _f("source_file", pa.string(), "Input file name the record came from"),
        _f("source_record_index", pa.int64(), "0-based position of the record in its input file"),
        _f("header", pa.string(), "The raw FASTA header line (without '>')"),
        _f("protein_existence", pa.int64(), "UniProt protein existence level (PE=)"),
        _f("sequence_version", pa.int64(), "UniProt sequence version (SV=)"),
        _f("ingest_notes", pa.list_(pa.string()), "Changes made at ingest (e.g. stripped terminal *)"),
        _f("run_id", pa.string(), "Run that wrote this row", nullable=False),
        _f("created_at", _TS, "When this row was written", "UTC"),
    ]
)

STRUCTURES_SCHEMA = pa.schema(
    [
        _f("sequence_sha256", pa.string(), "SHA-256 of the sequence (content key)", nullable=False),
        _f("model", pa.string(), "Model name", nullable=False),
        _f("sequence_md5", pa.string(), "MD5 of the sequence"),
        _f("sequence_crc64", pa.string(), "UniProt CRC64 of the sequence"),
        _f("sequence", pa.string(), "The predicted sequence", nullable=False),
        _f("sequence_length", pa.int64(), "Sequence length", "residues"),
        _f("model_version", pa.string(), "Backend and library version"),
        _f("weights_sha256", pa.string(), "SHA-256 of the loaded weights (or random-init marker)"),
        _f("model_trained", pa.bool_(), "False when the weights are a random initialisation: not a real prediction"),
        _f("precision", pa.string(), "Numerical precision of inference (fp32, fp16, bf16)"),
        _f("plddt", pa.list_(pa.float32()), "Per-residue pLDDT", "pLDDT 0-100"),
        _f("mean_plddt", pa.float64(), "Mean per-residue pLDDT", "pLDDT 0-100"),
        _f("global_metric_value", pa.float64(), "Mean pLDDT over atoms (AFDB globalMetricValue)", "pLDDT 0-100"),
        _f("fraction_plddt_very_low", pa.float64(), "Fraction of residues with pLDDT < 50", "fraction 0-1"),
        _f("fraction_plddt_low", pa.float64(), "Fraction of residues with 50 <= pLDDT < 70", "fraction 0-1"),
        _f("fraction_plddt_confident", pa.float64(), "Fraction of residues with 70 <= pLDDT < 90", "fraction 0-1"),
        _f("fraction_plddt_very_high", pa.float64(), "Fraction of residues with pLDDT >= 90", "fraction 0-1"),
        _f("ptm", pa.float64(), "Predicted TM-score", "0-1"),
        _f("max_pae", pa.float64(), "Largest expressible PAE (max_predicted_aligned_error)", "Angstrom"),
        _f("mean_pae", pa.float64(), "Mean predicted aligned error", "Angstrom"),
        _f("ca_ca_outlier_fraction", pa.float64(), "Fraction of consecutive CA-CA distances outside 3.0-4.5 A", "fraction 0-1"),
        _f("tier", pa.string(), "Confidence tier from the publication policy"),
        _f("published", pa.bool_(), "Whether the structure record (mmCIF and PAE JSON on demand) is in a shard"),
        _f("representative_accession", pa.string(), "Accession whose metadata the stored mmCIF carries"),
        _f("mmcif_shard", pa.string(), "Structure shard path relative to the atlas root (tar)"),
        _f("mmcif_member", pa.string(), "Member name of the structure record (*.fac: compact coordinates, pLDDT, PAE) in the shard"),
        _f("mmcif_offset", pa.int64(), "Byte offset of the record's data in the shard", "bytes"),
        _f("mmcif_size", pa.int64(), "Stored size of the record", "bytes"),
        _f("pae_member", pa.string(), "Member holding the PAE: the same record as mmcif_member (null: no PAE)"),
        _f("pae_offset", pa.int64(), "Byte offset of the PAE member's data in the shard", "bytes"),
        _f("pae_size", pa.int64(), "Compressed size of the PAE member", "bytes"),
        _f("model_seconds", pa.float64(), "Model wall time attributed to this sequence", "seconds"),
        _f("batch_size", pa.int64(), "Number of sequences in the model batch"),
        _f("unit_id", pa.string(), "Work unit that produced the row (shard name stem)"),
        _f("run_id", pa.string(), "Run that wrote this row", nullable=False),
        _f("created_at", _TS, "When this row was written", "UTC"),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        _f("reject_key", pa.string(), "SHA-256 of header, raw sequence and reason (dedupe key)", nullable=False),
        _f("reason", pa.string(), "Reject reason code (docs/output.md)", nullable=False),
        _f("detail", pa.string(), "Human-readable detail"),
        _f("accession", pa.string(), "Accession if one could be parsed"),
        _f("header", pa.string(), "Raw header line"),
        _f("raw_sequence", pa.string(), "Sequence exactly as read (nothing is lost)"),
        _f("source_file", pa.string(), "Input file name"),
        _f("source_record_index", pa.int64(), "0-based position of the record in its file"),
        _f("source_line", pa.int64(), "1-based line number of the record's header"),
        _f("run_id", pa.string(), "Run that wrote this row", nullable=False),
        _f("created_at", _TS, "When this row was written", "UTC"),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        _f("sequence_sha256", pa.string(), "SHA-256 of the sequence", nullable=False),
        _f("model", pa.string(), "Model name", nullable=False),
        _f("sequence_length", pa.int64(), "Sequence length", "residues"),
        _f("accessions", pa.list_(pa.string()), "Accessions in this run that share the sequence"),
        _f("reason", pa.string(), "Failure reason code (docs/output.md)", nullable=False),
        _f("message", pa.string(), "Error message (exception text, tail)"),
        _f("batch_size", pa.int64(), "Batch size of the final attempt (1 = alone)"),
        _f("attempts", pa.int64(), "How many attempts were made"),
        _f("fold_route", pa.string(), "Fold pool of the final attempt: normal | chunked | oom_chunked | oom_fragment"),
        _f("unit_id", pa.string(), "Work unit"),
        _f("run_id", pa.string(), "Run that wrote this row", nullable=False),
        _f("created_at", _TS, "When this row was written", "UTC"),
    ]
)

MSAS_SCHEMA = pa.schema(
    [
        _f("msa_key", pa.string(), "SHA-256 of sequence key, database id and tool parameters", nullable=False),
        _f("sequence_sha256", pa.string(), "SHA-256 of the query sequence", nullable=False),
        _f("db_id", pa.string(), "Identity of the search database (foldatlas-msa-db.json)", nullable=False),
        _f("db_name", pa.string(), "Database name"),
        _f("tool", pa.string(), "mmseqs2 | hmmer", nullable=False),
        _f("tool_version", pa.string(), "Version of the search program"),
        _f("params", pa.string(), "Search parameters (JSON)"),
        _f("depth", pa.int64(), "Sequences in the MSA, query included", "sequences"),
        _f("neff", pa.float64(), "Effective number of sequences at 80% identity", "sequences"),
        _f("a3m", pa.large_string(), "The alignment in A3M format; first row is the query (zstd in Parquet)"),
        _f("search_seconds", pa.float64(), "Search wall time attributed to this query", "seconds"),
        _f("unit_id", pa.string(), "Work unit"),
        _f("run_id", pa.string(), "Run that wrote this row", nullable=False),
        _f("created_at", _TS, "When this row was written", "UTC"),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "entries": ENTRIES_SCHEMA,
    "structures": STRUCTURES_SCHEMA,
    "rejects": REJECTS_SCHEMA,
    "failures": FAILURES_SCHEMA,
    "msas": MSAS_SCHEMA,
}

FAILURE_REASONS: dict[str, str] = {
    "oom": "Out of memory, also when predicted alone with trunk chunking, and on every re-route the "
           "configuration allows (chunked long pool, fragments); the message lists the route taken",
    "model_error": "The model raised an exception, also when predicted alone",
    "non_finite_output": "The model returned NaN or infinite coordinates or confidences",
    "invalid_output": "The model returned no atoms, or pLDDT/pTM/PAE outside their ranges",
    "msa_error": "The MSA search failed after its retry (tool error or crash); message has the stderr tail",
    "worker_crashed": "The sequence killed its worker process (segfault, kill, host OOM) on every attempt, "
                      "also alone; attempts = ray.max_task_retries + 1 per pass",
}

# entries.fold_route and failures.fold_route (pipeline/oom_route.py)
FOLD_ROUTES: dict[str, str] = {
    "normal": "Folded in the normal pool",
    "chunked": "Folded in the chunked long pool because it is longer than long_sequences.chunked_above",
    "oom_chunked": "Ran out of memory in the normal pool; folded again in the chunked long pool",
    "oom_fragment": "A fragment F1..Fn of a sequence that ran out of memory whole (normal and, if configured, "
                    "chunked pool); fragment_of_sha256 is the whole sequence",
}


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()
