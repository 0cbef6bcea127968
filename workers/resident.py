"""Candidates resident in memory and one model whose parameters become any soup of them, in place.

The weight search evaluates hundreds of soups of the same experts. Their tensors are loaded once;
each soup is merged straight into one resident model's parameters (no disk, no model-sized
temporaries) and evaluated where it sits. The same object evaluates baselines (a candidate alone
is the soup with weight 1 on it, which reproduces it bit for bit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optimizer.records import Scored
from optimizer.space import SoupWeights
from soce.checkpoints import Checkpoint, checkpoint_hash, ensure_compatible
from soce.errors import SearchError
from soce.merging import MergeContext, build_method, count_layers
from soce.merging.in_memory import load_experts, merge_into
from soce.merging.layerwise import tensor_group
from soce.schemas.merge import MergeRecipe
from soce.schemas.scores import TaskScore, weighted_mean
from soce.schemas.suite import DevPart, Split, SuiteSpec, TaskSpec, canonical_hash
from soce.score_cache import score_soup, soup_hash


def layer_groups(tensor_names: Sequence[str], num_layers: int, groups: int) -> tuple[str, ...]:
    """The layer groups present in a model, in order: embed, blocks[0..G-1], norm, head."""
    present = {tensor_group(n, num_layers, groups) for n in tensor_names}
    order = ["embed", *(f"blocks[{g}]" for g in range(groups)), "norm", "head"]
    return tuple(g for g in order if g in present)


def layerwise_parameters(weights: SoupWeights, groups: int) -> dict[str, Any]:
    """The `layerwise` merge method's parameters for per-group weights."""
    assert weights.groups is not None
    params: dict[str, Any] = {"groups": groups}
    blocks = []
    for g in range(groups):
        w = weights.groups.get(f"blocks[{g}]")
        blocks.append(list(w) if w is not None else list(weights.weights))
    params["blocks"] = blocks
    for name in ("embed", "norm", "head"):
        if name in weights.groups:
            params[name] = list(weights.groups[name])
    return params


def merge_recipe(
    paths: Mapping[str, Path],
    weights: SoupWeights,
    *,
    groups: int,
    name: str | None = None,
    dtype: str | None = None,
) -> MergeRecipe:
    """The merge recipe that writes the soup `weights` of the experts at `paths` (label -> folder)."""
    if weights.groups:
        return MergeRecipe(
            method="layerwise",
            candidates=[{"path": str(paths[e])} for e in weights.experts],
            parameters=layerwise_parameters(weights, groups),
            name=name,
            dtype=dtype,
        )
    return MergeRecipe(
        method="linear",
        candidates=[
            {"path": str(paths[e]), "weight": w}
            for e, w in zip(weights.experts, weights.weights, strict=True)
        ],
        name=name,
        dtype=dtype,
    )


class ResidentSoup:
    """Candidates (label -> folder) loaded once; `evaluate` merges a soup into one model and scores it."""

    def __init__(
        self, paths: Mapping[str, Path], evaluator: Any, suite: SuiteSpec, *, groups: int = 2
    ) -> None:
        self.paths = dict(paths)
        self.evaluator = evaluator
        self.suite = suite
        self.groups = groups
        ckpts = [Checkpoint.open(p) for p in self.paths.values()]
        try:
            ensure_compatible(ckpts)
            first = ckpts[0]
            self.tensor_names = tuple(first.tensors)
            self.num_layers = count_layers(list(first.tensors), first.config)
            self.model, self.tokenizer = evaluator.load_checkpoint(next(iter(self.paths.values())))
            device = next(self.model.parameters()).device
            self.tensors = dict(zip(self.paths, load_experts(ckpts, device=device), strict=True))
        finally:
            for c in ckpts:
                c.close()
        self._loaded: tuple | None = None
        self._lock = threading.Lock()
        self._hashes: dict[str, str] | None = None

    def content_hashes(self) -> dict[str, str]:
        """Each candidate's content hash (label -> hash), read once (scoring remembered the digests)."""
        if self._hashes is None:
            hashes = {}
            for label, path in self.paths.items():
                with Checkpoint.open(path) as ckpt:
                    hashes[label] = checkpoint_hash(ckpt)
            self._hashes = hashes
        return self._hashes

    def soup_hash(self, weights: SoupWeights) -> str:
        """The score cache's identity of the soup `weights` as merged here (soce.score_cache.soup_hash)."""
        hashes = self.content_hashes()
        return soup_hash(
            ingredients=[hashes[e] for e in weights.experts],
            weights=weights.weights,
            groups=weights.groups,
            layer_groups=self.groups,
            dtype=str(next(self.model.parameters()).dtype).removeprefix("torch."),
            model=hashes[next(iter(self.paths))],
        )

    def cached_scores(
        self,
        weights: SoupWeights,
        split: Split,
        *,
        samples: bool = False,
        part: DevPart | None = None,
        engine: Any = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, TaskScore]:
        """Every task's score of the soup `weights` on `split` (on `part` of dev, if given), from the score
        cache where stored, else merged and evaluated here and stored (with per-document values when
        `samples`). timings: the seconds of what was merged and evaluated are added to it by part."""

        def evaluate(tasks: Sequence[TaskSpec]) -> dict[str, TaskScore]:
            scores, seconds = self.score_tasks(weights, split, samples=samples, part=part, tasks=tasks)
            if timings is not None:
                for k, v in seconds.items():
                    timings[k] = timings.get(k, 0.0) + v
            return scores

        soup = self.soup_hash(weights)
        return score_soup(
            self.evaluator, soup, self.suite, split, evaluate, engine=engine, samples=samples, part=part
        )

    def cached_ensemble_scores(
        self, labels: Sequence[str], split: Split, *, samples: bool = False, engine: Any = None
    ) -> dict[str, TaskScore]:
        """score_ensemble's task scores, from the score cache where stored (keyed by the members' soup
        identity, marked as an output ensemble), else evaluated here and stored."""
        uniform = self.soup_hash(self.uniform(labels))
        identity = canonical_hash({"output-ensemble": uniform})

        def evaluate(tasks: Sequence[TaskSpec]) -> dict[str, TaskScore]:
            return self.score_ensemble(labels, split, samples=samples, tasks=tasks)[0]

        suite = self.suite
        return score_soup(self.evaluator, identity, suite, split, evaluate, engine=engine, samples=samples)

    def layer_groups(self) -> tuple[str, ...]:
        return layer_groups(self.tensor_names, self.num_layers, self.groups)

    def _coefficients(self, weights: SoupWeights) -> Any:
        if not weights.groups:
            return list(weights.weights)
        recipe = MergeRecipe(
            method="layerwise",
            candidates=[{"path": e} for e in weights.experts],
            parameters=layerwise_parameters(weights, self.groups),
        )
        context = MergeContext(self.tensor_names, self.num_layers, tuple(weights.experts))
        return build_method(recipe, context)

    def load(self, weights: SoupWeights) -> float:
        """Make the resident model the soup `weights`; seconds spent merging (0 if it already is)."""
        missing = [e for e in weights.experts if e not in self.tensors]
        if missing:
            raise SearchError(f"no resident candidate {', '.join(missing)}")
        key = (weights.experts, weights.key(digits=12))
        if key == self._loaded:
            return 0.0
        started = time.perf_counter()
        self._loaded = None
        merge_into(self.model, [self.tensors[e] for e in weights.experts], self._coefficients(weights))
        self._loaded = key
        return time.perf_counter() - started

    def score_tasks(
        self,
        weights: SoupWeights,
        split: Split,
        categories: Sequence[str] | None = None,
        *,
        samples: bool = False,
        part: DevPart | None = None,
        tasks: Sequence[TaskSpec] | None = None,
    ) -> tuple[dict[str, TaskScore], dict[str, float]]:
        """Task scores of the soup on `split` (only the tasks of `categories`, or only `tasks`; only the
        examples of `part` of dev, if given), and the seconds by part."""
        with self._lock:
            merge_s = self.load(weights)
            wanted = set(categories) if categories is not None else None
            specs = (
                list(tasks)
                if tasks is not None
                else [t for c in self.suite.categories if wanted is None or c.name in wanted for t in c.tasks]
            )
            started = time.perf_counter()
            kwargs: dict[str, Any] = {"samples": True} if samples else {}
            if part is not None:
                kwargs["part"] = part
            scores = self.evaluator.evaluate_model(
                self.model, self.tokenizer, self.suite, split, tasks=specs, **kwargs
            )
            return scores, {"merge": merge_s, "evaluate": time.perf_counter() - started}

    def score_ensemble(
        self,
        labels: Sequence[str],
        split: Split,
        *,
        samples: bool = False,
        tasks: Sequence[TaskSpec] | None = None,
    ) -> tuple[dict[str, TaskScore], float]:
        """Task scores of the output ensemble of the candidates `labels` on `split` (every task), and the
        seconds it took: the resident model runs with each one's resident tensors in turn (no copies;
        its own weights are back afterwards, so the soup loaded stays loaded)."""
        from evaluators.ensemble import EnsembleLM

        missing = [label for label in labels if label not in self.tensors]
        if missing:
            raise SearchError(f"no resident candidate {', '.join(missing)}")
        with self._lock:
            ensemble = EnsembleLM.sharing(self.model, [self.tensors[label] for label in labels])
            started = time.perf_counter()
            kwargs: dict[str, Any] = {"samples": True} if samples else {}
            scores = self.evaluator.evaluate_model(
                ensemble, self.tokenizer, self.suite, split, tasks=tasks, **kwargs
            )
            return scores, time.perf_counter() - started

    def category_scores(self, tasks: Mapping[str, TaskScore], categories: Sequence[str]) -> dict[str, float]:
        out = {}
        for c in self.suite.categories:
            if c.name in categories:
                value, _, _ = weighted_mean([(tasks[t.name].value, None, None, t.weight) for t in c.tasks])
                out[c.name] = value
        return out

    def __call__(
        self, weights: SoupWeights, categories: Sequence[str], *, part: DevPart | None = None
    ) -> Scored:
        """The optimizer's evaluation callable: dev category scores of a soup (on `part` of dev)."""
        tasks, timings = self.score_tasks(weights, "dev", categories, part=part)
        return Scored(self.category_scores(tasks, categories), timings)

    def learned_path(self, space: Any, settings: Any, *, part: DevPart | None = None) -> Any:
        """The learned soup's gradient path over `space` on dev (on `part` of it), a LearnedPath
        (workers.learned); the resident model is held meanwhile, its own parameters untouched."""
        from workers.learned import learn_weights

        with self._lock:
            return learn_weights(self, space, settings, part=part)

    def single(self, label: str) -> SoupWeights:
        return SoupWeights((label,), (1.0,))

    def uniform(self, labels: Sequence[str]) -> SoupWeights:
        return SoupWeights(tuple(labels), tuple(1.0 / len(labels) for _ in labels))
