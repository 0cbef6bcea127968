"""BFCL v4 (Berkeley Function Calling Leaderboard), its single-turn categories: data, prompt and checks,
written after bfcl-eval's own rules without importing it (it pins numpy 1.26.4 and imports every API
client); tests/evaluators/test_bfcl_parity.py runs bfcl-eval's checker on the same answers.

The public surface:
- `CATEGORIES`: the 11 single-turn categories by BFCL's names (simple_python ... live_relevance).
- `find_bfcl_data(source: Path | None = None) -> BfclData`: the bfcl-eval wheel, an unpacked folder
  holding bfcl_eval/data, or the data folder; None: the wheel cached in `<data_dir>/bfcl`, downloaded
  with pip (bfcl-eval==BFCL_EVAL_VERSION) when absent.
- `BfclData.items(category) -> list[BfclItem]`: the items in BFCL's order.
- `BfclItem`: id, category, messages (the question's one turn: [{role, content}]), functions (BFCL's
  function documents), ground_truth ([{name: {parameter: [acceptable values]}}], None for irrelevance,
  live_irrelevance and live_relevance); `to_json()` / `BfclItem.from_json(d)` for JSONL files.
- `prompt_messages(item) -> list[dict]`: the chat messages BFCL's prompt-mode local models get (system
  prompt with the functions as JSON, then the question), to render with the model's chat template.
- `parse_calls(text) -> list[dict]`: the answer's calls as BFCL's prompt mode decodes them, or
  `DecodeError`.
- `check(category, output_text, item) -> Verdict(valid, error)` and `score_item(category, output_text,
  item) -> float` (1.0 or 0.0): BFCL's AST checks and relevance rules.

Errors in the data or arguments raise soce.errors types (EvaluationError, SuiteError) naming the file,
line, item or field.
"""

from evaluators.bfcl.checker import Verdict, check, score_item
from evaluators.bfcl.data import (
    BFCL_EVAL_VERSION,
    CATEGORIES,
    RELEVANCE_CATEGORIES,
    BfclData,
    BfclItem,
    find_bfcl_data,
)
from evaluators.bfcl.parse import DecodeError, parse_calls
from evaluators.bfcl.prompt import prompt_messages, system_prompt

__all__ = [
    "BFCL_EVAL_VERSION",
    "CATEGORIES",
    "RELEVANCE_CATEGORIES",
    "BfclData",
    "BfclItem",
    "DecodeError",
    "Verdict",
    "check",
    "find_bfcl_data",
    "parse_calls",
    "prompt_messages",
    "score_item",
    "system_prompt",
]
