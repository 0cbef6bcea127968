"""`soce demo`: build example checkpoints, merge them with every method, load each soup back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from soce.merging import write_soup
from soce.schemas.merge import MergeRecipe
from soce.zoo import LlamaShape, make_related_checkpoints

SHAPE = LlamaShape(hidden=64, layers=4, intermediate=128)
TEXT = "The quick brown fox jumps over the lazy dog. 12 + 30 = 42."


def _recipes(cands: list[str], base: str) -> dict[str, MergeRecipe]:
    weights = [0.4, 0.3, 0.2, 0.1]
    linear = [{"path": p, "weight": w} for p, w in zip(cands, weights, strict=True)]
    return {
        "uniform": MergeRecipe(method="uniform", candidates=cands),
        "linear": MergeRecipe(method="linear", candidates=linear),
        "layerwise": MergeRecipe(
            method="layerwise",
            candidates=cands,
            parameters={"groups": 2, "embed": [1, 1, 1, 1], "blocks": [[4, 3, 2, 1], [1, 2, 3, 4]]},
        ),
        "task_arithmetic": MergeRecipe(method="task_arithmetic", candidates=linear, base=base),
        "ties": MergeRecipe(method="ties", candidates=linear, base=base, parameters={"density": 0.5}),
        "dare": MergeRecipe(
            method="dare", candidates=linear, base=base, parameters={"density": 0.5, "seed": 1}
        ),
    }


def _loss(folder: Path, text: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def run_demo(out: Path, *, quiet: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for a hub
    out = out.resolve()
    ckpt_root = out / "checkpoints"
    if not (ckpt_root / "base" / "config.json").is_file():
        typer.echo(f"building 4 related example checkpoints and their base in {ckpt_root} ...")
        make_related_checkpoints(ckpt_root, n=4, shape=SHAPE, with_base=True, seed=0)
    cands = [str(ckpt_root / f"candidate-{k}") for k in range(4)]
    base = str(ckpt_root / "base")
    rows = []
    for name, recipe in _recipes(cands, base).items():
        started = time.perf_counter()
        soup = write_soup(recipe, out / "soups" / name, force=True)
        seconds = time.perf_counter() - started
        rows.append((name, seconds, soup.nbytes, _loss(soup.path, TEXT), soup.mergekit_config))
    typer.echo("\nThe example checkpoints are random perturbations of one base, so losses only show that")
    typer.echo("each soup loads with transformers and runs; real category scores come from the zoo.\n")
    typer.echo(f"{'soup':18s}{'seconds':>9s}{'MB':>8s}{'loss':>9s}  mergekit replay")
    for k, c in enumerate(cands):
        typer.echo(f"{'candidate-' + str(k):18s}{'':>9s}{'':>8s}{_loss(Path(c), TEXT):9.4f}")
    for name, seconds, nbytes, loss, mk in rows:
        typer.echo(f"{name:18s}{seconds:9.2f}{nbytes / 1e6:8.2f}{loss:9.4f}  {'yes' if mk else 'no'}")
    typer.echo(f"\nsoups written under {out / 'soups'}; each has a README.md model card, soce_recipe.yml and")
    typer.echo("mergekit_config.yml. Merge your own: soce merge RECIPE.yml OUT")
