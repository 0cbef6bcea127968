"""Can these candidates be averaged? Names, shapes, dtypes, architecture, computation settings and
tokenizer."""

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
# config.json fields that change what the same tensors compute, without changing any tensor's shape. The
# soup takes the first candidate's config.json, so a candidate that differs in one was fine-tuned (and
# scored) as another function of its weights: refused. max_position_embeddings is among them: it sets
# lm-eval's truncation and feeds rope scaling, so the soup would be scored unlike its ingredients.
# Not compared: bookkeeping (_name_or_path, transformers_version, dtype), token ids (the tokenizer check
# covers them), use_cache, dropout (off at evaluation) and pretraining_tp (the same sums, sliced).
# Rope settings are compared as one normalised set of parameters ("rope <name>", see _rope_facts).
COMPUTATION_FIELDS = (
    "head_dim",
    "hidden_act",
    "hidden_activation",
    "activation_function",
    "rms_norm_eps",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "norm_eps",
    "norm_epsilon",
    "attention_bias",
    "mlp_bias",
    "max_position_embeddings",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "logit_scale",
    "logits_scaling",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "scale_embedding",
    "use_qk_norm",
    "qk_layernorm",
    "num_experts_per_tok",
    "norm_topk_prob",
)
_SAME_ACTIVATION = {"swish": "silu"}  # names transformers maps to one function
_SHOW = 5  # names listed in a message before "and N more"


@dataclass(frozen=True)
class Problem:
    kind: str  # names | shape | dtype | architecture | config | tokenizer
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
                if key == "architectures" and isinstance(a, list) and isinstance(b, list):
                    a, b = sorted(map(str, a)), sorted(map(str, b))  # one model, listed in any order
                if a != b:
                    report.problems.append(
                        Problem(
                            "architecture",
                            f"config.json field {key!r} is {b!r} in {other.path} but {a!r} in {ref.path}",
                        )
                    )
            for key, a, b in computation_differences(ref.config, other.config):
                report.problems.append(
                    Problem(
                        "config",
                        f"config.json {key} is {b!r} in {other.path} but {a!r} in {ref.path}: the same "
                        "weights compute different outputs under each, so they cannot share one soup",
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


def computation_differences(ref: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, value in `ref`, value in `other`) for each COMPUTATION_FIELDS field and rope parameter the
    two configs set differently.

    A field only one config states is not compared: its default depends on the model class, which
    only transformers knows (and model_type must agree anyway).
    """
    out: list[tuple[str, Any, Any]] = []
    windowless = ref.get("use_sliding_window") is False and other.get("use_sliding_window") is False
    for key in COMPUTATION_FIELDS:
        if key not in ref or key not in other:
            continue
        if windowless and key in ("sliding_window", "max_window_layers"):
            continue  # unused while sliding-window attention is off (Qwen2 keeps a size there)
        a, b = ref[key], other[key]
        if isinstance(a, str) and isinstance(b, str):
            a, b = _SAME_ACTIVATION.get(a, a), _SAME_ACTIVATION.get(b, b)
        if a != b:
            out.append((f"field {key!r}", ref[key], other[key]))
    rope_a, rope_b = _rope_facts(ref), _rope_facts(other)
    for name in sorted(set(rope_a) & set(rope_b)):
        if rope_a[name] != rope_b[name]:
            out.append((f"rope parameter {name!r}", rope_a[name], rope_b[name]))
    return out


def _rope_facts(config: dict[str, Any]) -> dict[str, Any]:
    """The rope parameters a config states, one flat dict whichever way it writes them: transformers 5's
    `rope_parameters` (per layer type, for some models), or transformers 4's `rope_theta`,
    `rope_scaling` (its `type` is `rope_type`) and `partial_rotary_factor`.

    Stating `rope_parameters` or `rope_scaling` (even null) states the rope type ("default": unscaled).
    """
    given = [config[k] for k in ("rope_scaling", "rope_parameters") if k in config]
    merged: dict[str, Any] = {}
    for value in given:
        if isinstance(value, dict):
            merged.update(value)
    top = {k: config[k] for k in ("rope_theta", "partial_rotary_factor") if config.get(k) is not None}
    if merged and all(isinstance(v, dict) for v in merged.values()):  # {"full_attention": {...}, ...}
        return {
            f"{layer}.{k}": v
            for layer, params in merged.items()
            for k, v in _rope_params(params, top, typed=True).items()
        }
    return _rope_params(merged, top, typed=bool(given))


def _rope_params(params: dict[str, Any], top: dict[str, Any], *, typed: bool) -> dict[str, Any]:
    out = {**top, **{k: v for k, v in params.items() if k != "type"}}
    kind = params.get("rope_type") or params.get("type")
    if kind is not None or typed:
        out["rope_type"] = kind or "default"
    return out


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
