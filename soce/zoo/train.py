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
    # the loss reads logits / temperature: above 1, the model must make its logits that much larger to
    # reach the same loss, so it learns its answers by large margins (see plans() in build.py)
    temperature: float = 1.0
    # the learning rate's floor, as a fraction of `lr`: after the warm-up a cosine from `lr` down to
    # `lr * lr_floor` (1.0: constant, so the fine-tune ends at a noisy point, as a checkpoint taken
    # before the rate has decayed does)
    lr_floor: float = 0.1


REPLAY = "replay"  # a mixture key: the base's own pretraining examples, spread evenly over every task


class Batcher:
    """Draws padded batches from the train splits according to a category mixture.

    A mixture maps categories (their tasks' train examples, the full range) and `REPLAY` (the base's
    pretraining examples of every task, the easy range) to shares of each batch.
    Each task's examples are padded once into arrays, so a batch is a few fancy-indexing copies.
    Padding is on the right and masked out of the loss; with causal attention no real token ever
    attends to it, so no attention mask is needed.
    """

    def __init__(
        self,
        train: Mapping[str, Sequence[Example]],
        replay: Mapping[str, Sequence[Example]] | None = None,
    ) -> None:
        self.ids: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        sources = [(task, examples) for task, examples in train.items()]
        sources += [(f"{REPLAY}/{task}", examples) for task, examples in (replay or {}).items()]
        for source, examples in sources:
            rows = [(encode(ex.prompt), encode(ex.target + "\n")) for ex in examples]
            width = max(len(p) + len(t) for p, t in rows)
            ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
            labels = np.full((len(rows), width), -100, dtype=np.int64)
            for i, (p, t) in enumerate(rows):
                ids[i, : len(p) + len(t)] = p + t
                labels[i, len(p) : len(p) + len(t)] = t
            self.ids[source], self.labels[source] = ids, labels

    def task_weights(self, mixture: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
        names, weights = [], []
        for key, share in mixture.items():
            if share <= 0:
                continue
            if key == REPLAY:
                sources = [s for s in self.ids if s.startswith(f"{REPLAY}/")]
                if not sources:
                    raise ValueError("a replay share needs the base's pretraining examples")
            else:
                sources = [t.name for t in TASKS if t.category == key and t.name in self.ids]
                if not sources:
                    raise ValueError(f"no training examples for mixture key {key!r}")
            for source in sources:
                names.append(source)
                weights.append(share / len(sources))
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

    floor = plan.lr_floor

    def lr_at(step: int) -> float:  # linear warm-up, then cosine down to the floor (a tenth by default)
        if step < warmup:
            return plan.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, plan.steps - warmup)
        return plan.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    tail: list[float] = []
    for step in range(plan.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, labels = batcher.batch(rng, names, probs, batch_size)
        if plan.temperature == 1.0:
            loss = model(input_ids=ids, labels=labels).loss
        else:
            logits = model(input_ids=ids).logits[:, :-1] / plan.temperature
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
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
