"""BatchedLM gives lm-eval's HFLM results on the reference zoo, and the evaluator built on it gives
lm-eval's scores, per-document values on request, and fingerprints that follow the task files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from evaluators import LmEvalEvaluator, fingerprint_store, harness
from evaluators.batched_lm import BatchedLM
from evaluators.harness import lm_eval_version
from evaluators.task_files import task_fingerprint
from soce.schemas.suite import SuiteSpec
from tests.evaluators.task_folder import Zoo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
# float32 sums over differently composed batches: HFLM's own log-probabilities move by up to ~3e-5
# between batch sizes 8 and 32 on the demo zoo
CLOSE = {"rel": 1e-5, "abs": 5e-5}

LONG = "fwd " + " ".join(
    f"{k}{v}" for k, v in zip("abcdefghijklmnopqrstuvwxyz", "3141592653589793238462643", strict=False)
)


@pytest.fixture(scope="module")
def zoo_suite(tiny_zoo: Path) -> SuiteSpec:
    return SuiteSpec.from_file(tiny_zoo / "suite.yaml")


@pytest.fixture(scope="module")
def candidate(tiny_zoo: Path) -> tuple:
    from soce.zoo.build import candidate_paths

    return LmEvalEvaluator(device="cpu").load_checkpoint(candidate_paths(tiny_zoo)[0])


def zoo_requests(suite: SuiteSpec, request_type: str) -> list:
    """lm-eval's requests of every task of the zoo's dev split."""
    task_set = LmEvalEvaluator().task_set(suite, "dev")
    found = []
    for spec in suite.tasks:
        prepared = task_set.prepare(spec.name, seed=suite.seed, limit=suite.limit)
        found += [i for i in prepared.task.instances if i.request_type == request_type]
    assert found, request_type
    return found


def request(request_type: str, *args) -> object:
    from lm_eval.api.instance import Instance

    return Instance(request_type, doc={}, arguments=tuple(args), idx=0, metadata=("extra", 0, 1))


def hflm(model, tokenizer, batch_size: int = 8):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def test_loglikelihoods_equal_hflms(zoo_suite: SuiteSpec, candidate: tuple) -> None:
    model, tokenizer = candidate
    extra = [
        request("loglikelihood", "add 12 7= ", "19"),  # the trailing space moves to the continuation
        request("loglikelihood", "rot abc=  ", "bcd"),
        request("loglikelihood", "", "rev ab=ba"),  # empty context: conditioned on BOS
        request("loglikelihood", "<s>add 1 2=", "3"),  # starts with BOS: no second one
        request("loglikelihood", LONG, "=5"),  # longer than the model: truncated on the left
        request("loglikelihood", "add 4 4=", "8"),
        request("loglikelihood", "add 4 4=", "80"),  # shares its row with the line above
    ]
    requests = zoo_requests(zoo_suite, "loglikelihood") + extra
    ours = BatchedLM(model, tokenizer, batch_size=8)
    got = ours.loglikelihood(requests)
    assert ours.loglikelihood(requests) == got  # the cached plan gives the same numbers
    want = hflm(model, tokenizer).loglikelihood(requests, disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], **CLOSE)
    assert any(g for _, g in got) and not all(g for _, g in got)


def test_requests_sharing_a_row_are_scored_as_alone(candidate: tuple) -> None:
    """The same tokens split differently into context and continuation share one forward row.

    lm-eval 0.4.13's HFLM also runs such requests once, but then reads the shorter continuation's
    log-probabilities from the start of the longer one's: scored alone, it agrees with us.
    """
    model, tokenizer = candidate
    pair = [request("loglikelihood", "<s>add 1 2=", "3"), request("loglikelihood", "", "add 1 2=3")]
    got = BatchedLM(model, tokenizer, batch_size=8).loglikelihood(pair)
    alone = [hflm(model, tokenizer).loglikelihood([r], disable_tqdm=True)[0] for r in pair]
    assert [g for _, g in got] == [g for _, g in alone]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in alone], **CLOSE)


def test_rolling_loglikelihoods_equal_hflms(candidate: tuple) -> None:
    model, tokenizer = candidate
    requests = [request("loglikelihood_rolling", s) for s in ("add 12 7=19", LONG, LONG + LONG, "x")]
    got = BatchedLM(model, tokenizer, batch_size=3).loglikelihood_rolling(requests)
    want = hflm(model, tokenizer, batch_size=3).loglikelihood_rolling(requests, disable_tqdm=True)
    assert got == pytest.approx(want, **CLOSE)


def test_generations_equal_hflms(zoo_suite: SuiteSpec, candidate: tuple) -> None:
    model, tokenizer = candidate
    greedy = {"do_sample": False}
    prompts = [
        "add 12 7=",
        "add 1 10=",
        "add 3 4=",
        "add 15 16=",
        "shf 1 abcd=",
        "cnt a abca=",
        "fwd kqz bam=",
    ]
    ours = BatchedLM(model, tokenizer, batch_size=4)
    free = ours.generate_until(
        [request("generate_until", p, {"until": [], "max_gen_toks": 6, **greedy}) for p in prompts]
    )
    # a stop string that ends some rows at their first token and others later: rows of one batch
    # then stop at different steps
    stop = next(c for c in dict.fromkeys(t[0] for t in free if t) if any(c not in t[:2] for t in free))
    extra = [request("generate_until", p, {"until": [stop], "max_gen_toks": 6, **greedy}) for p in prompts]
    extra += [
        request("generate_until", "add 2 2= ", {"until": ["\n"], "max_gen_toks": 4, **greedy}),
        request("generate_until", "shf 2 abc=", {"until": "c", "max_gen_toks": 5, **greedy}),
        request("generate_until", "add 3 3=", {"until": [], "max_gen_toks": 7, **greedy}),
        request("generate_until", LONG + "=", {"until": ["\n"], "max_gen_toks": 3, **greedy}),
        # a setting our greedy loop does not do: model.generate with HFLM's arguments
        request(
            "generate_until", "shf 1 abab=", {"until": ["\n"], "max_gen_toks": 6, "repetition_penalty": 2.0}
        ),
    ]
    requests = zoo_requests(zoo_suite, "generate_until") + extra
    got = ours.generate_until(requests)
    assert ours.generate_until(requests) == got
    assert got == hflm(model, tokenizer, batch_size=4).generate_until(requests, disable_tqdm=True)
    cut = got[-len(extra) : -len(extra) + len(prompts)]
    assert "" in cut and any(len(text) > 1 for text in cut), (stop, cut)


def test_scores_equal_lm_evals_simple_evaluate(
    tiny_zoo: Path, zoo_suite: SuiteSpec, candidate: tuple
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model, tokenizer = candidate
    ours = LmEvalEvaluator(batch_size=8).evaluate_model(model, tokenizer, zoo_suite, "dev")
    ours_again = LmEvalEvaluator(batch_size=8).evaluate_model(model, tokenizer, zoo_suite, "dev")
    split = zoo_suite.split_name("dev")
    theirs = simple_evaluate(
        model=hflm(model, tokenizer),
        tasks=[{"group": "g", "task": [{"task": t.name, "test_split": split} for t in zoo_suite.tasks]}],
        task_manager=TaskManager(include_path=zoo_suite.include_path, include_defaults=False),
        num_fewshot=zoo_suite.num_fewshot,
        limit=zoo_suite.limit,
        log_samples=False,
        fewshot_random_seed=zoo_suite.seed,
    )
    for spec in zoo_suite.tasks:
        res, mine = theirs["results"][spec.name], ours[spec.name]
        name, _, filt = spec.metric.partition(",")
        assert mine.value == pytest.approx(res[spec.metric], abs=1e-12), spec.name
        assert mine.stderr == pytest.approx(res[f"{name}_stderr,{filt}"], abs=1e-12), spec.name
        assert mine.n == theirs["n-samples"][spec.name]["effective"]
        assert ours_again[spec.name] == mine  # remembered metrics give the same scores


def test_per_document_values_average_to_the_score(zoo_suite: SuiteSpec, candidate: tuple) -> None:
    model, tokenizer = candidate
    evaluator = LmEvalEvaluator(batch_size=8)
    scores = evaluator.evaluate_model(model, tokenizer, zoo_suite, "dev", samples=True)
    for spec in zoo_suite.tasks:
        score = scores[spec.name]
        assert score.samples is not None and len(score.samples) == score.n
        assert set(score.samples) <= {0.0, 1.0}
        assert statistics.fmean(score.samples) == pytest.approx(score.value, abs=1e-12)
    plain = evaluator.evaluate_model(model, tokenizer, zoo_suite, "dev")
    assert all(s.samples is None and "samples" not in s.model_dump() for s in plain.values())
    assert {k: s.model_copy(update={"samples": None}) for k, s in scores.items()} == plain

    with torch.no_grad():  # different weights: different per-document values, same documents
        saved = model.lm_head.weight.clone()
        model.lm_head.weight.mul_(0.5)
        try:
            halved = evaluator.evaluate_model(model, tokenizer, zoo_suite, "dev", samples=True)
        finally:
            model.lm_head.weight.copy_(saved)
    assert all(len(halved[t.name].samples) == len(scores[t.name].samples) for t in zoo_suite.tasks)


def test_suite_fingerprints_follow_the_files(fresh_zoo: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluator, suite = LmEvalEvaluator(), fresh_zoo.suite
    computed: list[str] = []  # tasks whose fingerprint was computed from the files

    def counted(suite: SuiteSpec, name: str, split: str, **kwargs) -> str:
        computed.append(name)
        return task_fingerprint(suite, name, split, **kwargs)

    monkeypatch.setattr(harness, "task_fingerprint", counted)
    first = evaluator.suite_fingerprints(suite, "dev")
    assert first == tuple(
        task_fingerprint(suite, t.name, "dev", lm_eval_version=lm_eval_version()) for t in suite.tasks
    )
    assert [evaluator.task_fingerprint(suite, t, "dev") for t in suite.tasks] == list(first)
    assert len(computed) == len(suite.tasks)  # then remembered: checking the files costs stat calls

    data = fresh_zoo.root / "data" / "zoo_rev_gen" / "dev.jsonl"
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": "rev xyz=", "target": "zyx"}) + "\n")
    edited = evaluator.suite_fingerprints(suite, "dev")
    assert edited[0] == first[0] and edited[1] != first[1]
    assert len(computed) == 2 * len(suite.tasks)

    fingerprint_store._fingerprints.clear()  # as in a fresh process: read back from the data folder
    assert evaluator.suite_fingerprints(suite, "dev") == edited
    assert len(computed) == 2 * len(suite.tasks)

    (fresh_zoo.root / "tasks" / "notes.txt").write_text("a new file in the folder\n")
    assert evaluator.suite_fingerprints(suite, "dev") == edited
    assert len(computed) == 3 * len(suite.tasks)


class PastKeyValuesLM(torch.nn.Module):
    """A causal LM whose forward names its cache `past_key_values`, as code written for transformers
    before 5.25 does (remote code), around a model of this release."""

    def __init__(self, model) -> None:
        super().__init__()
        self.inner, self.config, self.generation_config = model, model.config, model.generation_config

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, use_cache=False, past_key_values=None
    ):
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            cache=past_key_values,
        )


def test_greedy_generation_warns_of_no_deprecated_cache_name(zoo_suite: SuiteSpec, candidate: tuple) -> None:
    import logging
    import warnings

    model, tokenizer = candidate
    notes: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")  # it does not propagate: listen to it directly
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tasks = LmEvalEvaluator(device="cpu").evaluate_model(model, tokenizer, zoo_suite, "test")
            ours = BatchedLM(model, tokenizer, batch_size=4).generate_until(
                zoo_requests(zoo_suite, "generate_until")
            )
    finally:
        hf_logger.removeHandler(handler)
    generated = [t.name for t in zoo_suite.tasks if t.metric.startswith("exact_match")]
    assert generated and all(name in tasks for name in generated)
    said = [str(w.message) for w in caught] + notes
    assert not [s for s in said if "past_key_values" in s or "deprecated" in s], said
    assert any(ours)


def test_a_forward_that_names_the_cache_past_key_values_gets_it(
    zoo_suite: SuiteSpec, candidate: tuple
) -> None:
    model, tokenizer = candidate
    requests = zoo_requests(zoo_suite, "generate_until")
    want = BatchedLM(model, tokenizer, batch_size=8).generate_until(requests)
    assert BatchedLM(PastKeyValuesLM(model), tokenizer, batch_size=8).generate_until(requests) == want
