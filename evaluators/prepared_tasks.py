"""lm-eval tasks' documents and requests built once, and an evaluation as lm-eval's evaluate() runs it.

lm-eval's evaluate() rebuilds every request and re-reads every document on each call, which costs more
than a small model's forward passes. Here they are built once per task (`PreparedTask`); an evaluation
refills the requests' responses from the model, applies the task's filters, scores each document with
the task's own process_results and aggregates the scores with lm-eval's public metric API
(`aggregate_metrics`), giving the numbers evaluate() gives.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from soce.errors import EvaluationError

log = logging.getLogger(__name__)

MEMO_PER_DOCUMENT = 16  # remembered metric results per document before a task's memo starts over
# lm-eval's multiple-choice metrics that depend on the log-likelihoods only through which choice wins
# (raw, per character, per byte) and the greedy flags: their results are remembered by those
_DECISION_METRICS = {"acc", "acc_norm", "acc_bytes", "exact_match", "f1", "mcc"}
# corpus-level metrics whose bootstrap lm-eval caps at 100 resamples (each resample rescores the corpus)
_SLOW_BOOTSTRAP_METRICS = ("bleu", "chrf", "chrf++", "ter")


@dataclass
class PreparedTask:
    """An lm-eval task's documents and requests, built once; each evaluation refills the responses.

    They depend only on the task, split, limit and few-shot seed, all fixed for a TaskSet.
    """

    task: Any
    docs: list[tuple[int, Any]]  # (doc_id, doc) in lm-eval's order
    requests: list[list[Any]]  # each document's Instances, ordered as evaluate() orders them
    instances: list[Any]  # all of them, as task.instances held them when built
    # per document: the choices' lengths in characters and bytes, for multiple-choice tasks whose
    # metrics are all decision metrics (None otherwise)
    choice_lengths: dict[int, tuple[list[float], list[float]]] | None = None
    takes_first: bool = False  # lm-eval gives the task its default filter (it names no filter_list)
    memo: dict[tuple, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, task: Any, *, limit: int | None, chat: Any = None) -> PreparedTask:
        """chat: the model's chat template as lm-eval applies it (`apply_chat_template`), or None."""
        from lm_eval.evaluator_utils import get_sample_size

        if getattr(task, "UNSAFE_CODE", False) or getattr(task, "MULTIMODAL", False):
            raise EvaluationError(f"task {task.config.task!r} runs code or needs images: not supported")
        limit = get_sample_size(task, limit)
        # evaluate()'s call for our options
        if chat is None:
            task.build_all_requests(limit=limit, rank=0, world_size=1)
        else:
            task.build_all_requests(
                limit=limit, rank=0, world_size=1, apply_chat_template=True, chat_template=chat
            )
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
            instances=list(task.instances),
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

    def prepare(self, name: str, *, seed: int, limit: int | None, chat: Any = None) -> PreparedTask:
        """The task's documents and requests (built on first use; the caller holds `lock`).

        chat: the model's chat template (`ChatTemplate`): requests are built per template, since the
        prompts depend on it.
        """
        key = name if chat is None else f"{name}\0{chat.key}"
        if key not in self.prepared:
            task = self.tasks[name]
            task.set_fewshot_seed(seed=seed)
            self.prepared[key] = PreparedTask.build(task, limit=limit, chat=chat)
        prepared = self.prepared[key]
        prepared.task._instances = prepared.instances  # the task's filters read the instances it holds
        return prepared


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
    by_type: dict[str, list[Any]] = {}
    for prepared in tasks.values():
        for instance in prepared.instances:
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
                for key in prepared.instances[0].filtered_resps
            }
        raw: dict[tuple[str, str], list] = {}
        for filter_key, per_doc in filtered.items():
            prepared.score_documents(filter_key, per_doc, raw)
        metrics, n = aggregate_metrics(prepared.task, raw, bootstrap_iters)
        out[name] = TaskResult(metrics, n, raw)
    return out


def aggregate_metrics(
    task: Any, raw: dict[tuple[str, str], list], bootstrap_iters: int | None
) -> tuple[dict[str, Any], int]:
    """Each (metric, filter)'s per-document values aggregated, with its standard error, as lm-eval's
    evaluate() reports them; and the number of documents scored.

    Returns ({"acc,none": ..., "acc_stderr,none": ..., ...}, n). The aggregation is the task's own
    (`task.aggregation()`, the mean for a metric it does not declare) and the standard error lm-eval's
    `stderr_for_metric` gives for it: analytic for means, bootstrapped for corpus metrics, "N/A" where
    there is none, for a single document, or when `bootstrap_iters` is 0 or None.
    """
    from lm_eval.api.metrics import mean, stderr_for_metric

    aggregations = task.aggregation()
    metrics: dict[str, Any] = {}
    n = 0
    for (metric, filter_key), values in raw.items():
        if metric in aggregations:
            aggregate = aggregations[metric]
        else:
            log.warning("task %s declares no aggregation of metric %s: the mean", task.task_name, metric)
            aggregate = mean
        metrics[f"{metric},{filter_key}"] = aggregate(values)
        n = max(n, len(values))  # a document gives each metric at most one value
        stderr = None
        if isinstance(bootstrap_iters, int) and bootstrap_iters > 0:
            iters = min(bootstrap_iters, 100) if metric in _SLOW_BOOTSTRAP_METRICS else bootstrap_iters
            stderr = stderr_for_metric(metric=aggregate, bootstrap_iters=iters)
        metrics[f"{metric}_stderr,{filter_key}"] = stderr(values) if stderr and len(values) > 1 else "N/A"
    return metrics, n
