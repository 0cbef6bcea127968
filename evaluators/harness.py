"""The `lm_eval` evaluator: lm-evaluation-harness in-process on an in-memory model.

A weight search evaluates the same tasks hundreds of times on one model whose weights change in
place, so the lm-eval Task objects (datasets loaded, configs resolved) are built once per process
for each (suite, split, limit, few-shot, seed, task files) and reused; nothing that depends on the
weights is kept. lm-eval, torch and transformers are imported only when a model is evaluated.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from evaluators._base import Progress, TaskEvaluator
from evaluators.task_files import declared_splits, task_fingerprint, task_index
from soce.config import Settings, get_settings
from soce.errors import EvaluationError, SuiteError
from soce.schemas.scores import TaskScore
from soce.schemas.suite import Split, SuiteSpec, TaskSpec

log = logging.getLogger(__name__)


@cache
def lm_eval_version() -> str:
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


@dataclass
class TaskSet:
    """lm-eval Task objects for one suite split; `lock` serialises evaluations, which mutate them."""

    fingerprints: tuple[str, ...]
    tasks: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)


_task_sets: dict[tuple, TaskSet] = {}
_managers: dict[None, Any] = {}
_build_lock = threading.Lock()


@cache
def quiet_hflm_class() -> type:
    """HFLM that can hide its progress bars (evaluate() never asks) and times its model requests."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        show_progress = False
        request_seconds = 0.0  # wall time inside loglikelihood / generate_until: the model's share

        def _timed(self, method: Any, requests: list, disable_tqdm: bool) -> list:
            started = time.perf_counter()
            try:
                return method(requests, disable_tqdm=disable_tqdm or not self.show_progress)
            finally:
                self.request_seconds += time.perf_counter() - started

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
            return self._timed(super().loglikelihood, requests, disable_tqdm)

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
            return self._timed(super().loglikelihood_rolling, requests, disable_tqdm)

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
            return self._timed(super().generate_until, requests, disable_tqdm)

    return QuietHFLM


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


def _read_score(spec: TaskSpec, results: dict[str, Any]) -> TaskScore:
    res = results["results"].get(spec.name, {})
    if spec.metric not in res:
        produced = [k for k in res if "," in k and "_stderr," not in k]
        raise EvaluationError(
            f"task {spec.name!r} produced no metric {spec.metric!r} "
            f"(it produced: {', '.join(produced) or 'none'})"
        )
    name, _, filt = spec.metric.partition(",")
    stderr = res.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
    n = results.get("n-samples", {}).get(spec.name, {}).get("effective")
    return TaskScore(
        task=spec.name,
        metric=spec.metric,
        value=float(res[spec.metric]),
        stderr=float(stderr) if isinstance(stderr, int | float) else None,
        n=int(n) if n is not None else None,
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
        return f"1+lm_eval-{lm_eval_version()}"

    def task_fingerprint(self, suite: SuiteSpec, task: TaskSpec, split: Split) -> str:
        return task_fingerprint(suite, task.name, split, lm_eval_version=lm_eval_version())

    def task_set(self, suite: SuiteSpec, split: Split) -> TaskSet:
        """The suite's lm-eval tasks for `split`, built on first use in this process and then reused."""
        fingerprints = tuple(self.task_fingerprint(suite, t, split) for t in suite.tasks)
        key = (
            suite.include_path,
            suite.split_name(split),
            tuple(t.name for t in suite.tasks),
            suite.limit,
            suite.num_fewshot,
            suite.seed,
        )
        with _build_lock:
            found = _task_sets.get(key)
            if found is None or found.fingerprints != fingerprints:  # task files changed: rebuild
                apply_offline_environment(self.settings)
                if suite.include_path:
                    task_index(suite.include_path)  # SuiteError for a missing folder before lm-eval runs
                manager = _task_manager(suite.include_path)
                tasks = {t.name: _build_task(manager, suite, t, split) for t in suite.tasks}
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
    ) -> dict[str, TaskScore]:
        """Score an in-memory transformers model (on its own device) on `tasks` (default: all)."""
        task_set = self.task_set(suite, split)
        specs = list(tasks if tasks is not None else suite.tasks)
        model.eval()
        lm = quiet_hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
        lm.show_progress = self.show_progress
        # one lm-eval run for all tasks batches best; one per task when a progress bar is shown
        runs = [[s] for s in specs] if progress else [specs]
        scores: dict[str, TaskScore] = {}
        with task_set.lock:
            for run in runs:
                for s in run:
                    task_set.tasks[s.name].set_fewshot_seed(seed=suite.seed)
                results = self._run(lm, {s.name: task_set.tasks[s.name] for s in run}, limit=suite.limit)
                scores.update({s.name: _read_score(s, results) for s in run})
                if progress:
                    progress(len(run))
        self.last_request_seconds = lm.request_seconds
        log.debug("%s: %.3f s in model requests", ", ".join(scores), lm.request_seconds)
        return scores

    def _run(self, lm: Any, tasks: dict[str, Any], *, limit: int | None) -> dict[str, Any]:
        """One lm-eval evaluate() over prebuilt tasks: the only place the model runs."""
        from lm_eval.evaluator import evaluate

        try:
            results = evaluate(
                lm=lm,
                task_dict={"tasks": tasks, "groups": {}},
                limit=limit,
                bootstrap_iters=self.bootstrap_iters,
                log_samples=False,
            )
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"lm-eval failed on task(s) {', '.join(tasks)}: {first_line(e)}") from e
        if results is None:
            raise EvaluationError("lm-eval returned no results (not rank 0 of a distributed run)")
        return results

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
    ) -> dict[str, TaskScore]:
        self.task_set(suite, split)  # a broken suite fails before the model is loaded
        model, tokenizer = self.load_checkpoint(Path(checkpoint))
        try:
            return self.evaluate_model(model, tokenizer, suite, split, tasks=tasks, progress=progress)
        finally:
            del model
            gc.collect()
            if self.device != "cpu":
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
