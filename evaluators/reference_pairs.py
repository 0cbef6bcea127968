"""Each document's reference answer as a loglikelihood request: (context, continuation), from lm-eval's
own requests.

The learned soup maximises the log-likelihood of the reference answers on dev. The pairs are read from
the task set the evaluations use (`LmEvalEvaluator.task_set`: the same documents, few-shot contexts and
dev part), so the gradient sees exactly the prompts the trials are scored on:
- multiple choice: the request of the gold choice (lm-eval's `doc_to_target`, or the gold context of
  a multiple-input task), as the model scores it;
- generate_until: the generation request's context and the target text (`doc_to_target`) after the
  task's target delimiter (as a few-shot example shows an answer; with the chat template, the
  delimiter lm-eval puts before a choice there);
- loglikelihood: the request itself; loglikelihood_rolling: the whole text after an empty context.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from soce.errors import EvaluationError
from soce.schemas.suite import DevPart, Split, SuiteSpec


class ReferencePair(NamedTuple):
    context: str
    continuation: str
    task: str


def _gold_index(task: Any, doc: Any) -> int | None:
    """The gold choice of a multiple-choice document (the first, when several are gold)."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, list | tuple):
        gold = gold[0] if gold else None
    if isinstance(gold, str):
        choices = [str(c) for c in task.doc_to_choice(doc)]
        return choices.index(gold) if gold in choices else (int(gold) if gold.isdigit() else None)
    return int(gold) if isinstance(gold, int) else None


def _target_text(task: Any, doc: Any) -> str | None:
    """The reference answer of a generation document (the first, when there are several)."""
    target = task.doc_to_target(doc)
    if isinstance(target, list | tuple):
        target = target[0] if target else None
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    return None if target is None else str(target)


def _delimiter(task: Any, chat: bool) -> str:
    """What separates a context from its answer: as lm-eval's construct_requests sets it for choices."""
    delimiter = task.config.target_delimiter
    prefix = task.config.gen_prefix
    if chat and not (prefix and not prefix[-1:].isspace()):
        return ""
    return delimiter


def _reference(task: Any, doc: Any, requests: list[Any], chat: bool) -> tuple[str, str] | None:
    kind = task.OUTPUT_TYPE
    if not requests:
        return None
    if kind == "multiple_choice":
        gold = _gold_index(task, doc)
        if gold is None or not 0 <= gold < len(requests):
            return None
        context, continuation = requests[gold].args[:2]
        return context, continuation
    if kind == "generate_until":
        target = _target_text(task, doc)
        if not target:
            return None
        return requests[0].args[0], f"{_delimiter(task, chat)}{target}"
    if kind == "loglikelihood":
        context, continuation = requests[0].args[:2]
        return context, continuation
    if kind == "loglikelihood_rolling":
        return "", requests[0].args[0]
    return None


def reference_pairs(
    evaluator: Any, suite: SuiteSpec, split: Split, part: DevPart | None = None, *, tokenizer: Any = None
) -> list[ReferencePair]:
    """Every document's reference answer on `split` (only `part` of dev, if given), task by task in the
    suite's order; documents without a usable reference (an empty target) are left out.

    tokenizer: the model's, needed when the suite applies its chat template (the prompts depend on it).
    """
    if not hasattr(evaluator, "task_set"):
        raise EvaluationError(
            f"the {evaluator.name} evaluator has no lm-eval requests to take reference answers from"
        )
    chat = None
    if getattr(suite, "apply_chat_template", False):
        from evaluators.harness import ChatTemplate

        chat = ChatTemplate(tokenizer)
    task_set = evaluator.task_set(suite, split, part=part)
    out: list[ReferencePair] = []
    with task_set.lock:
        for spec in suite.tasks:
            prepared = task_set.prepare(spec.name, seed=suite.seed, limit=suite.limit, chat=chat)
            for (_, doc), requests in zip(prepared.docs, prepared.requests, strict=True):
                pair = _reference(prepared.task, doc, requests, chat is not None)
                if pair is not None and pair[1]:
                    out.append(ReferencePair(pair[0], pair[1], spec.name))
    return out
