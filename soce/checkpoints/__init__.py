"""Candidate checkpoints: lazy safetensors IO, compatibility checks and content hashes."""

from soce.checkpoints._checkpoint import TOKENIZER_FILES, Checkpoint
from soce.checkpoints._compat import (
    ARCHITECTURE_FIELDS,
    COMPUTATION_FIELDS,
    CompatibilityReport,
    Problem,
    architecture_summary,
    check_compatibility,
    ensure_compatible,
    ensure_finite,
    scan_finite,
)
from soce.checkpoints._dtypes import CODE_TO_NAME, FLOAT_CODES, code_for
from soce.checkpoints._hashing import DigestCache, checkpoint_hash, content_hash, default_digest_cache
from soce.checkpoints._safetensors import SafetensorsFile, TensorInfo, save_file

__all__ = [
    "ARCHITECTURE_FIELDS",
    "CODE_TO_NAME",
    "COMPUTATION_FIELDS",
    "FLOAT_CODES",
    "TOKENIZER_FILES",
    "Checkpoint",
    "CompatibilityReport",
    "DigestCache",
    "Problem",
    "SafetensorsFile",
    "TensorInfo",
    "architecture_summary",
    "check_compatibility",
    "checkpoint_hash",
    "code_for",
    "content_hash",
    "default_digest_cache",
    "ensure_compatible",
    "ensure_finite",
    "save_file",
    "scan_finite",
]
