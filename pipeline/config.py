"""Run configuration: one typed, validated pydantic model loaded from TOML and flags.

Precedence: built-in defaults < preset/TOML file (``--config``) < command-line flags. The resolved
config is saved with each run (``<atlas>/_runs/<run_id>/config.json``) and its hash is part of
every artifact's provenance.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.confidence import ConfidencePolicy
from pipeline.errors import ConfigError
from pipeline.ingest import IngestPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    name: Literal["esmfold", "esmfold-tiny"] = "esmfold"
    weights: str | None = Field(None, description="Local HF directory or s3:// prefix with the weights")
    weights_sha256: str | None = Field(None, description="Expected SHA-256 of the weights directory")
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "fp16-lm", "bf16", "bf16-lm", "bf16-full"] = Field(
        "auto", description="auto: fp32 on CPU, fp16 language model on GPU (docs/benchmarks.md)")
    fast_path: bool = Field(False, description="ESMFold fast path: SDPA LM, memory-sized length buckets, "
                                               "pinned transfers, overlapped post-processing")
    num_recycles: int | None = Field(None, ge=0)
    chunk_size: int | None = Field(None, ge=1)


class PlanConfig(_Strict):
    unit_max_residues: int = Field(8000, ge=1, description="Residues per work unit (= per shard)")
    unit_max_sequences: int = Field(1000, ge=1)
    max_tokens_per_batch: int | None = Field(
        None, ge=1, description="Padded tokens per model batch; default 512 on CPU, 8192 on GPU")
    max_batch_size: int = Field(64, ge=1)
    memory_limit: str = Field("1.5GB", pattern=r"^[0-9.]+ ?[KMGT]i?B$",
                              description="DuckDB memory limit of ingest's duplicate check and of planning; "
                                          "beyond it DuckDB spills to the run's scratch directory")
    ingest_workers: int | None = Field(
        None, ge=1, description="Processes scanning big plain FASTA files in byte ranges; default: min(2, cores)")
    reuse_models: list[str] = Field(
        default_factory=lambda: ["alphafold-db-*", "colabfold", "esmfold-import"],
        description="Structures of these models (names or shell patterns) are reused for identical sequences "
                    "instead of predicting them; [] predicts everything (see pipeline/reuse.py)")


class MSAConfig(_Strict):
    tool: Literal["none", "mmseqs2", "hmmer"] = Field(
        "none", description="MSA search; none skips the stage (ESMFold does not use MSAs)")
    db: str | None = Field(None, description="Database directory made by `foldatlas msa-db build`")
    iterations: int | None = Field(None, ge=1, description="Search iterations (default: the tool's, see docs)")
    evalue: float | None = Field(None, gt=0)
    sensitivity: float | None = Field(None, gt=0, description="mmseqs -s")
    max_seqs: int | None = Field(None, ge=1, description="Maximum hits per query")
    threads: int = Field(1, ge=1, description="Threads per MSA actor")
    actors: int = Field(1, ge=1)
    cpus: float = Field(0.5, gt=0, description="CPUs reserved per MSA actor")
    retries: int = Field(1, ge=0, description="Retries of a crashed search before failure rows")
    units_per_search: int = Field(
        1, ge=1, description="Work units searched together in one tool call: larger searches amortise "
                             "MMseqs2's start-up and index loading (ColabFold searches everything at once)")


class RayConfig(_Strict):
    address: str | None = Field(
        None, description="Ray cluster address; None starts a local Ray; ray://HOST:10001 runs the driver on the "
                          "cluster through Ray Client (pipeline/remote.py)")
    client_ship_max_mb: float = Field(
        256.0, ge=0, description="With a ray:// address: input files the cluster cannot read at the same path are "
                                 "shipped through Ray's object store up to this size (MiB) each")
    fold_actors: int = Field(1, ge=1)
    fold_cpus: float = Field(1.0, gt=0, description="CPUs per fold actor (GPU runs: per GPU actor)")
    fold_gpus: float | None = Field(None, ge=0, description="GPUs per fold actor; None: 1 if GPUs exist")
    fold_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per fold actor, e.g. {h100 = 1} to keep folding "
                                           "on nodes started with --resources '{\"h100\": 8}'")
    cpu_stage_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per MSA and write actor (CPU node groups)")
    write_actors: int = Field(1, ge=1)
    write_cpus: float = Field(0.5, gt=0)
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per fold actor; default: the node's cores / fold_actors")
    max_task_retries: int = Field(
        2, ge=0, description="Retries of a unit whose worker process died (actors are restarted); then the "
                             "unit is split into single sequences and tried again, then failure rows")
    progress_log_s: float = Field(
        60.0, gt=0, description="Without a terminal (Ray job, nohup), seconds between progress log lines")
    progress_interval_s: float = Field(
        2.0, gt=0, description="Seconds between per-stage progress samples (bars, run timeline)")


class LongSequenceConfig(_Strict):
    """Long sequences fold in their own actor pool: trunk chunking and a smaller batch budget."""

    chunked_above: int | None = Field(
        None, ge=1, description="Sequences longer than this fold in the long pool (None: one pool for all)")
    chunk_size: int = Field(32, ge=1, description="Trunk chunk size in the long pool (lower: less memory)")
    actors: int = Field(1, ge=1, description="Fold actors in the long pool")
    max_tokens_per_batch: int = Field(2048, ge=1, description="Padded tokens per model call: the pool's "
                                                                "activation-memory budget per actor")
    memory_gb: float | None = Field(None, gt=0, description="Host memory Ray reserves per long-pool actor")


class RunConfig(_Strict):
    model: ModelConfig = ModelConfig()
    ingest: IngestPolicy = IngestPolicy()
    plan: PlanConfig = PlanConfig()
    confidence: ConfidencePolicy = ConfidencePolicy()
    msa: MSAConfig = MSAConfig()
    ray: RayConfig = RayConfig()
    long_sequences: LongSequenceConfig = LongSequenceConfig()
    is_reference_proteome: bool | None = Field(
        None, description="Value for entries.isReferenceProteome (unknown from FASTA alone)"
    )

    def config_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the TOML file, then ``overrides`` (nested dict of flag values, None = unset)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"Config file {path} not found") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"Config file {path} is not valid TOML: {e}") from e
    clean = {k: {kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v
             for k, v in (overrides or {}).items() if v is not None}
    data = _deep_merge(data, clean)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"Invalid configuration:\n{e}", hint="See docs/configuration.md for every key.") from e


def dump_config(cfg: RunConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
