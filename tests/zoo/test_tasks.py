from __future__ import annotations

import pytest

from soce.zoo.tasks import CATEGORIES, TASKS, make_splits
from soce.zoo.tokenizer import build_char_tokenizer
from soce.zoo.train import encode


def test_four_categories_of_two_tasks_with_one_generation_and_one_choice_task_each() -> None:
    assert len(CATEGORIES) >= 4
    for cat in CATEGORIES:
        kinds = sorted(t.kind for t in TASKS if t.category == cat)
        assert kinds == ["gen", "mc"], cat


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_splits_are_disjoint_and_deterministic(task) -> None:
    a = make_splits(task, seed=3, n_train=300, n_dev=50, n_test=50)
    b = make_splits(task, seed=3, n_train=300, n_dev=50, n_test=50)
    assert a == b
    prompts = {split: {ex.prompt for ex in exs} for split, exs in a.items()}
    assert len(prompts["dev"]) == 50 and len(prompts["test"]) == 50
    assert not prompts["train"] & prompts["dev"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["dev"] & prompts["test"]
    other = make_splits(task, seed=4, n_train=10, n_dev=50, n_test=50)
    assert [e.prompt for e in other["dev"]] != [e.prompt for e in a["dev"]]


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
    text = "rev abc=cba\n" + "fwd a3 b7 c1 b=7\n"
    assert tok(text, add_special_tokens=True)["input_ids"] == encode(text)


def test_tokenizer_decodes_back_to_the_same_text() -> None:
    tok = build_char_tokenizer()
    text = "rev abc=cba\nfwd a3 b7 c1 d5 b=7"
    assert tok.decode(tok(text)["input_ids"]) == text
