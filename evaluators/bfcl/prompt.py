"""The prompt BFCL's prompt-mode local models get on a single-turn item, as chat messages.

BFCL's default prompt format (python return format, no tool-call tags, function docs as JSON, plain
text, classic style): a system prompt listing the functions, placed before the question's own system
message when it has one. Each function's description first gets BFCL's note on the language of the
Python categories. The caller renders the messages with the model's own chat template.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from evaluators.bfcl.data import BfclItem

PYTHON_NOTE = " Note that the provided function is in Python 3 syntax."
OUTPUT_FORMAT = "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]"

# BFCL's template is "{persona}{task}\n\n{tool_call_format}\n\n{multiturn_behavior}\n\n{available_tools}":
# no space between persona and task, and its empty parameter-type sentence leaves two spaces after the
# output format. Both are kept: the prompt is BFCL's byte for byte.
_PERSONA = "You are an expert in composing functions."
_TASK = (
    "You are given a question and a set of possible functions. Based on the question, you will need to "
    "make one or more function/tool calls to achieve the purpose. If none of the functions can be used, "
    "point it out. If the given question lacks the parameters required by the function, also point it out."
)
_TOOL_CALL_FORMAT = (
    "You should only return the function calls in your response.\n\n"
    f"If you decide to invoke any of the function(s), you MUST put it in the format of {OUTPUT_FORMAT}.  "
    "You SHOULD NOT include any other text in the response."
)
_MULTITURN_BEHAVIOR = (
    "At each turn, you should try your best to complete the tasks requested by the user within the "
    "current turn. Continue to output functions to call until you have fulfilled the user's request to the "
    "best of your ability. Once you have no more functions to call, the system will consider the current "
    "turn complete and proceed to the next turn or task."
)
_AVAILABLE_TOOLS = "Here is a list of functions in json format that you can invoke.\n{functions}\n"


def function_docs(item: BfclItem) -> list[dict[str, Any]]:
    """The item's functions as BFCL shows them to the model: each description ends with the Python note
    (BFCL changes parameter types only for its Java and JavaScript categories)."""
    docs = copy.deepcopy(item.functions)
    for doc in docs:
        doc["description"] = doc["description"] + PYTHON_NOTE
    return docs


def system_prompt(functions: list[dict[str, Any]]) -> str:
    """BFCL's default prompt-mode system prompt for these function documents."""
    tools = _AVAILABLE_TOOLS.format(functions=json.dumps(functions, indent=4))
    return f"{_PERSONA}{_TASK}\n\n{_TOOL_CALL_FORMAT}\n\n{_MULTITURN_BEHAVIOR}\n\n{tools}"


def prompt_messages(item: BfclItem) -> list[dict[str, str]]:
    """The chat messages of the item's prompt: BFCL's system prompt, merged into the question's own
    system message when it has one (BFCL's prompt, a blank line, then that message), then the question."""
    prompt = system_prompt(function_docs(item))
    messages = [dict(message) for message in item.messages]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = prompt + "\n\n" + messages[0]["content"]
    else:
        messages.insert(0, {"role": "system", "content": prompt})
    return messages
