"""The output ensemble against a hand computation: plain forward passes of two tiny Llamas, the mean of
their log-softmaxes renormalised, summed over a choice's tokens and decoded greedily; an ensemble of
one model is that model; one model run with two parameter sets is the ensemble of the two models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evaluators import LmEvalEvaluator
from evaluators.batched_lm import BatchedLM
from evaluators.ensemble import EnsembleLM
from soce.errors import EvaluationError
from soce.schemas.suite import SuiteSpec
from soce.zoo import LlamaShape, make_related_checkpoints
from tests.evaluators.task_folder import write_zoo_tasks

pytestmark = pytest.mark.usefixtures("one_thread")
CLOSE = {"rel": 1e-5, "abs": 1e-5}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, object, Path, SuiteSpec]:
    """Two tiny Llamas far enough apart that their ensemble differs from each (spread 3: not fine-tunes
    of one base), a task folder and its suite."""
    root = write_zoo_tasks(tmp_path_factory.mktemp("ensemble"))
    shape = LlamaShape(hidden=32, layers=2, intermediate=64)
    folders = make_related_checkpoints(root / "candidates", 2, shape=shape, spread=3.0)
    evaluator = LmEvalEvaluator(device="cpu")
    loaded = [evaluator.load_checkpoint(f) for f in folders]
    models = [m.eval() for m, _ in loaded]
    return models, loaded[0][1], root, SuiteSpec.from_file(root / "suite.yaml")


def request(request_type: str, *args) -> object:
    from lm_eval.api.instance import Instance

    return Instance(request_type, doc={}, arguments=tuple(args), idx=0, metadata=("extra", 0, 1))


@torch.inference_mode()
def hand_logprobs(models: list, ids: list[int]) -> torch.Tensor:
    """[T, V]: at each position, the mean of the models' log-softmaxes, log-softmaxed again."""
    x = torch.tensor([ids])
    each = [F.log_softmax(m(input_ids=x).logits[0].float(), dim=-1) for m in models]
    return F.log_softmax(torch.stack(each).mean(dim=0), dim=-1)


def hand_loglikelihood(models: list, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    lp = hand_logprobs(models, context + continuation[:-1])
    at = range(len(context) - 1, len(context) + len(continuation) - 1)
    total = sum(float(lp[p, t]) for p, t in zip(at, continuation, strict=True))
    return total, all(int(lp[p].argmax()) == t for p, t in zip(at, continuation, strict=True))


def hand_greedy(models: list, tokenizer, context: list[int], until: list[str], max_gen_toks: int) -> str:
    """Greedy decoding without a cache: the whole sequence through every model at each step."""
    ids, new = list(context), []
    for _ in range(max_gen_toks):
        token = int(hand_logprobs(models, ids)[-1].argmax())
        ids.append(token)
        new.append(token)
        if token == tokenizer.eos_token_id:
            break
        if any(s in tokenizer.decode(new) for s in until):
            break
    text = tokenizer.decode(new)
    for s in until:
        text = text.split(s)[0]
    return text


def test_a_choices_loglikelihood_and_a_greedy_continuation_equal_the_hand_computed(pair):
    models, tokenizer, _, _ = pair
    ensemble = EnsembleLM(models)
    lm = BatchedLM(ensemble, tokenizer, batch_size=3)
    pairs = [("12+7=", "19"), ("12+7=", "20"), ("rev abc=", "cba"), ("45+45=", "90")]
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    want = [hand_loglikelihood(models, *map(list, enc)) for enc in lm.encoder.encode_pairs(pairs)]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], **CLOSE)
    assert [g for _, g in got] == [g for _, g in want]
    alone = [BatchedLM(m, tokenizer).loglikelihood([request("loglikelihood", "12+7=", "19")]) for m in models]
    assert all(abs(a[0][0] - got[0][0]) > 1e-3 for a in alone)  # the ensemble is neither member

    # rows of different lengths in one batch: left padding and one KV cache per member
    prompts = ["rev abc=", "12+7=", "rev fedcba=", "3+4="]
    until, steps = ["\n"], 6
    texts = lm.generate_until(
        [
            request("generate_until", p, {"until": until, "max_gen_toks": steps, "do_sample": False})
            for p in prompts
        ]
    )
    contexts = lm.encoder.encode_many(prompts, rule="generation")
    stops = [*until, tokenizer.decode([tokenizer.eos_token_id])]
    assert texts == [hand_greedy(models, tokenizer, list(c), stops, steps) for c in contexts]
    assert any(texts)


def test_the_evaluators_scores_equal_the_hand_computed(pair):
    """Per document: acc is the argmax of the hand-computed loglikelihoods, exact_match the hand greedy."""
    models, tokenizer, root, suite = pair
    scores = LmEvalEvaluator(device="cpu").evaluate_model(
        EnsembleLM(models), tokenizer, suite, "test", samples=True
    )
    lm = BatchedLM(models[0], tokenizer)
    rows = [
        json.loads(line) for line in (root / "data" / "zoo_add_mc" / "test.jsonl").read_text().splitlines()
    ]
    acc = []
    for row in rows:
        encoded = lm.encoder.encode_pairs([(row["prompt"], c) for c in row["choices"]])
        lls = [hand_loglikelihood(models, list(a), list(b))[0] for a, b in encoded]
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == row["answer"]))
    assert scores["zoo_add_mc"].samples == tuple(acc)
    rows = [
        json.loads(line) for line in (root / "data" / "zoo_rev_gen" / "test.jsonl").read_text().splitlines()
    ]
    contexts = lm.encoder.encode_many([r["prompt"] for r in rows], rule="generation")
    stops = ["\n", tokenizer.decode([tokenizer.eos_token_id])]
    answers = [hand_greedy(models, tokenizer, list(c), stops, 8) for c in contexts]
    assert scores["zoo_rev_gen"].samples == tuple(
        float(a == r["target"]) for a, r in zip(answers, rows, strict=True)
    )


def test_an_ensemble_of_one_model_is_that_model(pair):
    models, tokenizer, _, suite = pair
    evaluator = LmEvalEvaluator(device="cpu")
    alone = evaluator.evaluate_model(models[0], tokenizer, suite, "test", samples=True)
    one = evaluator.evaluate_model(EnsembleLM(models[:1]), tokenizer, suite, "test", samples=True)
    assert {t: s.samples for t, s in one.items()} == {t: s.samples for t, s in alone.items()}
    reqs = [request("loglikelihood", "12+7=", x) for x in ("19", "20", "1")]
    got = BatchedLM(EnsembleLM(models[:1]), tokenizer).loglikelihood(reqs)
    want = BatchedLM(models[0], tokenizer).loglikelihood(reqs)
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], **CLOSE)
    assert [g for _, g in got] == [g for _, g in want]


def test_one_model_with_two_parameter_sets_is_the_two_models_ensemble(pair):
    models, tokenizer, _, suite = pair
    host = models[0]
    before = {n: p.clone() for n, p in host.named_parameters()}
    sets = [dict(m.named_parameters()) for m in models]
    evaluator = LmEvalEvaluator(device="cpu")
    shared = evaluator.evaluate_model(EnsembleLM.sharing(host, sets), tokenizer, suite, "test", samples=True)
    separate = evaluator.evaluate_model(EnsembleLM(models), tokenizer, suite, "test", samples=True)
    assert {t: s.samples for t, s in shared.items()} == {t: s.samples for t, s in separate.items()}
    assert all(torch.equal(p, before[n]) for n, p in host.named_parameters())  # its own weights back
    with pytest.raises(EvaluationError, match=r"has no tensor 'lm_head\.weight'"):
        EnsembleLM.sharing(host, [{k: v for k, v in sets[0].items() if k != "lm_head.weight"}])


def test_generation_beyond_greedy_is_refused_with_the_settings(pair):
    models, tokenizer, _, _ = pair
    lm = BatchedLM(EnsembleLM(models), tokenizer)
    asked = {"until": ["\n"], "max_gen_toks": 4, "repetition_penalty": 2.0}
    with pytest.raises(EvaluationError, match="repetition_penalty"):
        lm.generate_until([request("generate_until", "rev ab=", asked)])


def test_tied_embeddings_are_shared_by_each_parameter_set(tmp_path: Path):
    """A tied model names its embedding once: each set's embedding is also its head."""
    shape = LlamaShape(hidden=32, layers=2, intermediate=64, tied=True)
    folders = make_related_checkpoints(tmp_path, 2, shape=shape, spread=3.0)
    loaded = [LmEvalEvaluator(device="cpu").load_checkpoint(f) for f in folders]
    models, tokenizer = [m.eval() for m, _ in loaded], loaded[0][1]
    sets = [dict(m.named_parameters()) for m in models]
    assert "lm_head.weight" not in sets[0]
    reqs = [request("loglikelihood", "12+7=", "19"), request("loglikelihood", "rev ab=", "ba")]
    shared = BatchedLM(EnsembleLM.sharing(models[0], sets), tokenizer).loglikelihood(reqs)
    assert shared == BatchedLM(EnsembleLM(models), tokenizer).loglikelihood(reqs)
