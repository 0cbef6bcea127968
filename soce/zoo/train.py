"""Training the zoo's models on CPU: one pretrained base, then gentle fine-tunes from it.

Examples are `prompt + target + "\\n"` in the character vocabulary; the loss covers the target
and the newline only, which is what lm-eval scores (the log-likelihood of a choice after the
prompt, or the text generated until a newline).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from soce.zoo.tasks import TASKS, Example
from soce.zoo.tokenizer import CHARACTERS, SPECIALS

PAD_ID = 0
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + list(CHARACTERS))}


def encode(text: str) -> list[int]:
    """Token ids exactly as the saved character tokenizer gives them."""
    return [VOCAB[c] for c in text]


@dataclass(frozen=True)
class TrainPlan:
    """How one model is trained: category mixture, steps, learning rate and seed."""

    name: str
    mixture: Mapping[str, float]  # category -> share of training examples
    steps: int
    lr: float
    seed: int
    description: str = ""


class Batcher:
    """Draws padded batches from the train splits according to a category mixture.

    Each task's examples are padded once into arrays, so a batch is a few fancy-indexing copies.
    Padding is on the right and masked out of the loss; with causal attention no real token ever
    attends to it, so no attention mask is needed.
    """

    def __init__(self, train: Mapping[str, Sequence[Example]]) -> None:
        self.ids: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        for task, examples in train.items():
            rows = [(encode(ex.prompt), encode(ex.target + "\n")) for ex in examples]
            width = max(len(p) + len(t) for p, t in rows)
            ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
            labels = np.full((len(rows), width), -100, dtype=np.int64)
            for i, (p, t) in enumerate(rows):
                ids[i, : len(p) + len(t)] = p + t
                labels[i, len(p) : len(p) + len(t)] = t
            self.ids[task], self.labels[task] = ids, labels

    def task_weights(self, mixture: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
        names, weights = [], []
        for cat, share in mixture.items():
            tasks = [t.name for t in TASKS if t.category == cat and t.name in self.ids]
            for t in tasks:
                names.append(t)
                weights.append(share / len(tasks))
        w = np.array(weights, dtype=np.float64)
        return names, w / w.sum()

    def batch(self, rng: np.random.Generator, names: list[str], probs: np.ndarray, size: int):
        import torch

        picks = rng.choice(len(names), size=size, p=probs)
        width = max(self.ids[names[k]].shape[1] for k in set(picks.tolist()))
        ids = np.full((size, width), PAD_ID, dtype=np.int64)
        labels = np.full((size, width), -100, dtype=np.int64)
        for k in np.unique(picks):
            rows = np.flatnonzero(picks == k)
            pool_ids, pool_labels = self.ids[names[k]], self.labels[names[k]]
            chosen = rng.integers(len(pool_ids), size=rows.size)
            ids[rows, : pool_ids.shape[1]] = pool_ids[chosen]
            labels[rows, : pool_labels.shape[1]] = pool_labels[chosen]
        return torch.from_numpy(ids), torch.from_numpy(labels)


def train(
    model,
    batcher: Batcher,
    plan: TrainPlan,
    *,
    batch_size: int,
    tick: Callable[[int], None] | None = None,
) -> float:
    """Train `model` in place following `plan`; returns the mean loss of the last 10% of steps."""
    import torch

    torch.manual_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    names, probs = batcher.task_weights(plan.mixture)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, plan.steps // 10)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine down to a tenth
        if step < warmup:
            return plan.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, plan.steps - warmup)
        return plan.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    tail: list[float] = []
    for step in range(plan.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, labels = batcher.batch(rng, names, probs, batch_size)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= plan.steps * 0.9:
            tail.append(float(loss.detach()))
        if tick is not None:
            tick(1)
    model.eval()
    return float(np.mean(tail)) if tail else float("nan")
