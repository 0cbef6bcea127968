"""Compatibility of candidates: names, shapes, dtypes, architecture fields, tokenizer, tied embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soce.checkpoints import (
    ARCHITECTURE_FIELDS,
    COMPUTATION_FIELDS,
    Checkpoint,
    check_compatibility,
    ensure_compatible,
    ensure_finite,
    save_file,
    scan_finite,
)
from soce.errors import IncompatibleCheckpointsError, NonFiniteTensorError
from tests.checkpoints.editing import edit_json, rewrite_weights


def report_for(*folders: Path):
    ckpts = [Checkpoint.open(f) for f in folders]
    try:
        return check_compatibility(ckpts), ckpts
    finally:
        for c in ckpts:
            c.close()


def test_related_checkpoints_are_compatible(make_checkpoints) -> None:
    folders = make_checkpoints(3)
    report, ckpts = report_for(*folders)
    assert report.ok
    assert report.problems == []
    ensure_compatible(ckpts)  # does not raise


def test_sharded_and_unsharded_are_compatible(make_checkpoints) -> None:
    (a,) = make_checkpoints(1)
    (b,) = make_checkpoints(1, shard_size=20_000, seed=3)
    report, _ = report_for(a, b)
    assert report.ok, report.problems


def test_one_candidate_is_trivially_compatible(make_checkpoints) -> None:
    (a,) = make_checkpoints(1)
    report, _ = report_for(a)
    assert report.ok


def test_missing_tensor_is_named(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    rewrite_weights(b, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    report, ckpts = report_for(a, b)
    assert not report.ok
    (problem,) = report.problems
    assert problem.kind == "names"
    assert "missing" in problem.message
    assert "model.layers.1.mlp.up_proj.weight" in problem.message
    assert str(b) in problem.message and str(a) in problem.message
    with pytest.raises(IncompatibleCheckpointsError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        ensure_compatible(ckpts)


def test_extra_tensor_is_named(make_checkpoints) -> None:
    a, b = make_checkpoints(2)

    def add(t: dict[str, np.ndarray]) -> None:
        t["model.extra_adapter.weight"] = np.zeros((4, 4), np.float32)

    rewrite_weights(b, add)
    report, _ = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "names"
    assert "extra" in problem.message
    assert "model.extra_adapter.weight" in problem.message
    assert "tie" not in problem.message  # the tie hint is only for lm_head


def test_many_missing_tensors_are_summarised(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    dropped = [f"model.layers.{i}.{p}.weight" for i in (0, 1) for p in ("self_attn.q_proj", "mlp.up_proj")]
    dropped += [
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]

    def drop(t: dict[str, np.ndarray]) -> None:
        for name in dropped:
            del t[name]

    rewrite_weights(b, drop)
    report, _ = report_for(a, b)
    (problem,) = report.problems
    assert f"{len(dropped)} tensor(s) missing" in problem.message
    assert f"and {len(dropped) - 5} more" in problem.message


def test_shape_mismatch_names_tensor_and_both_shapes(make_checkpoints) -> None:
    a, b = make_checkpoints(2)

    def shrink(t: dict[str, np.ndarray]) -> None:
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:8].copy()

    rewrite_weights(b, shrink)
    report, ckpts = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "shape"
    assert "'model.layers.0.self_attn.k_proj.weight'" in problem.message
    assert "[8, 32]" in problem.message
    assert "[16, 32]" in problem.message
    with pytest.raises(IncompatibleCheckpointsError, match=r"\[8, 32\]"):
        ensure_compatible(ckpts)


def test_dtype_mismatch_names_a_tensor(make_checkpoints) -> None:
    (f32,) = make_checkpoints(1)
    (bf16,) = make_checkpoints(1, dtype="bfloat16")
    report, ckpts = report_for(f32, bf16)
    assert not report.ok
    assert {p.kind for p in report.problems} == {"dtype"}
    first = report.problems[0].message
    assert "'model.embed_tokens.weight'" in first
    assert "BF16" in first and "F32" in first
    with pytest.raises(IncompatibleCheckpointsError, match=r"model\.embed_tokens\.weight.*more problems"):
        ensure_compatible(ckpts)
    # the engine widens everything to float32, so dtypes may differ when the caller says so
    assert check_compatibility(ckpts, same_dtype=False).ok
    ensure_compatible(ckpts, same_dtype=False)


@pytest.mark.parametrize(
    ("field", "value"), [("num_hidden_layers", 3), ("model_type", "mistral"), ("vocab_size", 101)]
)
def test_architecture_field_difference_is_named(make_checkpoints, field: str, value) -> None:
    assert field in ARCHITECTURE_FIELDS
    a, b = make_checkpoints(2)
    edit_json(b / "config.json", lambda c: c.__setitem__(field, value))
    report, ckpts = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "architecture"
    assert f"'{field}'" in problem.message
    assert repr(value) in problem.message
    with pytest.raises(IncompatibleCheckpointsError, match=field):
        ensure_compatible(ckpts)


def test_non_architecture_config_fields_do_not_matter(make_checkpoints) -> None:
    a, b = make_checkpoints(2)

    def cosmetic(c: dict) -> None:
        c["_name_or_path"] = "/somewhere/else"
        c["transformers_version"] = "9.9.9"

    edit_json(b / "config.json", cosmetic)
    report, _ = report_for(a, b)
    assert report.ok, report.problems


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rms_norm_eps", 1e-3),
        ("hidden_act", "gelu"),
        ("max_position_embeddings", 4096),
        ("attention_bias", True),
        ("sliding_window", 16),
        ("head_dim", 64),
    ],
)
def test_a_field_that_changes_the_computation_is_refused(make_checkpoints, field: str, value) -> None:
    assert field in COMPUTATION_FIELDS
    a, b = make_checkpoints(2)
    before = json.loads((a / "config.json").read_text())
    before.setdefault(field, None)  # a field only one config states is not compared: state it in both
    edit_json(a / "config.json", lambda c: c.__setitem__(field, before[field]))
    edit_json(b / "config.json", lambda c: c.__setitem__(field, value))
    report, ckpts = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "config"
    for needle in (f"'{field}'", repr(value), repr(before[field]), str(a), str(b)):
        assert needle in problem.message
    with pytest.raises(IncompatibleCheckpointsError, match=field):
        ensure_compatible(ckpts)


def test_rope_parameters_are_compared_however_the_config_writes_them(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    rope = {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}
    edit_json(a / "config.json", lambda c: c.update(rope))
    edit_json(b / "config.json", lambda c: c.update(rope_theta=500000.0, rope_scaling=None))
    report, _ = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "config" and "rope parameter 'rope_theta'" in problem.message
    assert "500000.0" in problem.message and "10000.0" in problem.message
    # transformers 4's rope_theta and rope_scaling state what transformers 5's rope_parameters state
    edit_json(b / "config.json", lambda c: c.update(rope_theta=10000.0))
    assert report_for(a, b)[0].ok
    edit_json(b / "config.json", lambda c: c.update(rope_scaling={"type": "linear", "factor": 2.0}))
    (problem,) = report_for(a, b)[0].problems  # rope_scaling's `type` is rope_parameters' rope_type
    assert "rope parameter 'rope_type'" in problem.message and "'linear'" in problem.message
    # per layer type (transformers 5, e.g. Gemma 3)
    layered = {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}
    edit_json(a / "config.json", lambda c: c.update(rope_parameters=layered))
    other = {**layered, "sliding_attention": {"rope_theta": 2e4}}
    edit_json(b / "config.json", lambda c: (c.pop("rope_scaling"), c.update(rope_parameters=other)))
    (problem,) = report_for(a, b)[0].problems
    assert "'sliding_attention.rope_theta'" in problem.message


def test_bookkeeping_and_equivalent_settings_do_not_matter(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    edit_json(a / "config.json", lambda c: c.update(hidden_act="silu", architectures=["A", "B"]))

    def bookkeeping(c: dict) -> None:
        c.update(
            _name_or_path="/elsewhere",
            transformers_version="4.57.0",
            dtype="bfloat16",
            torch_dtype="bfloat16",
            use_cache=False,
            bos_token_id=7,
            hidden_act="swish",  # the same function as silu
            architectures=["B", "A"],
            attention_dropout=0.1,
        )
        c.pop("rms_norm_eps", None)  # stated in one config only: its class default, unknown here

    edit_json(b / "config.json", bookkeeping)
    edit_json(a / "config.json", lambda c: c.update(rms_norm_eps=1e-5))
    report, _ = report_for(a, b)
    assert report.ok, report.problems
    # Qwen2 keeps a window size while sliding-window attention is off
    edit_json(a / "config.json", lambda c: c.update(use_sliding_window=False, sliding_window=4096))
    edit_json(b / "config.json", lambda c: c.update(use_sliding_window=False, sliding_window=32768))
    assert report_for(a, b)[0].ok


def test_missing_config_on_one_side(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    (b / "config.json").unlink()
    report, _ = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "architecture"
    assert "no config.json" in problem.message
    assert str(b) in problem.message


def test_tokenizer_difference(make_checkpoints) -> None:
    a, b = make_checkpoints(2)

    def rename_token(tok: dict) -> None:
        vocab = tok["model"]["vocab"]
        vocab["é"] = vocab.pop("a")  # same id, different string

    edit_json(b / "tokenizer.json", rename_token)
    report, ckpts = report_for(a, b)
    (problem,) = report.problems
    assert problem.kind == "tokenizer"
    assert str(b) in problem.message
    with pytest.raises(IncompatibleCheckpointsError, match="tokenizer"):
        ensure_compatible(ckpts)


def test_reformatted_tokenizer_json_is_the_same_tokenizer(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    path = b / "tokenizer.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=7, sort_keys=True))
    report, _ = report_for(a, b)
    assert report.ok, report.problems


def test_missing_tokenizer_file_is_a_difference(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    (b / "tokenizer.json").unlink()
    report, _ = report_for(a, b)
    assert [p.kind for p in report.problems] == ["tokenizer"]


def test_tied_vs_untied_mentions_tie_hint(make_checkpoints) -> None:
    (untied,) = make_checkpoints(1)
    (tied,) = make_checkpoints(1, tied=True)
    report, ckpts = report_for(untied, tied)
    kinds = [p.kind for p in report.problems]
    assert kinds[0] == "names"
    first = report.problems[0].message
    assert "lm_head.weight" in first
    assert "ties its input and output embeddings" in first
    assert any(p.kind == "architecture" and "tie_word_embeddings" in p.message for p in report.problems)
    with pytest.raises(IncompatibleCheckpointsError, match="ties its input and output embeddings"):
        ensure_compatible(ckpts)


def test_every_candidate_is_compared_with_the_first(make_checkpoints) -> None:
    a, b, c = make_checkpoints(3)
    edit_json(c / "config.json", lambda cfg: cfg.__setitem__("hidden_size", 64))
    report, _ = report_for(a, b, c)
    (problem,) = report.problems
    assert str(c) in problem.message
    assert "'hidden_size'" in problem.message


# --- finiteness ------------------------------------------------------------------------------------


def test_scan_finite_clean(make_checkpoints) -> None:
    (a,) = make_checkpoints(1)
    with Checkpoint.open(a) as ckpt:
        assert scan_finite(ckpt) == []
        ensure_finite(ckpt)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_scan_finite_finds_tensor_by_name(make_checkpoints, bad: float) -> None:
    (a,) = make_checkpoints(1)

    def poison(t: dict[str, np.ndarray]) -> None:
        t["model.layers.1.mlp.gate_proj.weight"].reshape(-1)[-1] = bad

    rewrite_weights(a, poison)
    with Checkpoint.open(a) as ckpt:
        assert scan_finite(ckpt) == ["model.layers.1.mlp.gate_proj.weight"]
        # small chunks: the bad value is in the last chunk of the tensor
        assert scan_finite(ckpt, chunk=100) == ["model.layers.1.mlp.gate_proj.weight"]
        with pytest.raises(NonFiniteTensorError, match=r"model\.layers\.1\.mlp\.gate_proj\.weight") as e:
            ensure_finite(ckpt)
        assert str(a) in str(e.value)


def test_scan_finite_bfloat16_nan_and_skips_integer_tensors(tmp_path: Path) -> None:
    bits = np.full(10, 0x3F80, np.uint16)  # 1.0 in bfloat16
    bits[4] = 0x7FC0  # NaN
    path = tmp_path / "x.safetensors"
    save_file(
        {"ok": np.ones(3, np.float32), "bf": bits, "ids": np.array([2**62, -1], np.int64)},
        path,
        dtypes={"bf": "BF16"},
    )
    with Checkpoint.open(path) as ckpt:
        assert scan_finite(ckpt, chunk=3) == ["bf"]
