"""The `lm_eval` evaluator: lm-evaluation-harness in-process on an in-memory model.

A weight search evaluates the same tasks hundreds of times on one model whose weights change in
place, so everything that does not depend on the weights is built once per process for each
(suite, split, limit, few-shot, seed, task files) and reused: the lm-eval Task objects (datasets
loaded, configs resolved), their documents and requests (`PreparedTask`), and in the model
(`evaluators.batched_lm.BatchedLM`) the tokens and batches of those requests. An evaluation runs the
forward passes, then lm-eval's own filters, per-document metrics and aggregations, as its evaluate()
would. lm-eval, torch and transformers are imported only when a model is evaluated.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, NamedTuple

from evaluators._base import Progress, TaskEvaluator
from evaluators.task_files import (
    declared_splits,
    read_task_yaml,
    string_list,
    task_fingerprint,
    task_index,
)
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


# --- task fingerprints, remembered with the sizes and times of the files they were computed from ---

FINGERPRINTS_FILE = "task-fingerprints.json"  # under the data folder: fingerprints with their file stamps
FINGERPRINTS_KEPT = 64
_fingerprints: dict[str, tuple[dict, tuple[str, ...]]] = {}  # suite split -> (files stamp, fingerprints)


def _walk(folder: str) -> list[list]:
    """[path, size, mtime] of the files under a folder, in a stable order."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            found += _walk(entry.path)
        elif entry.is_file():
            st = entry.stat()
            found.append([entry.path, st.st_size, st.st_mtime_ns])
    return found


def _stat(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_size, st.st_mtime_ns]


def files_stamp(include_path: str | None) -> dict[str, Any] | None:
    """Sizes and modification times of every file the fingerprints of a task folder read (None: no
    such folder): the folder's files (YAMLs, Python helpers) and those its YAMLs name (includes and
    their folders, data files, local dataset folders), as evaluators.task_files._config_content reads
    them. `stamp_holds` checks it again with stat calls only, no YAML parsing or hashing.
    """
    if not include_path:
        return {"folders": {}, "files": []}
    if not os.path.isdir(include_path):
        return None
    folders = {include_path: _walk(include_path)}
    files: list[list] = []
    yamls = [p for p, _, _ in folders[include_path] if p.endswith(".yaml")]
    seen: set[str] = set()
    while yamls:
        path = yamls.pop()
        if path in seen:
            continue
        seen.add(path)
        cfg = read_task_yaml(Path(path))
        kwargs = cfg.get("dataset_kwargs")
        data = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        named = [*string_list(cfg.get("include")), *string_list(cfg.get("dataset_path"))]
        for refs in data.values() if isinstance(data, dict) else [data]:
            named += string_list(refs)
        for ref in named:
            if ref.strip() in ("", "."):
                continue
            here = os.path.expanduser(ref)
            for candidate in dict.fromkeys((here, os.path.join(os.path.dirname(path), here))):
                found = _stat(candidate)
                if found is None:
                    continue
                if os.path.isdir(candidate):
                    folders.setdefault(candidate, _walk(candidate))
                    continue
                files.append(found)
                if candidate.endswith(".yaml"):  # an include: what it names, and its folder's helpers
                    yamls.append(candidate)
                    parent = os.path.dirname(candidate)
                    folders.setdefault(parent, _walk(parent))
    return {"folders": folders, "files": files}


def stamp_holds(stamp: dict[str, Any]) -> bool:
    """Whether no file of a `files_stamp` changed (or appeared in, or left, its folders)."""
    try:
        return all(_walk(folder) == entries for folder, entries in stamp["folders"].items()) and all(
            _stat(path) == [path, size, mtime] for path, size, mtime in stamp["files"]
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


def _read_fingerprints(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_fingerprints(store: Path, key: str, entry: tuple[dict, tuple[str, ...]]) -> None:
    """Add an entry to the file of remembered fingerprints (replaced atomically; best effort)."""
    data = _read_fingerprints(store)
    data.pop(key, None)
    data[key] = [entry[0], list(entry[1])]
    data = dict(list(data.items())[-FINGERPRINTS_KEPT:])
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        partial = store.with_name(f".{store.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(data))
        os.replace(partial, store)
    except OSError as e:
        log.debug("cannot remember task fingerprints in %s (%s)", store, e)


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


# --- documents and requests built once; an evaluation as lm-eval's evaluate() does it ---

MEMO_PER_DOCUMENT = 16  # remembered metric results per document before a task's memo starts over
# lm-eval's multiple-choice metrics that depend on the log-likelihoods only through which choice wins
# (raw, per character, per byte) and the greedy flags: their results are remembered by those
_DECISION_METRICS = {"acc", "acc_norm", "acc_bytes", "exact_match", "f1", "mcc"}


@dataclass
class PreparedTask:
    """An lm-eval task's documents and requests, built once; each evaluation refills the responses.

    lm-eval's evaluate() rebuilds every request and re-reads every document from the dataset on each
    call, which costs more than a small model's forward passes; they depend only on the task, split,
    limit and few-shot seed, all fixed for a TaskSet.
    """

    task: Any
    docs: list[tuple[int, Any]]  # (doc_id, doc) in lm-eval's order
    requests: list[list[Any]]  # each document's Instances, ordered as evaluate() orders them
    # per document: the choices' lengths in characters and bytes, for multiple-choice tasks whose
    # metrics are all decision metrics (None otherwise)
    choice_lengths: dict[int, tuple[list[float], list[float]]] | None = None
    takes_first: bool = False  # lm-eval gives the task its default filter (it names no filter_list)
    memo: dict[tuple, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, task: Any, *, limit: int | None) -> PreparedTask:
        from lm_eval.evaluator_utils import get_sample_size

        if getattr(task, "UNSAFE_CODE", False) or getattr(task, "MULTIMODAL", False):
            raise EvaluationError(f"task {task.config.task!r} runs code or needs images: not supported")
        limit = get_sample_size(task, limit)
        task.build_all_requests(limit=limit, rank=0, world_size=1)  # evaluate()'s call for our options
        docs = list(task.doc_iterator(rank=0, limit=limit, world_size=1))
        by_doc: dict[int, list[Any]] = {}
        for instance in task.instances:
            by_doc.setdefault(instance.doc_id, []).append(instance)
        for group in by_doc.values():
            group.sort(key=lambda x: x.idx)
        lengths = None
        if (
            task.OUTPUT_TYPE == "multiple_choice"
            and not callable(task.config.process_results)
            and set(task.aggregation()) <= _DECISION_METRICS
        ):
            choices = {doc_id: [str(c) for c in task.doc_to_choice(doc)] for doc_id, doc in docs}
            lengths = {}
            for doc_id, cs in choices.items():
                if all(cs):  # an empty choice divides by zero: left to lm-eval
                    chars = [float(len(c)) for c in cs]
                    nbytes = [float(len(c.encode("utf-8"))) for c in cs]
                    lengths[doc_id] = (chars, chars if nbytes == chars else nbytes)  # ASCII: one list
        return cls(
            task=task,
            docs=docs,
            requests=[by_doc.get(doc_id, []) for doc_id, _ in docs],
            choice_lengths=lengths,
            takes_first=task.config.filter_list is None,
        )

    def _memo_key(self, doc_id: int, filter_key: str, responses: list) -> tuple | None:
        """What task.process_results depends on besides the document, when that is known to repeat:
        which choice wins and the greedy flags (decision metrics only), or a generation's text."""
        if self.choice_lengths is not None:
            lengths = self.choice_lengths.get(doc_id)
            if lengths is None or len(responses) != len(lengths[0]):
                return None
            try:
                lls = [r[0] for r in responses]
                greedy = tuple([r[1] for r in responses])
                total = sum(lls)
                if total != total:  # a NaN: left to lm-eval
                    return None
            except (TypeError, IndexError, KeyError):
                return None
            chars, nbytes = lengths
            per_char = [ll / n for ll, n in zip(lls, chars, strict=True)]
            best_char = per_char.index(max(per_char))  # numpy.argmax: the first of the largest
            if nbytes is not chars:
                per_byte = [ll / n for ll, n in zip(lls, nbytes, strict=True)]
                best_byte = per_byte.index(max(per_byte))
            else:
                best_byte = best_char
            return (filter_key, doc_id, lls.index(max(lls)), best_char, best_byte, greedy)
        if all(type(r) is str for r in responses):
            return (filter_key, doc_id, *responses)
        return None

    def score_documents(
        self, filter_key: str, responses: list[list], raw: dict[tuple[str, str], list]
    ) -> None:
        """task.process_results of every document (`responses[i]` are document i's filtered responses),
        appended to `raw` by (metric, filter); remembered where its inputs repeat (see _memo_key)."""
        process, memo, memo_key = self.task.process_results, self.memo, self._memo_key
        limit = MEMO_PER_DOCUMENT * max(1, len(self.docs))
        for (doc_id, doc), answers in zip(self.docs, responses, strict=True):
            key = memo_key(doc_id, filter_key, answers)
            if key is None:
                metrics = process(doc, answers)
            elif (metrics := memo.get(key)) is None:
                if len(memo) >= limit:
                    memo.clear()
                metrics = memo[key] = process(doc, answers)
            for metric, value in metrics.items():
                raw.setdefault((metric, filter_key), []).append(value)


@dataclass
class TaskSet:
    """lm-eval Task objects for one suite split; `lock` serialises evaluations, which mutate them."""

    fingerprints: tuple[str, ...]
    tasks: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    prepared: dict[str, PreparedTask] = field(default_factory=dict)

    def prepare(self, name: str, *, seed: int, limit: int | None) -> PreparedTask:
        """The task's documents and requests (built on first use; the caller holds `lock`)."""
        if name not in self.prepared:
            task = self.tasks[name]
            task.set_fewshot_seed(seed=seed)
            self.prepared[name] = PreparedTask.build(task, limit=limit)
        return self.prepared[name]


class TaskResult(NamedTuple):
    """One task's results as lm-eval's evaluate() computes them."""

    metrics: dict[str, Any]  # "acc,none", "acc_stderr,none", ... as in lm-eval's results
    n: int  # documents scored
    per_doc: dict[tuple[str, str], list]  # (metric, filter) -> its value on each document, in order


def evaluate_prepared(
    lm: Any, tasks: dict[str, PreparedTask], *, bootstrap_iters: int
) -> dict[str, TaskResult]:
    """What lm-eval's evaluate() does with built requests: run the model on all of them, apply the
    filters, score each document with the task's own metrics and aggregate them."""
    from lm_eval.evaluator_utils import _compute_task_aggregations  # evaluate()'s own aggregation

    by_type: dict[str, list[Any]] = {}
    for prepared in tasks.values():
        for instance in prepared.task.instances:
            instance.resps, instance.filtered_resps = [], {}
            by_type.setdefault(instance.request_type, []).extend([instance] * instance.repeats)
    for request_type, instances in by_type.items():
        for response, instance in zip(getattr(lm, request_type)(instances), instances, strict=True):
            instance.resps.append(response)
    out = {}
    for name, prepared in tasks.items():
        if prepared.takes_first:  # lm-eval's default filter, "none": each request's first response
            filtered = {"none": [[i.resps[0] for i in instances] for instances in prepared.requests]}
        else:
            prepared.task.apply_filters()
            filtered = {
                key: [[i.filtered_resps[key] for i in instances] for instances in prepared.requests]
                for key in prepared.task.instances[0].filtered_resps
            }
        raw: dict[tuple[str, str], list] = {}
        for filter_key, per_doc in filtered.items():
            prepared.score_documents(filter_key, per_doc, raw)
        metrics, n = _compute_task_aggregations(prepared.task, raw, bootstrap_iters)
        out[name] = TaskResult(metrics, n, raw)
    return out


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
        """task_fingerprint of every task of the suite, computed again only when one of its files changes.

        They are remembered in this process and in the data folder with the sizes and modification
        times of the files they were computed from (`files_stamp`): checking those costs stat calls,
        where computing them parses every task YAML (most of a score-cache hit in a fresh process).
        """
        key = json.dumps(
            [suite.include_path, suite.split_name(split), [t.name for t in suite.tasks], lm_eval_version()]
        )
        found = _fingerprints.get(key)
        if found is not None and stamp_holds(found[0]):
            return found[1]
        store = self.settings.data_dir / FINGERPRINTS_FILE
        stored = _read_fingerprints(store).get(key)
        if stored is not None and len(stored[1]) == len(suite.tasks) and stamp_holds(stored[0]):
            found = _fingerprints[key] = (stored[0], tuple(stored[1]))
            return found[1]
        stamp = files_stamp(suite.include_path)  # before the fingerprints: a change in between shows
        fingerprints = tuple(
            task_fingerprint(suite, t.name, split, lm_eval_version=lm_eval_version()) for t in suite.tasks
        )
        if stamp is not None:
            _fingerprints[key] = (stamp, fingerprints)
            _write_fingerprints(store, key, (stamp, fingerprints))
        return fingerprints

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
        scores: dict[str, TaskScore] = {}
        with task_set.lock:
            for run in runs:
                prepared = {s.name: task_set.prepare(s.name, seed=suite.seed, limit=suite.limit) for s in run}
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
