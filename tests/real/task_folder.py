"""A tiny suite for a real BPE model: a generation task and a one-token and a multi-token multiple-choice
task, 20 items each (10 dev, 10 test), with leading spaces, punctuation, quotes and a non-ASCII letter.

Choices carry their own leading space (target_delimiter is ''), and some prompts end in a space instead,
which lm-eval moves into the continuation before tokenising: both ways meet the BPE tokenizer here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

SPLITS = {"validation": "dev.jsonl", "test": "test.jsonl"}

CAPITALS = [
    ("Q: What is the capital of France?\nA:", " Paris"),
    ("Q: What is the capital of Germany?\nA:", " Berlin"),
    ("The capital city of Italy is", " Rome"),
    ("The capital city of Spain is", " Madrid"),
    ("Q: Which city is Japan's capital?\nA:", " Tokyo"),
    ("Q: Which city is England's capital?\nA:", " London"),
    ("Russia's capital:", " Moscow"),
    ("China's capital:", " Beijing"),
    ("Q: What is the capital of Egypt?\nA:", " Cairo"),
    ("Q: What is the capital of Greece?\nA:", " Athens"),
    ("The capital city of Portugal is", " Lisbon"),
    ("The capital city of Austria is", " Vienna"),
    ("Q: Which city is Ireland's capital?\nA:", " Dublin"),
    ("Q: Which city is Argentina's capital?\nA:", " Buenos Aires"),
    ("India's capital:", " New Delhi"),
    ("Colombia's capital:", " Bogotá"),
    ("Q: What is the capital of Norway?\nA:", " Oslo"),
    ("Q: What is the capital of Canada?\nA:", " Ottawa"),
    ("The capital city of Hungary is", " Budapest"),
    ("The capital city of Mexico is", " Mexico City"),
]

# (prompt, choices, answer): every choice is one token, also where lm-eval moves the prompt's trailing
# space into it (this tokenizer splits a space from a digit: ' 4' is two tokens, '4' one)
ONE_TOKEN = [
    ("Q: Is the sun hot?\nA:", [" yes", " no"], 0),
    ("Q: Can a fish drive a car?\nA:", [" yes", " no"], 1),
    ("Question: Is ice cold? Answer: ", ["yes", "no"], 0),
    ("Question: Do cats bark? Answer: ", ["yes", "no"], 1),
    ("2 + 2 =", ["3", "4", "5"], 1),
    ("3+5=", ["8", "7", "9"], 0),
    ("Q: How many legs does a dog have? Answer:", [" two", " four", " six"], 1),
    ("Q: How many days are in a week? A:", [" five", " six", " seven"], 2),
    ("True or false: snow is white. Answer:", [" True", " False"], 0),
    ("True or false: fire is wet. Answer:", [" True", " False"], 1),
    ("Q: Is water wet?\nA:", [" yes", " no"], 0),
    ("Q: Is a mouse bigger than an elephant?\nA:", [" yes", " no"], 1),
    ("Question: Is the sky blue? Answer: ", ["yes", "no"], 0),
    ("Question: Can rocks sing? Answer: ", ["yes", "no"], 1),
    ("1+1=", ["1", "2", "3"], 1),
    ("10 - 3 =", ["7", "6", "5"], 0),
    ("Q: How many wheels does a bicycle have?\nA:", [" one", " two", " three"], 1),
    ("True or false: the moon is made of cheese. Answer:", [" True", " False"], 1),
    ("Q: Do birds have feathers?\nA:", [" yes", " no"], 0),
    ("Q: Is Paris in France?\nA:", [" yes", " no"], 0),
]

MULTI_TOKEN = [  # half of them with near misses: a plural, the punctuation, a neighbouring word
    ("Twinkle, twinkle, little", [" star, how I wonder", " star!", " car?"], 0),
    ('The opposite of "hot" is', [' "cold".', ' "warm".', ' "hotter".'], 0),
    ("Roses are red, violets are", [" blue.", " red.", " violet."], 0),
    ("Once upon a", [" time,", " time.", " day,"], 0),
    ("The early bird catches the", [" worm.", " worms.", " bird."], 0),
    ("An apple a day keeps the", [" doctor away.", " doctors away.", " doctor here."], 0),
    ("Good morning! How are", [" you?", " you.", " they?"], 0),
    ("Thank you very", [" much!", " much.", " many!"], 0),
    ("A, B, C, D,", [" E, F, G.", " E F G.", " F, G, H."], 0),
    ("Hello, my name", [" is Sam.", " are Sam.", " was Sam."], 0),
    ("The cat sat on the", [" mat.", " moon!", " idea?"], 0),
    ("E = mc", ["^2", "^3", "+1"], 0),
    ("It's raining cats and", [" dogs!", " mice?", " cars."], 0),
    ("Practice makes", [" perfect.", " purple!", " pancakes?"], 0),
    ("Better late than", [" never.", " ever!", " later?"], 0),
    ("The quick brown fox jumps over the lazy", [" dog.", " log!", " cat?"], 0),
    ("I think, therefore I", [" am.", " was!", " go?"], 0),
    ("Knowledge is ", ["power.", "pizza!", "purple?"], 0),
    ("Q: What do bees make?\nA: ", ["honey.", "bricks!", "clouds?"], 0),
    ("All's well that ends", [" well.", " soon!", " wet?"], 0),
]

TASKS = ("real_capitals_gen", "real_facts_mc1", "real_phrases_mc")
METRICS = {
    "real_capitals_gen": "exact_match,none",
    "real_facts_mc1": "acc,none",
    "real_phrases_mc": "acc_norm,none",
}


def _rows(name: str, seed: int) -> list[dict]:
    if name == "real_capitals_gen":
        return [{"prompt": p, "target": t} for p, t in CAPITALS]
    rng = random.Random(f"{seed}-{name}")
    rows = []
    for prompt, choices, answer in ONE_TOKEN if name == "real_facts_mc1" else MULTI_TOKEN:
        order = list(range(len(choices)))
        rng.shuffle(order)  # the right answer is not always first
        rows.append({"prompt": prompt, "choices": [choices[i] for i in order], "answer": order.index(answer)})
    return rows


def task_config(name: str, data: Path) -> dict:
    cfg: dict = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {s: str(data / f) for s, f in SPLITS.items()}},
        "validation_split": "validation",
        "test_split": "test",
        "doc_to_text": "prompt",
        "target_delimiter": "",
    }
    if name == "real_capitals_gen":
        until = ["\n", ".", ",", "?"]
        return cfg | {
            "output_type": "generate_until",
            "doc_to_target": "target",
            "generation_kwargs": {"until": until, "max_gen_toks": 5, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1},
        }
    metrics = ["acc", "acc_norm"] if name == "real_phrases_mc" else ["acc"]
    return cfg | {
        "output_type": "multiple_choice",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
        "metadata": {"version": 1},
    }


def write_real_tasks(root: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """ROOT/{suite.yaml, tasks/<task>.yaml, data/<task>/{dev,test}.jsonl}: even items dev, odd items test."""
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    for name in TASKS:
        rows = _rows(name, seed)
        data = root / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        for (_, file), part in zip(SPLITS.items(), (rows[0::2], rows[1::2]), strict=True):
            (data / file).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        (root / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(task_config(name, data), sort_keys=False))
    suite = {
        "name": "real",
        "include_path": "tasks",
        "dev_split": "validation",
        "test_split": "test",
        **({"limit": limit} if limit else {}),
        "categories": [
            {
                "name": "capitals",
                "tasks": [{"name": "real_capitals_gen", "metric": METRICS["real_capitals_gen"]}],
            },
            {"name": "facts", "tasks": [{"name": "real_facts_mc1", "metric": METRICS["real_facts_mc1"]}]},
            {"name": "phrases", "tasks": [{"name": "real_phrases_mc", "metric": METRICS["real_phrases_mc"]}]},
        ],
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return root
