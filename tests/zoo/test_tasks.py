from __future__ import annotations

import itertools
import re

import pytest

from soce.zoo.tasks import CATEGORIES, DICTIONARY, EASY_WORDS, TASKS, make_splits
from soce.zoo.tokenizer import build_char_tokenizer
from soce.zoo.train import encode


def test_four_categories_of_two_tasks_with_one_generation_and_one_choice_task_each() -> None:
    assert len(CATEGORIES) >= 4
    for cat in CATEGORIES:
        kinds = sorted(t.kind for t in TASKS if t.category == cat)
        assert kinds == ["gen", "mc"], cat


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_splits_are_disjoint_and_deterministic(task) -> None:
    a = make_splits(task, seed=3, n_train=300, n_dev=50, n_test=50, n_pretrain=300)
    b = make_splits(task, seed=3, n_train=300, n_dev=50, n_test=50, n_pretrain=300)
    assert a == b
    prompts = {split: {ex.prompt for ex in exs} for split, exs in a.items()}
    assert len(prompts["dev"]) == 50 and len(prompts["test"]) == 50 and len(prompts["pretrain"]) > 100
    for one, other in itertools.combinations(prompts, 2):
        assert not prompts[one] & prompts[other], (one, other)
    other = make_splits(task, seed=4, n_train=10, n_dev=50, n_test=50)
    assert [e.prompt for e in other["dev"]] != [e.prompt for e in a["dev"]]


WORD_INDEX = {w: i for i, (w, _) in enumerate(DICTIONARY)}


def _difficulty(task, prompt: str) -> int:
    """How far into its task's range an example reaches: the largest number, shift, word or length."""
    if task.category == "recall":
        return max(WORD_INDEX[w] for w in prompt[4:-1].split())
    if task.category == "counting":
        return len(prompt[:-1].split()[-1])
    return max(int(n) for n in re.findall(r"\d+", prompt))


@pytest.mark.parametrize(
    ("task", "easy_max"),
    [
        (t, {"arithmetic": 29, "strings": 3, "recall": EASY_WORDS - 1, "counting": 7}[t.category])
        for t in TASKS
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_the_base_sees_the_easy_range_and_the_rest_asks_the_full_range(task, easy_max) -> None:
    splits = make_splits(task, seed=0, n_train=400, n_dev=150, n_test=150, n_pretrain=400)
    assert max(_difficulty(task, ex.prompt) for ex in splits["pretrain"]) <= easy_max
    for split in ("train", "dev", "test"):
        harder = [ex for ex in splits[split] if _difficulty(task, ex.prompt) > easy_max]
        assert len(harder) > len(splits[split]) / 3, split  # most of what is asked is new to the base


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_examples_are_well_formed(task) -> None:
    for ex in make_splits(task, seed=0, n_train=50, n_dev=20, n_test=20)["dev"]:
        assert ex.prompt.endswith("=")
        row = ex.row()
        if task.kind == "mc":
            assert len(ex.choices) == len(set(ex.choices)) >= 2
            assert row["choices"][row["answer"]] == ex.target
        else:
            assert row["target"] == ex.target and ex.target


def test_training_encoding_matches_the_saved_tokenizer() -> None:
    tok = build_char_tokenizer()
    text = "shf 2 abc=cde\n" + "fwd kqz bam=47\n"
    assert tok(text, add_special_tokens=True)["input_ids"] == encode(text)


def test_tokenizer_decodes_back_to_the_same_text() -> None:
    tok = build_char_tokenizer()
    text = "shf 2 abc=cde\nfwd kqz bam=47"
    assert tok.decode(tok(text)["input_ids"]) == text
