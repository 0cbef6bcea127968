"""A tiny lm-eval task folder in the zoo's format: one multiple-choice and one generation task."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from soce.schemas.suite import SuiteSpec
from soce.zoo.build import task_config

SPLIT_FILES = {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}


def mc_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        choices = [str(a + b), str(a + b - 1), str(a + b + 1), str(a + b + 10)]
        rng.shuffle(choices)
        rows.append({"prompt": f"{a}+{b}=", "choices": choices, "answer": choices.index(str(a + b))})
    return rows


def gen_rows(n: int, rng: random.Random) -> list[dict]:
    words = ["".join(rng.choice("abcdef") for _ in range(3)) for _ in range(n)]
    return [{"prompt": f"rev {w}=", "target": w[::-1]} for w in words]


def task_yaml(name: str, data: Path, kind: str) -> dict:
    return task_config(name, kind, data)


def write_zoo_tasks(root: Path, *, sizes: tuple[int, int, int] = (4, 8, 10), seed: int = 0) -> Path:
    """ROOT/{suite.yaml, tasks/<task>.yaml, data/<task>/{train,dev,test}.jsonl}, as the zoo writes them."""
    rng = random.Random(seed)
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    for name, kind, make in (("zoo_add_mc", "mc", mc_rows), ("zoo_rev_gen", "gen", gen_rows)):
        data = root / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        for file, n in zip(SPLIT_FILES.values(), sizes, strict=True):
            (data / file).write_text("".join(json.dumps(r) + "\n" for r in make(n, rng)))
        (root / "tasks" / f"{name}.yaml").write_text(
            yaml.safe_dump(task_yaml(name, data, kind), sort_keys=False)
        )
    suite = {
        "name": "tiny",
        "include_path": "tasks",
        "dev_split": "validation",
        "test_split": "test",
        "categories": [
            {"name": "arithmetic", "tasks": [{"name": "zoo_add_mc", "metric": "acc,none"}]},
            {"name": "strings", "tasks": [{"name": "zoo_rev_gen", "metric": "exact_match,none"}]},
        ],
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return root


@dataclass(frozen=True)
class Zoo:
    root: Path
    suite: SuiteSpec
    candidates: list[Path]

    @property
    def suite_file(self) -> Path:
        return self.root / "suite.yaml"
