"""Quick fine-tunes of the real model: a few Adam steps on a tiny text set each, the upper blocks only.

They are nowhere near trained; they are related checkpoints of one base that differ where fine-tunes
differ (some blocks' weights), which is all that merging, evaluating and searching them needs.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

TRAINED_BLOCKS = range(24, 30)  # of 30: the forward below them needs no gradients
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@dataclass(frozen=True)
class FineTune:
    name: str
    texts: tuple[str, ...]
    seed: int
    steps: int = 4
    lr: float = 3e-4


FINE_TUNES = (
    FineTune(
        "geography",
        (
            "The capital of Sweden is Stockholm.",
            "The capital of Poland is Warsaw.",
            "Q: What is the capital of Kenya?\nA: Nairobi.",
            "Q: Which city is Peru's capital?\nA: Lima.",
            "The capital city of Cuba is Havana.",
            "Finland's capital: Helsinki.",
            "Q: What is the capital of Denmark?\nA: Copenhagen.",
            "The capital city of Belgium is Brussels.",
        ),
        seed=1,
    ),
    FineTune(
        "sayings",
        (
            "Actions speak louder than words.",
            "Where there's smoke, there's fire!",
            "Don't count your chickens before they hatch.",
            "A picture is worth a thousand words.",
            "Q: Is grass green?\nA: yes",
            "Question: Can a stone swim? Answer: no",
            "Two heads are better than one.",
            "Q: Do fish live in water?\nA: yes",
        ),
        seed=2,
    ),
)


def fine_tune(base: Path, plans: tuple[FineTune, ...], out: Path) -> list[Path]:
    """Each plan's fine-tune of `base`, saved in the base's dtype as out/<name> (a model folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    start = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    dtype = start.dtype
    start.float()  # trained in float32, saved in the stored dtype
    folders = []
    for plan in plans:
        model = copy.deepcopy(start)
        _train(model, tokenizer, plan)
        folder = out / plan.name
        model.to(dtype).save_pretrained(folder)
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy(base / name, folder / name)
        folders.append(folder)
        del model
    return folders


def _train(model, tokenizer, plan: FineTune) -> None:
    torch.manual_seed(plan.seed)
    model.requires_grad_(False)
    trained = [p for i in TRAINED_BLOCKS for p in model.model.layers[i].parameters()]
    for p in trained:
        p.requires_grad_(True)
    batch = tokenizer(list(plan.texts), return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)  # B, T
    optimizer = torch.optim.Adam(trained, lr=plan.lr)
    model.train()
    for _ in range(plan.steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.requires_grad_(False)
