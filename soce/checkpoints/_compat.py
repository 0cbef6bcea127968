"""Can these candidates be averaged? Names, shapes, dtypes, architecture and tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soce.checkpoints._checkpoint import Checkpoint
from soce.checkpoints._dtypes import FLOAT_CODES, STORAGE, widen
from soce.checkpoints._hashing import tokenizer_hash
from soce.errors import IncompatibleCheckpointsError, NonFiniteTensorError

# config.json fields that must agree for weights to line up
ARCHITECTURE_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)
_SHOW = 5  # names listed in a message before "and N more"


@dataclass(frozen=True)
class Problem:
    kind: str  # names | shape | dtype | architecture | tokenizer
    message: str


@dataclass
class CompatibilityReport:
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_first(self) -> None:
        if self.problems:
            more = len(self.problems) - 1
            suffix = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
            raise IncompatibleCheckpointsError(self.problems[0].message + suffix)


def _listing(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def check_compatibility(candidates: Sequence[Checkpoint], *, same_dtype: bool = True) -> CompatibilityReport:
    """Compare every candidate with the first; problems come in the order they would bite."""
    report = CompatibilityReport()
    if len(candidates) < 2:
        return report
    ref = candidates[0]
    ref_tok = tokenizer_hash(ref)
    for other in candidates[1:]:
        missing = set(ref.tensors) - set(other.tensors)
        extra = set(other.tensors) - set(ref.tensors)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} tensor(s) missing: {_listing(list(missing))}")
            if extra:
                parts.append(f"{len(extra)} extra tensor(s): {_listing(list(extra))}")
            hint = ""
            if any(n.startswith("lm_head") for n in missing | extra):
                hint = " (one ties its input and output embeddings and the other does not?)"
            report.problems.append(
                Problem("names", f"{other.path} does not match {ref.path}: {'; '.join(parts)}{hint}")
            )
        for name, info in ref.tensors.items():
            o = other.tensors.get(name)
            if o is None:
                continue
            if o.shape != info.shape:
                report.problems.append(
                    Problem(
                        "shape",
                        f"tensor {name!r} has shape {list(o.shape)} in {other.path} "
                        f"but {list(info.shape)} in {ref.path}",
                    )
                )
            elif same_dtype and o.dtype != info.dtype:
                report.problems.append(
                    Problem(
                        "dtype",
                        f"tensor {name!r} is {o.dtype} in {other.path} but {info.dtype} in {ref.path}",
                    )
                )
        if ref.config is not None and other.config is not None:
            for key in ARCHITECTURE_FIELDS:
                a, b = ref.config.get(key), other.config.get(key)
                if a != b:
                    report.problems.append(
                        Problem(
                            "architecture",
                            f"config.json field {key!r} is {b!r} in {other.path} but {a!r} in {ref.path}",
                        )
                    )
        elif (ref.config is None) != (other.config is None):
            has, lacks = (ref, other) if other.config is None else (other, ref)
            report.problems.append(
                Problem("architecture", f"{lacks.path} has no config.json but {has.path} does")
            )
        tok = tokenizer_hash(other)
        if tok != ref_tok:
            report.problems.append(
                Problem(
                    "tokenizer",
                    f"tokenizer of {other.path} (hash {str(tok)[:12]}) differs from {ref.path} "
                    f"(hash {str(ref_tok)[:12]}); token ids would not mean the same thing",
                )
            )
    return report


def ensure_compatible(candidates: Sequence[Checkpoint], *, same_dtype: bool = True) -> None:
    """Raise IncompatibleCheckpointsError naming the first problem, if any."""
    check_compatibility(candidates, same_dtype=same_dtype).raise_first()


def scan_finite(ckpt: Checkpoint, chunk: int = 8 * 1024 * 1024) -> list[str]:
    """Names of float tensors that hold NaN or Inf."""
    bad = []
    for name, info in ckpt.tensors.items():
        if info.dtype not in FLOAT_CODES:
            continue
        raw = np.empty(min(chunk, info.numel), STORAGE[info.dtype])
        f32 = np.empty(raw.size, np.float32)
        start = 0
        while start < info.numel:
            n = min(chunk, info.numel - start)
            part = ckpt.read(name, start, raw[:n])
            if not np.isfinite(widen(part, info.dtype, f32[:n])).all():
                bad.append(name)
                break
            start += n
    return bad


def ensure_finite(ckpt: Checkpoint) -> None:
    bad = scan_finite(ckpt)
    if bad:
        raise NonFiniteTensorError(f"{ckpt.path}: NaN or Inf values in tensor(s) {_listing(bad)}")


def architecture_summary(ckpt: Checkpoint) -> dict[str, Any]:
    """The config fields that must agree for weights to line up, plus size facts for listings."""
    cfg = ckpt.config or {}
    fields = {k: cfg[k] for k in ARCHITECTURE_FIELDS if k in cfg}
    return {
        **fields,
        "dtype": ckpt.dtype,
        "num_parameters": ckpt.num_parameters,
        "num_tensors": len(ckpt.tensors),
    }
