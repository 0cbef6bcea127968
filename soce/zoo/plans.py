"""The reference zoo's sizes, pools and training plans: what `soce zoo build` trains, and from what.

A pool is a set of candidates fine-tuned from the instruct model, each with its own mixture of
categories; `default` is broad constant-learning-rate fine-tunes where souping helps, `gentle` one
where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from soce.zoo.tasks import CATEGORIES
from soce.zoo.train import REPLAY, TrainPlan

ZOO_VERSION = 7  # 5: the base learns easy ranges only; 6: an instruct model, replay, pools;
# 7: the default pool: broad fine-tunes at a constant learning rate (noisy endpoints)

POOLS: tuple[str, ...] = ("default", "gentle")


@dataclass(frozen=True)
class ZooSize:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    batch: int
    base_steps: int
    base_lr: float
    instruct_steps: int
    instruct_lr: float
    finetune_steps: int
    finetune_lr: float
    gentle_steps: int
    gentle_lr: float
    n_train: int
    n_dev: int
    n_test: int
    extra_candidates: bool  # the demo zoo adds a third two-category candidate


SIZES: dict[str, ZooSize] = {
    "tiny": ZooSize(
        hidden=48,
        layers=2,
        intermediate=128,
        heads=4,
        batch=32,
        base_steps=400,
        base_lr=3e-3,
        instruct_steps=80,
        instruct_lr=2e-3,
        finetune_steps=60,
        finetune_lr=2e-3,
        gentle_steps=30,
        gentle_lr=3e-4,
        n_train=800,
        n_dev=40,
        n_test=40,
        extra_candidates=False,
    ),
    "demo": ZooSize(
        hidden=64,
        layers=2,
        intermediate=192,
        heads=4,
        batch=48,
        base_steps=4000,
        base_lr=3e-3,
        instruct_steps=600,
        instruct_lr=2e-3,
        finetune_steps=400,
        finetune_lr=2e-3,
        gentle_steps=150,
        gentle_lr=3e-4,
        n_train=2000,
        n_dev=300,
        n_test=300,
        extra_candidates=True,
    ),
}

# the gentle pool's batches: 20% replay of the base's pretraining data and at least 10% of each category
REPLAY_SHARE = 0.2
OTHER_SHARE = 0.1
# the default pool's batches: 15% replay and 15% of each category not emphasised (so a one-category
# emphasis is 40%, a two-category one 27.5% each)
BROAD_REPLAY_SHARE = 0.15
BROAD_OTHER_SHARE = 0.15


def _mixture(
    focus: tuple[str, ...], *, replay: float = REPLAY_SHARE, other: float = OTHER_SHARE
) -> dict[str, float]:
    """A post-training mixture: `focus` categories share what the replay and the others leave."""
    rest = 1.0 - replay - other * (len(CATEGORIES) - len(focus))
    mix = {c: (rest / len(focus) if c in focus else other) for c in CATEGORIES}
    mix[REPLAY] = replay
    return {k: round(v, 6) for k, v in mix.items()}


def _broad_mixture(focus: tuple[str, ...]) -> dict[str, float]:
    """The default pool's mixture: every category and replay, `focus` emphasised."""
    return _mixture(focus, replay=BROAD_REPLAY_SHARE, other=BROAD_OTHER_SHARE)


def plans(size: ZooSize, seed: int, pool: str = "default") -> tuple[TrainPlan, TrainPlan, list[TrainPlan]]:
    """The base's plan, the instruct model's and the candidates' (fine-tunes of the instruct model).

    The base learns the easy range of every task; the instruct model, trained briefly from it on the
    full range of every category (with replay of the base's data), is good at a part of it, like a
    general instruct model; candidates are fine-tunes of the instruct model, as in the SoCE paper.
    Every candidate keeps the instruct model's abilities (replay and a share of every category).
    The default pool: broad fine-tunes, each with its own emphasis (one category, or two), seed and
    data order, at a constant learning rate (lr_floor=1.0, like checkpoints taken before the rate
    decays): each ends at a noisy point around the same basin, and their average lands nearer its
    centre, better than any of them (the SWA / model-soup mechanism). The gentle pool: short,
    low-rate specialists and a generalist (cosine decay), close to their parent, where a soup gains
    little over the best of them.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown zoo pool {pool!r}; use one of {', '.join(POOLS)}")
    uniform = {c: 1.0 for c in CATEGORIES}
    base = TrainPlan(
        "base", uniform, size.base_steps, size.base_lr, seed, "pretrained on the easy range of every task"
    )
    broad = {**{c: 0.6 / len(CATEGORIES) for c in CATEGORIES}, REPLAY: 0.4}
    instruct = TrainPlan(
        "instruct",
        broad,
        size.instruct_steps,
        size.instruct_lr,
        seed + 100,
        "from the base: the full range of every category (15% each) and 40% replay of the base's data",
    )
    # (first category, second, seed offset) of the default pool's two-category candidates
    pairs = [(0, 1, 11), (1, 2, 12)] + ([(2, 3, 13)] if size.extra_candidates else [])
    if pool == "default":
        return base, instruct, _broad_candidates(size, seed, pairs)
    steps, lr = size.gentle_steps, size.gentle_lr
    cands = _specialists(seed, steps, lr, replay=REPLAY_SHARE, other=OTHER_SHARE)
    mix = _mixture(CATEGORIES)
    cands.append(
        TrainPlan(
            "generalist",
            mix,
            2 * steps,
            lr,
            seed + 20,
            f"every category evenly ({mix[CATEGORIES[0]]:.0%} each), {REPLAY_SHARE:.0%} replay, "
            "twice the steps",
        )
    )
    return base, instruct, cands


def _specialists(
    seed: int, steps: int, lr: float, *, replay: float, other: float, note: str = "", **plan: Any
) -> list[TrainPlan]:
    """One candidate per category (`<category>-expert`), that category emphasised."""
    out = []
    for k, cat in enumerate(CATEGORIES):
        mix = _mixture((cat,), replay=replay, other=other)
        what = f"{mix[cat]:.0%} {cat}, {other:.0%} each other category, {replay:.0%} replay{note}"
        out.append(TrainPlan(f"{cat}-expert", mix, steps, lr, seed + 1 + k, what, **plan))
    return out


def _broad_candidates(size: ZooSize, seed: int, pairs: list[tuple[int, int, int]]) -> list[TrainPlan]:
    """The default pool: broad fine-tunes at a constant rate, each with its own seed and data order.

    One per category (40% of it, 15% of each other); one per pair of neighbouring categories (27.5%
    of each of the pair, 15% of each other). All with 15% replay.
    """
    steps, lr = size.finetune_steps, size.finetune_lr
    cands = _specialists(
        seed,
        steps,
        lr,
        replay=BROAD_REPLAY_SHARE,
        other=BROAD_OTHER_SHARE,
        note=", constant learning rate",
        lr_floor=1.0,
    )
    for i, j, offset in pairs:
        a, b = CATEGORIES[i], CATEGORIES[j]
        mix = _broad_mixture((a, b))
        other = mix[next(c for c in CATEGORIES if c not in (a, b))]
        cands.append(
            TrainPlan(
                f"{a}-{b}-mix",
                mix,
                steps,
                lr,
                seed + offset,
                f"{mix[a]:.1%} each of {a} and {b}, {other:.0%} each other category, "
                f"{BROAD_REPLAY_SHARE:.0%} replay, constant learning rate",
                lr_floor=1.0,
            )
        )
    return cands
