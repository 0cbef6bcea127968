"""BFCL's single-turn categories as lm-eval tasks: the task class and its per-item metric.

The task files `soce suite bfcl` writes name these through a small module beside them, so the
`lm_eval` command line (with `--apply_chat_template`) runs the very prompts and checks our evaluator
runs. Each row of a task's data holds one BFCL item: its id, its category, the chat messages of its
prompt (JSON) and the item itself (JSON: functions and acceptable answers).

The prompt is the item's whole message list rendered with the model's own chat template, as BFCL's
prompt-mode local models are prompted; lm-eval's own prompt builder would fold the messages into one
system and one user message, which changes the few items whose question is a conversation.
"""

from __future__ import annotations

import json
from typing import Any

from lm_eval.api.task import ConfigurableTask

from evaluators.bfcl import BfclItem, score_item


def item_messages(doc: dict[str, Any]) -> list[dict[str, str]]:
    return json.loads(doc["messages"])


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """The messages as plain text, for a run without a chat template (not how BFCL prompts)."""
    turns = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "assistant:"])


class BfclTask(ConfigurableTask):
    """A generate_until task whose prompt is the item's chat messages through the chat template."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # lm-eval hands a YAML-defined class its whole config, including the `class` key itself
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def fewshot_context(  # type: ignore[override]
        self,
        doc: dict[str, Any],
        num_fewshot: int,
        system_instruction: str | None = None,
        apply_chat_template: bool = False,
        fewshot_as_multiturn: bool = False,
        chat_template: Any = None,
        gen_prefix: str | None = None,
    ) -> str:
        messages = item_messages(doc)
        if system_instruction:  # lm-eval's --system_instruction goes before BFCL's own system prompt
            if messages and messages[0]["role"] == "system":
                first = messages[0]
                content = f"{system_instruction}\n\n{first['content']}"
                messages = [{**first, "content": content}, *messages[1:]]
            else:
                messages = [{"role": "system", "content": system_instruction}, *messages]
        if apply_chat_template and chat_template is not None:
            return chat_template(messages, add_generation_prompt=True)
        return plain_prompt(messages)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """BFCL's verdict on the model's answer to one item: 1.0 when its check passes, else 0.0."""
    item = BfclItem.from_json(json.loads(doc["item"]))
    return {"accuracy": score_item(doc["category"], results[0], item)}
