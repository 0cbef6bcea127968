"""Merging the real model: `soce merge` equals `mergekit-yaml` on one linear config, and `merge_into` on
a resident model equals the soup written to disk, with the tied embedding and head kept tied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from soce.checkpoints import Checkpoint
from soce.cli import app
from soce.merging.in_memory import load_experts, merge_into

pytestmark = pytest.mark.real
MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
WEIGHTS = (0.7, 0.3)
PROMPTS = ["The capital of France is", "Q: Is ice cold?\nA:", "Twinkle, twinkle, little star!"]
runner = CliRunner()


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no weights in {folder}"
    return out


def soce_merge(config: Path, out: Path, *args: str) -> Path:
    result = runner.invoke(app, ["merge", str(config), str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def merged(
    smollm2: Path, fine_tunes: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One mergekit linear config (the model 0.7, a fine-tune 0.3; float32) merged by mergekit-yaml and by
    `soce merge`, in float32 and in the inputs' bfloat16; mergekit runs beside our merges."""
    folder = tmp_path_factory.mktemp("merge")
    config = folder / "linear.yml"
    models = [
        {"model": str(p), "parameters": {"weight": w}}
        for p, w in zip((smollm2, fine_tunes[0]), WEIGHTS, strict=True)
    ]
    config.write_text(yaml.safe_dump({"models": models, "merge_method": "linear", "dtype": "float32"}))
    theirs = folder / "mergekit"
    proc = subprocess.Popen(
        [str(MERGEKIT_YAML), str(config), str(theirs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ours = soce_merge(config, folder / "soce-float32")
        ours_bf16 = soce_merge(config, folder / "soce-bfloat16", "--dtype", "bfloat16")
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    return {"config": config, "mergekit": theirs, "float32": ours, "bfloat16": ours_bf16}


def test_linear_merge_equals_mergekit(merged: dict[str, Path], smollm2: Path) -> None:
    ours, theirs = tensors(merged["float32"]), tensors(merged["mergekit"])
    # a tied head is stored once, as the embedding, by both
    assert set(ours) == set(theirs) == set(tensors(smollm2)) and "lm_head.weight" not in ours
    assert all(t.dtype == torch.float32 for t in [*ours.values(), *theirs.values()])
    diff = max(float((ours[n].double() - theirs[n].double()).abs().max()) for n in ours)
    print(f"soce merge vs mergekit-yaml, linear 0.7/0.3, float32: max abs diff {diff:.3g}")
    assert diff <= 1e-6  # both sum in float32; mergekit divides by the weight sum, we normalise first
    # in the inputs' dtype: mergekit's float32 soup rounded once to bfloat16, within one bfloat16 ulp
    ours16 = tensors(merged["bfloat16"])
    worst = differing = total = 0.0
    for name, t in ours16.items():
        assert t.dtype == torch.bfloat16
        a, b = t.double().numpy(), theirs[name].to(torch.bfloat16).double().numpy()
        d = np.abs(a - b)
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(a), 1e-30))) - 7)
        assert (d <= np.maximum(ulp, 1e-8)).all(), name
        worst, differing, total = max(worst, float(d.max())), differing + int((d > 0).sum()), total + d.size
    print(
        f"bfloat16 soup vs mergekit's rounded: max abs diff {worst:.3g}, {differing:.0f}/{total:.0f} differ"
    )
    assert differing / total < 1e-3


def test_merge_into_a_resident_model_equals_the_written_soup(
    merged: dict[str, Path], smollm2: Path, fine_tunes: list[Path]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpts = [Checkpoint.open(p) for p in (smollm2, fine_tunes[0])]
    try:
        experts = load_experts(ckpts)
    finally:
        for c in ckpts:
            c.close()
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype="auto").eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    merge_into(model, experts, list(WEIGHTS))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied: one tensor, merged once
    soup = tensors(merged["bfloat16"])
    params = dict(model.named_parameters())
    assert set(params) == set(soup)
    for name, p in params.items():
        assert torch.equal(p.detach(), soup[name]), name
    from_disk = AutoModelForCausalLM.from_pretrained(merged["bfloat16"], dtype="auto").eval()
    assert from_disk.lm_head.weight is from_disk.model.embed_tokens.weight
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        resident, written = model(**batch).logits, from_disk(**batch).logits
        base = AutoModelForCausalLM.from_pretrained(smollm2, dtype="auto").eval()(**batch).logits
    assert torch.equal(resident, written)
    assert not torch.equal(resident, base)  # the fine-tune's share moved the logits
