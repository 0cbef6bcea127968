"""The basin check: cosines per layer group equal a hand computation, memory stays streamed, fine-tunes
of one base pass and a model from another initialisation is flagged by name (synthetic and zoo)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soce.checkpoints import Checkpoint
from soce.checkpoints._dtypes import FLOAT_CODES
from soce.errors import IncompatibleCheckpointsError, RecipeError
from soce.merging._base import count_layers
from soce.merging.layerwise import tensor_group
from soce.merging.similarity import checkpoint_similarity
from soce.schemas.similarity import SimilarityResult
from tests.checkpoints.editing import rewrite_weights


def hand(paths: list[Path], base: Path | None, depth: int) -> dict[str, dict]:
    """Every group's numbers with numpy on whole tensors: the reference the streamed sums must equal."""
    ckpts = [Checkpoint.open(p) for p in [*paths, *([base] if base else [])]]
    first = ckpts[0]
    layers = count_layers(list(first.tensors), first.config)
    names = [n for n, i in first.tensors.items() if i.dtype in FLOAT_CODES]
    by_group: dict[str, list[str]] = {}
    for name in names:
        by_group.setdefault(tensor_group(name, layers, depth), []).append(name)
    by_group["overall"] = names
    n = len(paths)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    out = {}
    for group, members in by_group.items():
        centred = [
            np.concatenate([(x := c.read_float32(t).astype(np.float64).ravel()) - x.mean() for t in members])
            for c in ckpts
        ]
        ref = centred[n] if base else np.mean(centred[:n], axis=0)
        tv = [c - ref for c in centred[:n]]
        out[group] = {
            "weights": [[cos(centred[i], centred[j]) for j in range(n)] for i in range(n)],
            "task_vectors": [[cos(tv[i], tv[j]) for j in range(n)] for i in range(n)],
            "base_cosine": [cos(centred[i], centred[n]) for i in range(n)] if base else None,
            "relative_distance": [float(np.linalg.norm(t) / np.linalg.norm(ref)) for t in tv],
            "parameters": centred[0].size,
        }
    for c in ckpts:
        c.close()
    return out


def by_name(result: SimilarityResult) -> dict:
    return {g.group: g for g in [*result.groups, result.overall]}


# --- exact numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_base", [False, True])
def test_streamed_sums_equal_a_hand_computation(make_checkpoints, with_base: bool) -> None:
    *cands, base = make_checkpoints(3, layers=4, seed=3, with_base=True, spread=0.3)
    base_or_none = base if with_base else None
    # a tiny chunk: every tensor is read in many pieces, and pieces never straddle tensors
    result = checkpoint_similarity(cands, base=base_or_none, groups=2, chunk_elements=77)
    expected = hand(cands, base_or_none, depth=2)
    got = by_name(result)
    assert list(got) == ["embed", "blocks[0]", "blocks[1]", "norm", "head", "overall"]
    assert got.keys() == expected.keys()
    for group, want in expected.items():
        g = got[group]
        assert g.parameters == want["parameters"], group
        np.testing.assert_allclose(np.array(g.weights, float), want["weights"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.array(g.task_vectors, float), want["task_vectors"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(g.relative_distance, want["relative_distance"], rtol=1e-9)
        if with_base:
            np.testing.assert_allclose(g.base_cosine, want["base_cosine"], rtol=0, atol=1e-9)
        else:
            assert g.base_cosine is None
    assert result.reference == ("base" if with_base else "mean")
    # against the mean of two, the two task vectors are exactly opposite
    pair = checkpoint_similarity(cands[:2])
    assert pair.overall.task_vectors[0][1] == pytest.approx(-1.0, abs=1e-9)


def test_bfloat16_inputs_are_widened_exactly(make_checkpoints) -> None:
    cands = make_checkpoints(2, dtype="bfloat16", seed=4)
    result = checkpoint_similarity(cands, groups=1, chunk_elements=1000)
    want = hand(cands, None, depth=1)["overall"]
    np.testing.assert_allclose(np.array(result.overall.weights, float), want["weights"], atol=1e-9)


def test_fine_tunes_are_near_one_and_an_independent_model_near_zero(make_checkpoints) -> None:
    """Synthetic fine-tunes theta = base + noise of 10% of the weights' scale: cosine 1/(1 + 0.1^2) between
    two, 1/sqrt(1 + 0.1^2) with the base; a model of another random base: about 0."""
    *cands, base = make_checkpoints(3, seed=0, spread=0.1, with_base=True)
    (stranger,) = make_checkpoints(1, seed=99)
    result = checkpoint_similarity([*cands, stranger], base=base)
    blocks = by_name(result)["blocks[0]"]  # matrices only, apart from two norm vectors
    assert blocks.weights[0][1] == pytest.approx(1 / 1.01, abs=0.005)
    assert blocks.base_cosine[0] == pytest.approx(1 / np.sqrt(1.01), abs=0.005)
    assert blocks.relative_distance[0] == pytest.approx(0.1, abs=0.01)
    for g in [*result.groups, result.overall]:
        assert abs(g.weights[0][3]) < 0.2 and abs(g.base_cosine[3]) < 0.2, g.group
        assert g.weights[0][1] > 0.95, g.group


# --- verdicts ----------------------------------------------------------------------------------------


def test_fine_tunes_of_one_base_pass(make_checkpoints) -> None:
    *cands, base = make_checkpoints(4, seed=1, spread=0.3, with_base=True)
    for b in (None, base):
        result = checkpoint_similarity(cands, base=b)
        assert result.ok and result.warnings == [] and result.flagged == []
        assert result.basins == [[str(p) for p in cands]]


@pytest.mark.parametrize("with_base", [False, True])
def test_a_model_of_another_initialisation_is_flagged_by_name(make_checkpoints, with_base: bool) -> None:
    *cands, base = make_checkpoints(3, seed=1, with_base=True)
    (stranger,) = make_checkpoints(1, seed=2)
    pool = [cands[0], stranger, cands[1], cands[2]]
    result = checkpoint_similarity(pool, base=base if with_base else None)
    assert result.flagged == [str(stranger)]
    assert len(result.warnings) == 1 and str(stranger) in result.warnings[0]
    assert all(str(c) not in result.warnings[0] for c in cands)
    assert result.basins == [[str(cands[0]), str(cands[1]), str(cands[2])], [str(stranger)]]


def test_two_unrelated_models_are_both_named(make_checkpoints) -> None:
    (a,) = make_checkpoints(1, seed=1)
    (b,) = make_checkpoints(1, seed=2)
    result = checkpoint_similarity([a, b])
    assert result.flagged == [str(a), str(b)]
    assert str(a) in result.warnings[0] and str(b) in result.warnings[0]
    assert "do not share a pretrained base" in result.warnings[0]


def test_two_equal_basins_are_all_flagged(make_checkpoints) -> None:
    one = make_checkpoints(2, seed=1)
    two = make_checkpoints(2, seed=2)
    result = checkpoint_similarity([*one, *two])
    assert len(result.basins) == 2 and set(result.flagged) == {str(p) for p in [*one, *two]}
    assert "2 unrelated groups" in result.warnings[0]


def test_a_rescaled_model_is_flagged_for_its_step_size(make_checkpoints) -> None:
    *cands, base = make_checkpoints(2, seed=1, with_base=True)
    rewrite_weights(cands[1], lambda t: t.update({k: v * 3 for k, v in t.items()}))
    result = checkpoint_similarity(cands, base=base)
    assert result.overall.base_cosine[1] > 0.99  # the same direction...
    assert result.overall.relative_distance[1] > 1.5  # ...twice the base's norm away
    assert result.flagged == [str(cands[1])]
    assert "times the base's norm away" in result.warnings[0]


def test_a_reinitialised_layer_group_is_named(make_checkpoints) -> None:
    cands = make_checkpoints(3, seed=1)
    rng = np.random.default_rng(7)

    def fresh_head(t: dict[str, np.ndarray]) -> None:
        t["lm_head.weight"] = rng.standard_normal(t["lm_head.weight"].shape).astype(np.float32) * 0.02

    rewrite_weights(cands[2], fresh_head)
    result = checkpoint_similarity(cands)
    assert result.flagged == []  # overall it still shares the base...
    assert len(result.warnings) == 2  # ...but its head does not, with either other candidate
    assert all(str(cands[2]) in w and "head" in w for w in result.warnings)


def test_identical_to_the_base_gives_undefined_cosines_not_errors(make_checkpoints) -> None:
    *cands, base = make_checkpoints(2, seed=1, with_base=True)
    result = checkpoint_similarity([cands[0], base], base=base)
    assert result.overall.task_vectors[1] == [None, None]
    assert result.overall.relative_distance[1] == 0.0
    assert result.ok
    again = SimilarityResult.model_validate_json(result.model_dump_json())
    assert again.overall.task_vectors[1][1] is None


# --- streaming ---------------------------------------------------------------------------------------


def _peak(paths: list[Path], chunk: int) -> tuple[int, int]:
    ticks: list[int] = []
    totals: list[int] = []

    def progress(total: int):
        totals.append(total)
        return ticks.append

    tracemalloc.start()
    try:
        checkpoint_similarity(paths, chunk_elements=chunk, progress=progress)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(ticks) == totals[0] == sum(Checkpoint.open(p).nbytes for p in paths)
    return peak, totals[0]


def test_memory_stays_at_a_few_chunks_whatever_the_model_size(make_checkpoints) -> None:
    """tracemalloc sees numpy's buffers: the peak is a few chunks, not a model, and does not grow
    with the model."""
    small = make_checkpoints(4, hidden=128, layers=2, intermediate=256, tokenizer=False)
    large = make_checkpoints(4, hidden=128, layers=8, intermediate=256, tokenizer=False)
    chunk = 4096
    peak_small, bytes_small = _peak(small, chunk)
    peak_large, bytes_large = _peak(large, chunk)
    one_model = bytes_large // 4
    assert bytes_large > 3 * bytes_small
    assert peak_large < one_model / 4, (peak_large, one_model)
    assert peak_large < 1.5 * peak_small + 64 * 1024, (peak_small, peak_large)


# --- errors ------------------------------------------------------------------------------------------


def test_bad_input_is_named(make_checkpoints, tmp_path: Path) -> None:
    a, b = make_checkpoints(2)
    with pytest.raises(RecipeError, match="at least two"):
        checkpoint_similarity([a])
    with pytest.raises(RecipeError, match="listed twice"):
        checkpoint_similarity([a, a])
    (other,) = make_checkpoints(1, hidden=64)
    with pytest.raises(IncompatibleCheckpointsError, match="shape"):
        checkpoint_similarity([a, other])
    with pytest.raises(IncompatibleCheckpointsError):
        checkpoint_similarity([a, b], base=other)


# --- the zoo -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_stranger(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of the zoo's shape pretrained briefly on the zoo's data from another initialisation."""
    import torch
    from transformers import AutoModelForCausalLM

    from soce.zoo.build import SIZES
    from soce.zoo.tasks import CATEGORIES, TASKS, make_splits
    from soce.zoo.train import Batcher, TrainPlan, train

    size = SIZES["tiny"]
    sets = {
        t.name: make_splits(t, seed=0, n_train=size.n_train, n_dev=size.n_dev, n_test=size.n_test)["train"]
        for t in TASKS
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(
            AutoModelForCausalLM.from_pretrained(tiny_zoo / "base").config
        )
        plan = TrainPlan("stranger", {c: 1.0 for c in CATEGORIES}, 200, size.base_lr, 1234)
        train(model, Batcher(sets), plan, batch_size=size.batch)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("stranger") / "stranger"
    model.save_pretrained(folder)
    for f in (tiny_zoo / "base").glob("tokenizer*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_zoo_fine_tunes_pass_and_a_stranger_is_flagged(tiny_zoo: Path, zoo_stranger: Path) -> None:
    from soce.zoo.build import candidate_paths

    cands = candidate_paths(tiny_zoo)
    for base in (None, tiny_zoo / "base", tiny_zoo / "instruct"):
        result = checkpoint_similarity(cands, base=base)
        assert result.ok, result.warnings
        pairs = [v for i, row in enumerate(result.overall.weights) for j, v in enumerate(row) if i < j]
        assert min(pairs) > 0.9, pairs
    mixed = [*cands[:3], zoo_stranger, *cands[3:]]
    for base in (None, tiny_zoo / "base"):
        result = checkpoint_similarity(mixed, base=base)
        assert result.flagged == [str(zoo_stranger)], result.warnings
        assert len(result.warnings) == 1 and str(zoo_stranger) in result.warnings[0]
        assert max(abs(v) for v in result.overall.weights[3] if v != 1.0) < 0.2


# --- the CLI -----------------------------------------------------------------------------------------


def test_inspect_similarity_prints_the_table_and_exits_1_on_a_warning(
    make_checkpoints, tmp_path: Path
) -> None:
    from soce.cli import app

    runner = CliRunner()
    *cands, base = make_checkpoints(3, seed=1, with_base=True)
    (stranger,) = make_checkpoints(1, seed=2)
    ok = runner.invoke(app, ["inspect", "--similarity", *map(str, cands), "--base", str(base)])
    assert ok.exit_code == 0, ok.output
    for group in ("embed", "blocks[0]", "blocks[1]", "norm", "head", "overall"):
        assert f"  {group} " in ok.output
    assert "basin check passed" in ok.output

    out = tmp_path / "similarity.json"
    bad = runner.invoke(
        app, ["inspect", "--similarity", *map(str, cands), str(stranger), "--similarity-json", str(out)]
    )
    assert bad.exit_code == 1, bad.output
    assert "basin check warnings" in bad.output and str(stranger) in bad.output
    saved = SimilarityResult.model_validate_json(out.read_text())
    assert saved.flagged == [str(stranger)]

    as_json = runner.invoke(app, ["inspect", "--json", "--similarity", *map(str, cands)])
    assert json.loads(as_json.stdout)["similarity"]["flagged"] == []

    refused = runner.invoke(app, ["inspect", str(cands[0]), "--base", str(base)])
    assert refused.exit_code == 2 and "--similarity" in refused.stderr
    single = runner.invoke(app, ["inspect", "--similarity", str(cands[0])])
    assert single.exit_code == 2 and "at least two" in single.stderr
    assert "Traceback" not in single.output
