"""The `lm_eval` evaluator: lm-evaluation-harness in-process on an in-memory model.

A weight search evaluates the same tasks hundreds of times on one model whose weights change in
place, so everything that does not depend on the weights is built once per process for each
(suite, split, limit, few-shot, seed, task files) and reused: the lm-eval Task objects (datasets
loaded, configs resolved, here), their documents and requests (`evaluators.prepared_tasks`), and in
the model (`evaluators.batched_lm.BatchedLM`) the tokens and batches of those requests. An evaluation
runs the forward passes, then lm-eval's own filters, per-document metrics and aggregations, as its
evaluate() would. lm-eval, torch and transformers are imported only when a model is evaluated.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import threading
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from evaluators._base import Progress, TaskEvaluator
from evaluators.fingerprint_store import FINGERPRINTS_FILE, remembered_fingerprints
from evaluators.prepared_tasks import PreparedTask, TaskResult, TaskSet, evaluate_prepared
from evaluators.task_files import declared_splits, task_fingerprint, task_index
from soce.config import Settings, get_settings
from soce.errors import EvaluationError, SuiteError
from soce.schemas.scores import TaskScore
from soce.schemas.suite import DevPart, Split, SuiteSpec, TaskSpec, canonical_hash

log = logging.getLogger(__name__)


@cache
def lm_eval_version() -> str:
    """lm-eval's installed version, from its dist-info folder's name when there is exactly one (reading
    package metadata costs tens of milliseconds, most of a score-cache hit); lm-eval is not imported."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is not None and spec.origin:
        found = list(Path(spec.origin).parent.parent.glob("lm_eval-*.dist-info"))
        if len(found) == 1:
            return found[0].name[len("lm_eval-") : -len(".dist-info")]
    return package_version("lm_eval")


def first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[0] if lines else type(error).__name__


def apply_offline_environment(settings: Settings | None = None) -> None:
    """Hugging Face libraries offline with their caches under our data folder (before they are imported)."""
    settings = settings or get_settings()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(settings.data_dir / "hf")


# --- lm-eval tasks, built once per process ---

_task_sets: dict[tuple, TaskSet] = {}
_managers: dict[None, Any] = {}
_build_lock = threading.Lock()


def _task_manager(include_path: str | None) -> Any:
    """A TaskManager over the suite's folder only (~1 ms, fresh so new YAMLs are seen)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        return TaskManager(include_path=include_path, include_defaults=False)
    if None not in _managers:  # lm-eval's built-in tasks: indexing them costs seconds, so once
        _managers[None] = TaskManager(include_defaults=True)
    return _managers[None]


def _metric_keys(task: Any) -> list[str]:
    filters = [f["name"] for f in task.config.filter_list or []] or ["none"]
    return [f"{m},{f}" for f in filters for m in task.aggregation()]


def _build_task(manager: Any, suite: SuiteSpec, spec: TaskSpec, split: Split) -> Any:
    split_name = suite.split_name(split)
    if spec.name not in manager.all_subtasks:
        offered = ", ".join(manager.all_subtasks) if suite.include_path else "lm-eval's built-in tasks"
        raise SuiteError(
            f"suite {suite.name!r}: task {spec.name!r} is unknown to lm-eval (it offers: {offered})"
        )
    try:
        # a group entry referring to a registered task is lm-eval's way to override one of its fields
        loaded = manager.load(
            {"group": f"soce-{split}", "task": [{"task": spec.name, "test_split": split_name}]}
        )
        task = loaded["tasks"][spec.name]
    except KeyError as e:
        if e.args != (split_name,):
            raise EvaluationError(f"task {spec.name!r} failed to load: {first_line(e)}") from e
        task = None  # lm-eval looked the missing split up while building the task
    except Exception as e:
        raise EvaluationError(f"task {spec.name!r} failed to load: {first_line(e)}") from e
    splits = declared_splits(suite, spec.name) if task is None else list(getattr(task, "dataset", None) or [])
    if task is None or (splits and split_name not in splits):
        raise EvaluationError(
            f"task {spec.name!r} has no split {split_name!r}, the {split} split of suite {suite.name!r} "
            f"(its data has: {', '.join(splits) or 'unknown splits'})"
        )
    if task.get_config("num_fewshot") != 0:  # as simple_evaluate: a YAML's explicit 0 stays
        task.set_config(key="num_fewshot", value=suite.num_fewshot)
    if spec.metric not in (keys := _metric_keys(task)):
        raise EvaluationError(
            f"task {spec.name!r} does not produce metric {spec.metric!r} (it produces: {', '.join(keys)})"
        )
    return task


class ChatTemplate:
    """A tokenizer's chat template as lm-eval's HFLM applies it (`apply_chat_template`): the same
    arguments, and the same retry without the system message when the template refuses one.

    `key` identifies the template, so requests built with it are kept apart from other templates'.
    """

    def __init__(self, tokenizer: Any, *, where: str = "the model") -> None:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise EvaluationError(
                f"the suite applies the model's chat template, but the tokenizer of {where} has none"
            )
        self.tokenizer = tokenizer
        self.key = canonical_hash(template)

    def __call__(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        import jinja2

        options = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        options["continue_final_message"] = not add_generation_prompt
        try:
            return self.tokenizer.apply_chat_template(chat_history, **options)
        except jinja2.exceptions.TemplateError:
            log.warning("the chat template refused the system message: it is left out")
            chat = [m for m in chat_history if m["role"] != "system"]
            return self.tokenizer.apply_chat_template(chat, **options)


def part_fingerprint(fingerprint: str, part: DevPart | None) -> str:
    """The fingerprint of a task's examples in `part` of its split (the task's own without a part)."""
    return fingerprint if part is None else canonical_hash([fingerprint, part.key])


def keep_part(task: Any, split_name: str, part: DevPart, *, name: str) -> None:
    """Keep only the examples of `part` in the task's `split_name` data (before requests are built)."""
    data = task.dataset[split_name]
    keep = [i for i, row in enumerate(data) if part.holds(dict(row))]
    if not keep:
        raise EvaluationError(
            f"task {name!r}: none of its {len(data)} dev example(s) falls in the {part.label} "
            f"(selection fraction {part.fraction:g}); give the task more dev examples or change "
            "selection_fraction"
        )
    task.dataset[split_name] = data.select(keep) if hasattr(data, "select") else [data[i] for i in keep]


def _read_score(spec: TaskSpec, result: TaskResult, *, samples: bool = False) -> TaskScore:
    metrics = result.metrics
    if spec.metric not in metrics:
        produced = [k for k in metrics if "," in k and "_stderr," not in k]
        raise EvaluationError(
            f"task {spec.name!r} produced no metric {spec.metric!r} "
            f"(it produced: {', '.join(produced) or 'none'})"
        )
    name, _, filt = spec.metric.partition(",")
    stderr = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
    per_doc = None
    if samples:
        values = result.per_doc.get((name, filt or "none"), [])
        if not all(isinstance(v, int | float) for v in values):
            raise EvaluationError(
                f"task {spec.name!r}: metric {spec.metric!r} has no numeric value per document"
            )
        per_doc = tuple(float(v) for v in values)
    return TaskScore(
        task=spec.name,
        metric=spec.metric,
        value=float(metrics[spec.metric]),
        stderr=float(stderr) if isinstance(stderr, int | float) else None,
        n=result.n,
        samples=per_doc,
    )


class LmEvalEvaluator(TaskEvaluator):
    name = "lm_eval"
    summary = "lm-evaluation-harness in-process on the model; tasks are built once per process"

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        device: str | None = None,
        bootstrap_iters: int = 100_000,
        show_progress: bool = False,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.batch_size = batch_size or self.settings.eval_batch_size
        self.device = device or self.settings.device
        self.bootstrap_iters = bootstrap_iters  # lm-eval's default; mean metrics get analytic stderrs
        self.show_progress = show_progress  # lm-eval's progress bars over requests
        self.last_request_seconds = 0.0  # of the last evaluate_model: time in the model's requests

    @property
    def version(self) -> str:
        return f"2+lm_eval-{lm_eval_version()}"

    def task_fingerprint(
        self, suite: SuiteSpec, task: TaskSpec, split: Split, *, part: DevPart | None = None
    ) -> str:
        names = [t.name for t in suite.tasks]
        if task.name in names:
            return self.suite_fingerprints(suite, split, part=part)[names.index(task.name)]
        return part_fingerprint(
            task_fingerprint(suite, task.name, split, lm_eval_version=lm_eval_version()), part
        )

    def suite_fingerprints(
        self, suite: SuiteSpec, split: Split, *, part: DevPart | None = None
    ) -> tuple[str, ...]:
        """task_fingerprint of every task (of the examples in `part` of the split, when given)."""
        whole = self._suite_fingerprints(suite, split)
        return whole if part is None else tuple(part_fingerprint(f, part) for f in whole)

    def _suite_fingerprints(self, suite: SuiteSpec, split: Split) -> tuple[str, ...]:
        """task_fingerprint of every task of the suite, computed again only when one of its files changes
        (`evaluators.fingerprint_store`)."""
        key = json.dumps(
            [suite.include_path, suite.split_name(split), [t.name for t in suite.tasks], lm_eval_version()]
            + (["chat"] if suite.apply_chat_template else [])
        )
        return remembered_fingerprints(
            key,
            include_path=suite.include_path,
            store=self.settings.data_dir / FINGERPRINTS_FILE,
            count=len(suite.tasks),
            compute=lambda: tuple(
                task_fingerprint(suite, t.name, split, lm_eval_version=lm_eval_version()) for t in suite.tasks
            ),
        )

    def task_set(self, suite: SuiteSpec, split: Split, *, part: DevPart | None = None) -> TaskSet:
        """The suite's lm-eval tasks for `split` (only the examples of `part`, when given), built on
        first use in this process and then reused."""
        if part is not None and split != "dev":
            raise EvaluationError(f"only the dev split has parts, not the {split} split")
        fingerprints = self.suite_fingerprints(suite, split, part=part)
        key = (
            suite.include_path,
            suite.split_name(split),
            tuple(t.name for t in suite.tasks),
            suite.limit,
            suite.num_fewshot,
            suite.seed,
            part.key if part else None,
        )
        with _build_lock:
            found = _task_sets.get(key)
            if found is None or found.fingerprints != fingerprints:  # task files changed: rebuild
                apply_offline_environment(self.settings)
                if suite.include_path:
                    task_index(suite.include_path)  # SuiteError for a missing folder before lm-eval runs
                manager = _task_manager(suite.include_path)
                tasks = {t.name: _build_task(manager, suite, t, split) for t in suite.tasks}
                if part is not None:
                    for name, task in tasks.items():
                        keep_part(task, suite.split_name(split), part, name=name)
                found = _task_sets[key] = TaskSet(fingerprints, tasks)
        return found

    def evaluate_model(
        self,
        model: Any,
        tokenizer: Any,
        suite: SuiteSpec,
        split: Split,
        *,
        tasks: Sequence[TaskSpec] | None = None,
        progress: Progress | None = None,
        samples: bool = False,
        part: DevPart | None = None,
    ) -> dict[str, TaskScore]:
        """Score an in-memory transformers model (on its own device) on `tasks` (default: all).

        samples: also give each task's per-document metric values (TaskScore.samples, in document
        order), e.g. for paired bootstrap confidence intervals.
        part: only the dev examples of this part (DevPart).
        """
        from evaluators.batched_lm import BatchedLM

        task_set = self.task_set(suite, split, part=part)
        specs = list(tasks if tasks is not None else suite.tasks)
        model.eval()
        lm = BatchedLM(model, tokenizer, batch_size=self.batch_size, show_progress=self.show_progress)
        # one run for all tasks batches best; one per task when progress is reported
        runs = [[s] for s in specs] if progress else [specs]
        chat = ChatTemplate(tokenizer) if suite.apply_chat_template else None
        scores: dict[str, TaskScore] = {}
        with task_set.lock:
            for run in runs:
                prepared = {
                    s.name: task_set.prepare(s.name, seed=suite.seed, limit=suite.limit, chat=chat)
                    for s in run
                }
                results = self._run(lm, prepared)
                scores.update({s.name: _read_score(s, results[s.name], samples=samples) for s in run})
                if progress:
                    progress(len(run))
        self.last_request_seconds = lm.request_seconds
        log.debug("%s: %.3f s in model requests", ", ".join(scores), lm.request_seconds)
        return scores

    def _run(self, lm: Any, tasks: dict[str, PreparedTask]) -> dict[str, TaskResult]:
        """The model on the prepared tasks' requests, then lm-eval's metrics: the only place it runs."""
        try:
            return evaluate_prepared(lm, tasks, bootstrap_iters=self.bootstrap_iters)
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"lm-eval failed on task(s) {', '.join(tasks)}: {first_line(e)}") from e

    def load_checkpoint(self, folder: Path) -> tuple[Any, Any]:
        """Model and tokenizer of a checkpoint folder, loaded offline onto this evaluator's device."""
        apply_offline_environment(self.settings)
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such checkpoint folder")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="auto")
            model.to(device)
        except Exception as e:
            raise EvaluationError(
                f"{folder}: cannot be loaded as a causal language model ({first_line(e)})"
            ) from e
        return model, tokenizer

    def score_tasks(
        self,
        checkpoint: Path,
        suite: SuiteSpec,
        split: Split,
        tasks: Sequence[TaskSpec],
        *,
        progress: Progress | None = None,
        part: DevPart | None = None,
    ) -> dict[str, TaskScore]:
        self.task_set(suite, split, part=part)  # a broken suite fails before the model is loaded
        model, tokenizer = self.load_checkpoint(Path(checkpoint))
        try:
            return self.evaluate_model(
                model, tokenizer, suite, split, tasks=tasks, progress=progress, part=part
            )
        finally:
            del model
            gc.collect()
            if self.device != "cpu":
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
