"""`soce suite bfcl`: BFCL's single-turn categories written as a SoCE suite of lm-eval tasks.

BFCL has one split. Each category's items are split into dev and test by a hash of the item id
(`dev_share`), so the same item always lands on the same side whatever else changes, and choosing
(dev) and reporting (test) never share an item. The data files written are the record of the split:
dev.jsonl and test.jsonl of each category hold its item ids.

Each BFCL category is one SoCE category with one task, the level at which the paper runs its
correlation analysis; the leaderboard's summary columns (non-live and live AST accuracy) are the
suite's summaries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from evaluators.bfcl import CATEGORIES, find_bfcl_data, prompt_messages
from soce.errors import SuiteError
from soce.merging.soup import replace_path

SPLIT_VERSION = "bfcl-split-v1 sha256(id)"
TASK_PREFIX = "bfcl_"
MAX_NEW_TOKENS = 256  # enough for the longest gold answer of the parallel-multiple categories
SHIM = "bfcl_task.py"
# the leaderboard's summary columns over the categories we have (BFCL's simple AST also averages its
# Java and JavaScript categories, which are not single-turn Python: here it is Python's)
SUMMARIES = (
    {"name": "non_live_ast", "categories": ["simple_python", "multiple", "parallel", "parallel_multiple"]},
    {
        "name": "live_ast",
        "categories": ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"],
        "by_items": True,
    },
)


def in_dev(item_id: str, dev_share: float) -> bool:
    """Whether item `item_id` is a dev item: a hash of its id, below `dev_share` of the range."""
    digest = hashlib.sha256(f"bfcl:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < dev_share


def _describe(source: Any) -> str:
    describe = getattr(source, "describe", None)
    return describe() if callable(describe) else "bfcl-eval data"


def task_config(category: str, data: Path) -> dict[str, Any]:
    return {
        "task": TASK_PREFIX + category,
        "class": f"!function {SHIM[:-3]}.BfclTask",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"dev": str(data / "dev.jsonl"), "test": str(data / "test.jsonl")}},
        "validation_split": "dev",
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "id",  # unused: BfclTask renders the item's messages
        "doc_to_target": "id",
        "process_results": f"!function {SHIM[:-3]}.process_results",
        "generation_kwargs": {"until": [], "max_gen_toks": MAX_NEW_TOKENS, "do_sample": False},
        "metric_list": [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "split": SPLIT_VERSION},
    }


def _yaml_text(cfg: dict[str, Any]) -> str:
    """The task YAML, with lm-eval's `!function` tags unquoted."""
    text = yaml.safe_dump(cfg, sort_keys=False, width=1000)
    return (
        text.replace("'!function ", "!function ")
        .replace(".BfclTask'", ".BfclTask")
        .replace(".process_results'", ".process_results")
    )


def write_bfcl_suite(
    out: Path,
    *,
    data: Path | None = None,
    categories: Sequence[str] = CATEGORIES,
    limit: int | None = None,
    dev_share: float = 0.5,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write OUT (the suite YAML) and its task folder `<OUT stem>_tasks/` beside it; returns OUT.

    data: the bfcl-eval wheel or its unpacked data (default: the cached download).
    limit: the suite's per-task limit, for quick runs.
    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise SuiteError(
            f"unknown BFCL categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
            f"(single-turn AST categories: {', '.join(CATEGORIES)})"
        )
    if not categories:
        raise SuiteError("no BFCL category chosen")
    if not 0 < dev_share < 1:
        raise SuiteError(f"--dev-share must be between 0 and 1, not {dev_share}")
    out = Path(out).expanduser().resolve()
    folder = out.with_name(f"{out.stem}_tasks")
    if not force and (out.exists() or folder.exists()):
        raise SuiteError(f"{out if out.exists() else folder} exists; pass --force to replace it")
    source = find_bfcl_data(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out.parent))
    try:
        counts = {}
        for category in categories:
            items = source.items(category)
            rows = {"dev": [], "test": []}
            for item in items:
                rows["dev" if in_dev(item.id, dev_share) else "test"].append(
                    {
                        "id": item.id,
                        "category": category,
                        "messages": json.dumps(prompt_messages(item), ensure_ascii=False),
                        "item": json.dumps(item.to_json(), ensure_ascii=False),
                    }
                )
            if not rows["dev"] or not rows["test"]:
                raise SuiteError(f"BFCL category {category!r} has too few items to split into dev and test")
            data_dir = staging / "data" / category
            data_dir.mkdir(parents=True)
            for split, split_rows in rows.items():
                (data_dir / f"{split}.jsonl").write_text(
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows)
                )
            counts[category] = {split: len(r) for split, r in rows.items()}
            final_data = folder / "data" / category
            (staging / f"{category}.yaml").write_text(_yaml_text(task_config(category, final_data)))
            if progress:
                progress(1)
        (staging / SHIM).write_text(
            '"""lm-eval\'s handle on SoCE\'s BFCL task (written by `soce suite bfcl`)."""\n\n'
            "from evaluators.bfcl.lm_eval_task import BfclTask, process_results\n\n"
            '__all__ = ["BfclTask", "process_results"]\n'
        )
        suite = {
            "name": "bfcl",
            "include_path": folder.name,
            "dev_split": "dev",
            "test_split": "test",
            "apply_chat_template": True,
            **({"limit": limit} if limit else {}),
            "categories": [
                {"name": c, "tasks": [{"name": TASK_PREFIX + c, "metric": "accuracy,none"}]}
                for c in categories
            ],
            "summaries": [s for s in SUMMARIES if all(c in categories for c in s["categories"])],
        }
        header = (
            f"# BFCL v4 single-turn categories ({_describe(source)}), split into dev and test by "
            f"{SPLIT_VERSION} < {dev_share:g}\n# items per category: "
            + ", ".join(f"{c} {n['dev']}/{n['test']}" for c, n in counts.items())
            + " (dev/test)\n"
        )
        replace_path(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out.write_text(header + yaml.safe_dump(suite, sort_keys=False))
    return out
