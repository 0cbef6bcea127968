"""Runs bfcl-eval's own evaluation on answers, inside the isolated venv test_bfcl_parity.py makes.

Usage: python bfcl_reference_driver.py CASES.json RESULTS.json

Nothing of SoCE is imported here. bfcl-eval is installed without its dependencies: importing its
checker loads its model registry, which imports every API client (openai, anthropic, google-genai, ...),
and those with their own dependencies take minutes to install and still fail to import here (qwen-agent
wants soundfile). The client libraries below are replaced by empty modules: they are only called to
query models, never to decode or check an answer. bfcl_eval itself is never replaced.

For each case, the verdict comes from the functions bfcl-eval's runner calls for each entry:
`_evaluate_single_ast_entry` (decode with the model handler, then `ast_checker`) and
`_evaluate_single_relevance_entry`, with the handler of a prompt-mode local model, on entries loaded by
bfcl-eval's own loaders. Cases marked `underscore_to_dot` call `ast_checker` directly as for a
function-calling model whose API forbids dots in names (BFCL's function-name rule for those). Prompts
come from the handler's own pre-processing of the loaded entry.
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import json
import sys
import types

# third-party modules bfcl-eval imports only to query models or write leaderboard tables
STUBBED = frozenset(
    {
        "anthropic",
        "boto3",
        "cohere",
        "datamodel_code_generator",
        "google",
        "httpx",
        "mistralai",
        "numpy",
        "openai",
        "pandas",
        "qwen_agent",
        "requests",
        "writerai",
    }
)
stubbed_used: set[str] = set()


class _AnyType(type):
    """A class whose every attribute is another such class: stands in for any name a client exports."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyType(name, (_Anything,), {})

    def __getitem__(cls, item: object) -> type:
        return cls

    def __or__(cls, other: object) -> type:
        return cls

    def __ror__(cls, other: object) -> type:
        return cls


class _Anything(Exception, metaclass=_AnyType):
    """An instance of a stand-in: made from any arguments (an exception too, for `except` clauses)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args)


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _AnyType(name, (_Anything,), {})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] not in STUBBED:
            return None
        stubbed_used.add(fullname.partition(".")[0])
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def main(cases_path: str, results_path: str) -> None:
    sys.meta_path.append(_StubFinder())
    for name in STUBBED:
        assert name not in sys.modules, f"{name} was imported before the stubs"

    from bfcl_eval.constants.enums import Language, ReturnFormat
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING
    from bfcl_eval.eval_checker import eval_runner
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    with open(cases_path, encoding="utf-8") as cases:
        request = json.load(cases)
    model = request["model"]
    handler = eval_runner.get_handler(model)
    # a model whose API forbids dots in function names (its name has no "_": the checker reads "_" as "/")
    dotless = next(n for n, c in MODEL_CONFIG_MAPPING.items() if c.underscore_to_dot and "_" not in n)
    assert not MODEL_CONFIG_MAPPING[model].underscore_to_dot and not MODEL_CONFIG_MAPPING[model].is_fc_model
    results: dict = {"verdicts": {}, "decoded": {}, "prompts": {}, "items": {}, "dotless_model": dotless}

    categories = sorted({case["category"] for case in request["cases"]} | set(request["prompt_ids"]))
    entries, answers = {}, {}
    for category in categories:
        # as the evaluation runner loads them (no language hint) and as generation loads them (with it)
        plain = load_dataset_entry(category, include_prereq=False, include_language_specific_hint=False)
        entries[category] = {e["id"]: e for e in plain}
        if not eval_runner.is_relevance_or_irrelevance(category):
            truth = load_ground_truth_entry(category)
            answers[category] = {e["id"]: t["ground_truth"] for e, t in zip(plain, truth, strict=True)}
        results["items"][category] = [e["id"] for e in plain]
        wanted = set(request["prompt_ids"].get(category, []))
        for entry in load_dataset_entry(category):
            if entry["id"] in wanted:
                data = handler._pre_query_processing_prompting(entry)
                data = handler.add_first_turn_message_prompting(data, entry["question"][0])
                results["prompts"][entry["id"]] = data["message"]

    for case in request["cases"]:
        key, category, output = case["key"], case["category"], case["output"]
        entry = copy.deepcopy(entries[category][case["id"]])
        try:
            decoded = handler.decode_ast(output, ReturnFormat.PYTHON, False)
            results["decoded"][key] = repr(decoded)
        except Exception:
            results["decoded"][key] = None
        try:
            if case.get("underscore_to_dot"):
                calls = handler.decode_ast(output, ReturnFormat.PYTHON, False)
                verdict = ast_checker(
                    entry["function"],
                    calls,
                    copy.deepcopy(answers[category][case["id"]]),
                    Language.PYTHON,
                    category,
                    dotless,
                )
            elif eval_runner.is_relevance_or_irrelevance(category):
                verdict = eval_runner._evaluate_single_relevance_entry(
                    handler, case["id"], output, entry, model, category
                )
            else:
                verdict = eval_runner._evaluate_single_ast_entry(
                    handler,
                    case["id"],
                    output,
                    copy.deepcopy(answers[category][case["id"]]),
                    entry,
                    model,
                    category,
                    language=Language.PYTHON,
                    return_format=ReturnFormat.PYTHON,
                )
            results["verdicts"][key] = {"valid": bool(verdict["valid"]), "error": repr(verdict.get("error"))}
        except Exception as error:  # bfcl-eval itself failed on this case: reported, never hidden
            results["verdicts"][key] = {"crash": f"{type(error).__name__}: {error}"}

    results["stubbed"] = sorted(stubbed_used)
    with open(results_path, "w", encoding="utf-8") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
