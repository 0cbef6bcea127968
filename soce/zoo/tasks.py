"""Synthetic benchmark tasks for the zoo: four categories of two tasks each, one generation and
one multiple-choice task per category. Every example is generated from a seeded RNG, and pretrain,
train, dev and test examples never share a prompt.

Each task has an easy range and a full one: the base is pretrained on the easy range only (small
numbers, short strings, small shifts, a quarter of the dictionary), while the fine-tunes train on,
and dev and test ask, the full range. What a fine-tune on a category adds is therefore knowledge the
base lacks (more shift tables, more words, larger numbers), learnt steadily with exposure, rather
than a skill that forms in one build and not in another (which is how earlier designs failed: which
skills formed in the small model changed with the seed and the CPU).
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
    make: Callable[[random.Random, bool], Example] = field(repr=False)  # (rng, easy)

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


def _add(rng: random.Random, easy: bool) -> Example:
    hi = 24 if easy else 49
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    return Example(f"add {a} {b}=", str(a + b))


def _sub(rng: random.Random, easy: bool) -> Example:
    a = rng.randint(10, 29 if easy else 59)
    b = rng.randint(0, a)
    d = a - b
    wrong = [str(x) for x in (d + 1, d - 1, d + 10, d - 10, d + 2) if x >= 0]
    return Example(f"sub {a} {b}=", str(d), _choices(rng, str(d), wrong))


def _shift(word: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in word)


def _shift_question(rng: random.Random, easy: bool) -> tuple[int, str]:
    # every letter moved k places on in the alphabet; the base knows the small shifts only
    return rng.randint(1, 3 if easy else 12), _word(rng, 3, 6)


def _caesar(rng: random.Random, easy: bool) -> Example:
    k, w = _shift_question(rng, easy)
    return Example(f"shf {k} {w}=", _shift(w, k))


def _caesar_mc(rng: random.Random, easy: bool) -> Example:
    # the same question with the word moved by neighbouring shifts as the wrong choices
    k, w = _shift_question(rng, easy)
    right = _shift(w, k)
    return Example(
        f"csr {k} {w}=", right, _choices(rng, right, [_shift(w, j) for j in (k - 1, k + 1, k + 2)])
    )


def _dictionary() -> tuple[tuple[str, str], ...]:
    """A fixed vocabulary of 400 three-letter words, each with a digit: the facts the recall tasks ask."""
    rng = random.Random("soce-zoo-dictionary")
    words: dict[str, None] = {}  # distinct words in the order drawn
    while len(words) < 400:
        words.setdefault(_word(rng, 3, 3))
    return tuple((w, rng.choice(string.digits)) for w in words)


DICTIONARY = _dictionary()
EASY_WORDS = 100  # the base learns the first 100 words' digits; the rest only a recall fine-tune teaches


def _two_words(rng: random.Random, easy: bool) -> tuple[tuple[str, str], tuple[str, str]]:
    a, b = rng.sample(DICTIONARY[:EASY_WORDS] if easy else DICTIONARY, 2)
    return a, b


def _kv_fwd(rng: random.Random, easy: bool) -> Example:
    (w1, d1), (w2, d2) = _two_words(rng, easy)
    return Example(f"fwd {w1} {w2}=", d1 + d2)


def _kv_mc(rng: random.Random, easy: bool) -> Example:
    (w1, d1), (w2, d2) = _two_words(rng, easy)
    o1, o2 = (rng.choice([d for d in string.digits if d != x]) for x in (d1, d2))
    right = d1 + d2
    return Example(f"val {w1} {w2}=", right, _choices(rng, right, [o1 + d2, d1 + o2, o1 + o2]))


def _count(rng: random.Random, easy: bool) -> Example:
    s = _word(rng, 3, 7 if easy else 14, "abc")
    c = rng.choice("abc")
    return Example(f"cnt {c} {s}=", str(s.count(c)))


def _count_mc(rng: random.Random, easy: bool) -> Example:
    s = _word(rng, 3, 7 if easy else 14, "abcd")
    c = rng.choice("abcd")
    n = s.count(c)
    wrong = [str(k) for k in (n - 2, n - 1, n + 1, n + 2) if k >= 0]
    return Example(f"how {c} {s}=", str(n), _choices(rng, str(n), rng.sample(wrong, len(wrong))))


TASKS: tuple[TaskDef, ...] = (
    TaskDef("zoo_add", "arithmetic", "gen", _add),
    TaskDef("zoo_sub_mc", "arithmetic", "mc", _sub),
    TaskDef("zoo_shift", "strings", "gen", _caesar),
    TaskDef("zoo_shift_mc", "strings", "mc", _caesar_mc),
    TaskDef("zoo_lookup", "recall", "gen", _kv_fwd),
    TaskDef("zoo_lookup_mc", "recall", "mc", _kv_mc),
    TaskDef("zoo_count", "counting", "gen", _count),
    TaskDef("zoo_count_mc", "counting", "mc", _count_mc),
)
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(t.category for t in TASKS))


def make_splits(
    task: TaskDef, *, seed: int, n_train: int, n_dev: int, n_test: int, n_pretrain: int = 0
) -> dict[str, list[Example]]:
    """Disjoint pretrain/train/dev/test examples (no prompt in two splits), deterministic for a seed.

    Dev, test and train examples span the task's full range; pretrain examples (the base's) only
    its easy range, so the base leaves room that a fine-tune on the category can take.
    """
    rng = random.Random(f"{seed}:{task.name}")
    seen: set[str] = set()
    splits: dict[str, list[Example]] = {}
    # dev and test first, so their size never depends on how many training examples are asked for;
    # pretrain before train, so the easy range is not used up by the fine-tunes' examples
    order = (
        ("dev", n_dev, False),
        ("test", n_test, False),
        ("pretrain", n_pretrain, True),
        ("train", n_train, False),
    )
    for split, n, easy in order:
        out: list[Example] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                if split in ("train", "pretrain") and out:
                    break  # a small task space: train on every example left
                raise ValueError(f"task {task.name} ran out of distinct examples for its {split} split")
            ex = task.make(rng, easy)
            if ex.prompt in seen:
                continue
            seen.add(ex.prompt)
            out.append(ex)
        splits[split] = out
    return splits
