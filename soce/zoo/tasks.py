"""Synthetic benchmark tasks for the zoo: four categories of two tasks each, one generation and
one multiple-choice task per category. Every example is generated from a seeded RNG, and train,
dev and test examples never share a prompt.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str
    choices: tuple[str, ...] = ()  # multiple-choice tasks only; target is one of them

    def row(self) -> dict:
        """The JSONL row lm-eval reads (see the task YAMLs the zoo writes)."""
        if self.choices:
            return {
                "prompt": self.prompt,
                "choices": list(self.choices),
                "answer": self.choices.index(self.target),
            }
        return {"prompt": self.prompt, "target": self.target}


@dataclass(frozen=True)
class TaskDef:
    name: str
    category: str
    kind: str  # "gen" (exact match of a generated answer) or "mc" (log-likelihood of each choice)
    make: Callable[[random.Random], Example] = field(repr=False)

    @property
    def metric(self) -> str:
        return "exact_match,none" if self.kind == "gen" else "acc,none"


def _word(rng: random.Random, lo: int, hi: int, alphabet: str = LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _choices(rng: random.Random, right: str, wrong: list[str]) -> tuple[str, ...]:
    options = [right]
    for w in wrong:
        if w not in options and len(options) < 4:
            options.append(w)
    rng.shuffle(options)
    return tuple(options)


def _add(rng: random.Random) -> Example:
    a, b = rng.randint(0, 29), rng.randint(0, 29)
    return Example(f"add {a} {b}=", str(a + b))


def _sub(rng: random.Random) -> Example:
    a = rng.randint(10, 49)
    b = rng.randint(0, a)
    d = a - b
    wrong = [str(x) for x in (d + 1, d - 1, d + 10, d - 10, d + 2) if x >= 0]
    return Example(f"sub {a} {b}=", str(d), _choices(rng, str(d), wrong))


def _rev(rng: random.Random) -> Example:
    # 4 to 11 letters: graded, so the score says how far a model's reversal reaches, and neither
    # saturates nor stays at zero
    w = _word(rng, 4, 11)
    return Example(f"rev {w}=", w[::-1])


def _after(rng: random.Random) -> Example:
    # the letter that follows a given one in a word of distinct letters; every choice is in the word
    n = rng.randint(6, 12)
    w = "".join(rng.sample(LETTERS, n))
    i = rng.randrange(n - 1)
    right = w[i + 1]
    wrong = [c for c in rng.sample(w, n) if c != right][:3]
    return Example(f"aft {w[i]} {w}=", right, _choices(rng, right, wrong))


def _pairs(rng: random.Random) -> tuple[list[str], list[str], str]:
    keys = ["a", "b", "c", "d"]  # fixed keys, random distinct digit values
    values = rng.sample(string.digits, 4)
    listing = " ".join(k + v for k, v in zip(keys, values, strict=True))
    return keys, values, listing


def _kv_fwd(rng: random.Random) -> Example:
    keys, values, listing = _pairs(rng)
    i = rng.randrange(4)
    return Example(f"fwd {listing} {keys[i]}=", values[i])


def _kv_bwd(rng: random.Random) -> Example:
    keys, values, listing = _pairs(rng)
    i = rng.randrange(4)
    return Example(f"bwd {listing} {values[i]}=", keys[i], _choices(rng, keys[i], keys))


def _count(rng: random.Random) -> Example:
    s = _word(rng, 5, 10, "abc")
    c = rng.choice("abc")
    return Example(f"cnt {c} {s}=", str(s.count(c)))


def _count_mc(rng: random.Random) -> Example:
    s = _word(rng, 4, 12, "abcd")
    c = rng.choice("abcd")
    n = s.count(c)
    wrong = [str(k) for k in (n - 2, n - 1, n + 1, n + 2) if k >= 0]
    return Example(f"how {c} {s}=", str(n), _choices(rng, str(n), rng.sample(wrong, len(wrong))))


TASKS: tuple[TaskDef, ...] = (
    TaskDef("zoo_add", "arithmetic", "gen", _add),
    TaskDef("zoo_sub_mc", "arithmetic", "mc", _sub),
    TaskDef("zoo_rev", "strings", "gen", _rev),
    TaskDef("zoo_after_mc", "strings", "mc", _after),
    TaskDef("zoo_lookup", "recall", "gen", _kv_fwd),
    TaskDef("zoo_reverse_lookup_mc", "recall", "mc", _kv_bwd),
    TaskDef("zoo_count", "counting", "gen", _count),
    TaskDef("zoo_count_mc", "counting", "mc", _count_mc),
)
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(t.category for t in TASKS))


def make_splits(
    task: TaskDef, *, seed: int, n_train: int, n_dev: int, n_test: int
) -> dict[str, list[Example]]:
    """Disjoint train/dev/test examples (no prompt in two splits), deterministic for a seed."""
    rng = random.Random(f"{seed}:{task.name}")
    seen: set[str] = set()
    splits: dict[str, list[Example]] = {}
    # dev and test first, so their size never depends on how many train examples are asked for
    for split, n in (("dev", n_dev), ("test", n_test), ("train", n_train)):
        out: list[Example] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                if split == "train" and out:
                    break  # a small task space: train on every example left
                raise ValueError(f"task {task.name} ran out of distinct examples for its {split} split")
            ex = task.make(rng)
            if ex.prompt in seen:
                continue
            seen.add(ex.prompt)
            out.append(ex)
        splits[split] = out
    return splits
