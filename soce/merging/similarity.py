"""The basin check: do these candidates share a pretrained base, so that averaging them can work?

Weight averaging helps between fine-tunes of one pretrained base and produces garbage between
independently trained models. This module measures, per layer group (embeddings, depth buckets of
blocks, final norm, head; the grouping of `layerwise`) and overall, the pairwise cosine of the
candidates' weights and of their task vectors, streamed like the merge: one chunk of one tensor of
every checkpoint at a time, with dot products and norms accumulated in float64. Nothing the size of a
model is ever resident.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soce.checkpoints import Checkpoint, ensure_compatible
from soce.checkpoints._dtypes import FLOAT_CODES, STORAGE, widen
from soce.errors import RecipeError
from soce.merging._base import count_layers
from soce.merging.layerwise import tensor_group
from soce.schemas.similarity import GroupSimilarity, Matrix, SimilarityCriteria, SimilarityResult

log = logging.getLogger(__name__)

__all__ = ["checkpoint_similarity", "group_order"]

ProgressFactory = Callable[[int], Callable[[int], None]]
DEFAULT_DEPTH_GROUPS = 4
# Float64 scratch per chunk: (inputs + candidates + 2) x chunk x 8 bytes, 10 MB for 8 candidates and a
# base: small enough that a chunk's several passes (widen, products, differences) stay in cache, which
# measured 1.5x faster than chunks of 512k elements.
DEFAULT_CHUNK_ELEMENTS = 1 << 16


def group_order(depth_groups: int) -> list[str]:
    """Layer groups in model order: embed, blocks[0..G-1], norm, head, other."""
    return ["embed", *(f"blocks[{g}]" for g in range(depth_groups)), "norm", "head", "other"]


@dataclass
class _Sums:
    """Float64 sums of one group. Rows/columns: the candidates, then the base when there is one."""

    size: int
    n: int
    tensors: int = 0
    parameters: int = 0
    # every product is of tensors centred on their own means (see checkpoint_similarity)
    centred: np.ndarray = field(init=False)  # <theta_i, theta_j>
    task: np.ndarray = field(init=False)  # <theta_i - ref, theta_j - ref>, candidates only

    def __post_init__(self) -> None:
        self.centred = np.zeros((self.size, self.size))
        self.task = np.zeros((self.n, self.n))

    def add(self, other: _Sums) -> None:
        self.tensors += other.tensors
        self.parameters += other.parameters
        self.centred += other.centred
        self.task += other.task


def _cosines(gram: np.ndarray) -> Matrix:
    """Cosine matrix of a Gram matrix; None where a vector is zero (or rounding leaves nothing of it)."""
    diag = np.diag(gram)
    scale = max(float(diag.max(initial=0.0)), 1e-300)
    out: Matrix = []
    for i in range(gram.shape[0]):
        row: list[float | None] = []
        for j in range(gram.shape[0]):
            if diag[i] <= 1e-24 * scale or diag[j] <= 1e-24 * scale:
                row.append(None)
            else:
                row.append(float(np.clip(gram[i, j] / math.sqrt(diag[i] * diag[j]), -1.0, 1.0)))
        out.append(row)
    return out


def _group_result(name: str, sums: _Sums, has_base: bool) -> GroupSimilarity:
    n = sums.n
    centred = _cosines(sums.centred)
    # |mean|^2 = (1/n^2) sum_kl <theta_k, theta_l>
    ref_norm2 = float(sums.centred[n, n]) if has_base else float(sums.centred[:n, :n].sum()) / n**2
    ref_norm = math.sqrt(max(ref_norm2, 0.0))
    distance = [
        math.sqrt(max(float(sums.task[i, i]), 0.0)) / ref_norm if ref_norm > 0 else None for i in range(n)
    ]
    return GroupSimilarity(
        group=name,
        tensors=sums.tensors,
        parameters=sums.parameters,
        weights=[row[:n] for row in centred[:n]],
        task_vectors=_cosines(sums.task),
        base_cosine=[centred[i][n] for i in range(n)] if has_base else None,
        relative_distance=distance,
    )


class _Streamer:
    """Reads one chunk of one tensor from every input into float64 rows, and adds up its products."""

    def __init__(self, inputs: Sequence[Checkpoint], n: int, chunk: int) -> None:
        self.inputs = inputs
        self.n = n
        self.chunk = chunk
        self.rows = np.empty((len(inputs), chunk))  # float64: the chunk of every input
        self.deltas = np.empty((n, chunk))  # the chunk of every task vector
        self.mean = np.empty(chunk)
        self.ones = np.ones(chunk)  # sums as matrix-vector products: faster than reductions
        self.f32 = np.empty(chunk, np.float32)
        self.raw: dict[str, np.ndarray] = {}

    def _read(self, k: int, name: str, start: int, size: int) -> None:
        code = self.inputs[k].tensors[name].dtype
        if code == "F32":
            raw = self.inputs[k].read(name, start, self.f32[:size])
        else:
            buf = self.raw.get(code)
            if buf is None:
                buf = self.raw[code] = np.empty(self.chunk, STORAGE[code])
            raw = self.inputs[k].read(name, start, buf[:size])
        if code == "F64":
            self.rows[k, :size] = raw
        else:
            self.rows[k, :size] = widen(raw, code, self.f32[:size])

    def tensor(self, name: str, sums: _Sums) -> None:
        numel = self.inputs[0].tensors[name].numel
        gram = np.zeros_like(sums.centred)
        total = np.zeros(len(self.inputs))
        task = np.zeros_like(sums.task)
        task_total = np.zeros(self.n)
        has_base = len(self.inputs) > self.n
        for start in range(0, numel, self.chunk):
            size = min(self.chunk, numel - start)
            for k in range(len(self.inputs)):
                self._read(k, name, start, size)
            x = self.rows[:, :size]  # (inputs, size)
            gram += x @ x.T
            total += x @ self.ones[:size]
            ref = x[self.n] if has_base else np.mean(x[: self.n], axis=0, out=self.mean[:size])
            d = np.subtract(x[: self.n], ref, out=self.deltas[:, :size])
            task += d @ d.T
            task_total += d @ self.ones[:size]
        sums.tensors += 1
        sums.parameters += numel
        # centring is a rank-one correction per tensor: <x - mean(x), y - mean(y)> = <x, y> - sx sy / N
        sums.centred += gram - np.outer(total, total) / max(numel, 1)
        sums.task += task - np.outer(task_total, task_total) / max(numel, 1)


def checkpoint_similarity(
    paths: Sequence[Path | str],
    *,
    base: Path | str | None = None,
    groups: int = DEFAULT_DEPTH_GROUPS,
    criteria: SimilarityCriteria | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressFactory | None = None,
    allow_pickle: bool = False,
) -> SimilarityResult:
    """Pairwise similarity of candidates per layer group, the basins they form, and warnings.

    Every tensor is first centred on its own mean. That makes parameters that every initialisation
    sets to the same constant (norm gains at 1, biases at 0) count for nothing: uncentred, two unrelated
    models agree on them (their norm gains have a cosine near 1), and in small models they even dominate
    the norms. For matrices the mean is about zero and centring changes nothing. Then, over the float
    tensors of each layer group and overall:
    - weights: cosine of the candidates' weights.
    - task_vectors: cosine of theta_i - ref, ref being the base when given, else the candidates' mean.
      Fine-tunes of one base for different tasks have nearly orthogonal task vectors (Ilharco et al.,
      "Editing models with task arithmetic", 2023), so this is reported, never warned about; against
      the mean they are negative on average by construction (-1/(n-1) for equal norms; -1 for two).
    - relative_distance: |theta_i - ref| / |ref|.

    Warnings, by principle and with margin:
    1. Shared origin. A fine-tune theta = base + tau keeps cos(theta, base) = 1/sqrt(1 + r^2) (tau
       roughly orthogonal to the base, r = |tau|/|base|): above 0.99 for typical LLM fine-tunes (r of
       1e-3 to 0.1), 0.93 for the tiny zoo's (r about 0.57 from its base), and still 0.7 at r = 1.
       Models from independent initialisations are orthogonal up to 1/sqrt(parameters), i.e. about 0,
       whatever their training (hidden units are only defined up to a permutation). The threshold
       `min_weight_cosine` (0.5) sits far from both. Candidates are linked when their overall weight
       cosine reaches it, and linked candidates form basins (connected components). With a base, the
       candidates linked to it are the pool; without, the largest basin is, and when basins tie the
       check cannot tell which is the stranger and names them all. Every candidate outside the pool is
       flagged by name, with its cosine to it.
    2. Step size (with a base only). A task vector at least as long as the base itself
       (`max_relative_distance`, 1.0) is no fine-tuning step, even when the direction agrees (e.g. a
       rescaled model): fine-tunes typically move 0.1% to 10% of the base's norm; an independent model
       of equal norm is sqrt(2) away.
    3. Within the pool, any pair below the threshold overall or in a layer group (a group re-initialised
       or trained from scratch in one of them) is named; such pairs average badly in those layers.

    paths: the candidates' folders; base: the base they were fine-tuned from, when known.
    groups: depth buckets of the blocks (at most the number of blocks).
    """
    started = time.perf_counter()
    criteria = criteria or SimilarityCriteria()
    labels = [str(p) for p in paths]
    if len(labels) < 2:
        raise RecipeError(f"the basin check compares checkpoints; it needs at least two, got {len(labels)}")
    if len(set(labels)) != len(labels):
        twice = next(p for p in labels if labels.count(p) > 1)
        raise RecipeError(f"checkpoint {twice} is listed twice")
    if groups < 1:
        raise RecipeError(f"groups must be at least 1, got {groups}")
    if chunk_elements < 1:
        raise RecipeError(f"chunk_elements must be at least 1, got {chunk_elements}")
    opened: list[Checkpoint] = []
    try:
        for p in [*paths, *([base] if base is not None else [])]:
            opened.append(Checkpoint.open(p, allow_pickle=allow_pickle))
        ensure_compatible(opened, same_dtype=False)  # dtypes may differ: everything is widened
        result = _measure(opened, len(labels), groups, chunk_elements, progress)
    finally:
        for c in opened:
            c.close()
    sums, depth = result
    has_base = base is not None
    order = [g for g in group_order(depth) if g in sums]
    overall = _Sums(len(opened), len(labels))
    for g in order:
        overall.add(sums[g])
    group_results = [_group_result(g, sums[g], has_base) for g in order]
    overall_result = _group_result("overall", overall, has_base)
    basins, flagged, warnings = _judge(
        labels, str(base) if has_base else None, overall_result, group_results, criteria
    )
    return SimilarityResult(
        candidates=labels,
        base=str(base) if has_base else None,
        reference="base" if has_base else "mean",
        depth_groups=depth,
        criteria=criteria,
        groups=group_results,
        overall=overall_result,
        basins=basins,
        flagged=flagged,
        warnings=warnings,
        seconds=time.perf_counter() - started,
    )


def _measure(
    inputs: list[Checkpoint], n: int, groups: int, chunk: int, progress: ProgressFactory | None
) -> tuple[dict[str, _Sums], int]:
    first = inputs[0]
    names = [name for name, info in first.tensors.items() if info.dtype in FLOAT_CODES]
    num_layers = count_layers(list(first.tensors), first.config)
    depth = max(1, min(groups, num_layers)) if num_layers else 1
    largest = max((first.tensors[name].numel for name in names), default=1)
    streamer = _Streamer(inputs, n, max(1, min(chunk, largest)))
    tick = progress(sum(c.tensors[name].nbytes for c in inputs for name in names)) if progress else None
    sums: dict[str, _Sums] = {}
    for name in names:
        group = tensor_group(name, num_layers, depth)
        if group not in sums:
            sums[group] = _Sums(len(inputs), n)
        streamer.tensor(name, sums[group])
        if tick is not None:
            tick(sum(c.tensors[name].nbytes for c in inputs))
    return sums, depth


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def _basins(labels: list[str], linked: Callable[[int, int], bool]) -> list[list[int]]:
    """Connected components of the 'linked' graph, largest first (ties in candidate order)."""
    parent = list(range(len(labels)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if linked(i, j):
                parent[root(i)] = root(j)
    found: dict[int, list[int]] = {}
    for i in range(len(labels)):
        found.setdefault(root(i), []).append(i)
    return sorted(found.values(), key=lambda members: (-len(members), members[0]))


def _judge(
    labels: list[str],
    base: str | None,
    overall: GroupSimilarity,
    groups: list[GroupSimilarity],
    criteria: SimilarityCriteria,
) -> tuple[list[list[str]], list[str], list[str]]:
    threshold = criteria.min_weight_cosine
    n = len(labels)
    cos = overall.weights

    def linked(i: int, j: int) -> bool:
        c = cos[i][j]
        return c is not None and c >= threshold

    components = _basins(labels, linked)
    basins = [[labels[i] for i in members] for members in components]
    warnings: list[str] = []
    flagged: set[int] = set()
    if base is not None:
        assert overall.base_cosine is not None
        to_base = overall.base_cosine
        pool = [i for i in range(n) if to_base[i] is not None and to_base[i] >= threshold]  # type: ignore[operator]
        for i in range(n):
            if i not in pool:
                flagged.add(i)
                warnings.append(
                    f"{labels[i]} does not look like a fine-tune of the base {base}: weight cosine "
                    f"{_fmt(to_base[i])} with it (fine-tunes of one base: above 0.9; independent models: "
                    f"about 0; threshold {threshold}); averaging it in would likely break the soup"
                )
        limit = criteria.max_relative_distance
        for i in pool:
            r = overall.relative_distance[i]
            if r is not None and r >= limit:
                flagged.add(i)
                warnings.append(
                    f"{labels[i]} is {r:.2f} times the base's norm away from the base {base} (threshold "
                    f"{limit}; fine-tunes move 0.001 to 0.1 of it): no fine-tuning step, and unlikely to "
                    "average well"
                )
    else:
        pool = components[0]
        tied = [c for c in components if len(c) == len(pool)]
        if len(tied) > 1:
            pool = []
            groups_text = "; ".join("{" + ", ".join(labels[i] for i in c) + "}" for c in tied)
            if n == 2:
                warnings.append(
                    f"{labels[0]} and {labels[1]} do not share a pretrained base: weight cosine "
                    f"{_fmt(cos[0][1])} (fine-tunes of one base: above 0.9; independent models: about 0; "
                    f"threshold {threshold}); their average would likely be broken"
                )
            else:
                warnings.append(
                    f"the candidates form {len(components)} unrelated groups, none larger than the others: "
                    f"{groups_text} (weight cosine below {threshold} between groups); average only within "
                    "one group, or pass --base to say which is the pool"
                )
            flagged.update(range(n))
        else:
            for i in range(n):
                if i in pool:
                    continue
                flagged.add(i)
                best = max((cos[i][j] for j in pool if cos[i][j] is not None), default=None)
                warnings.append(
                    f"{labels[i]} does not share a pretrained base with the other candidates: weight "
                    f"cosine at most {_fmt(best)} with them (fine-tunes of one base: above 0.9; independent "
                    f"models: about 0; threshold {threshold}); averaging it in would likely break the soup"
                )
    # pairs inside the pool that disagree overall or in one layer group
    for i in pool:
        for j in pool:
            if j <= i or i in flagged or j in flagged:
                continue
            low = [
                (g.group, g.weights[i][j])
                for g in [overall, *groups]
                if g.weights[i][j] is not None and g.weights[i][j] < threshold  # type: ignore[operator]
            ]
            if low:
                where = ", ".join(f"{name} {_fmt(c)}" for name, c in low)
                warnings.append(
                    f"{labels[i]} and {labels[j]} differ where fine-tunes of one base agree: weight cosine "
                    f"{where} (threshold {threshold}); those layers would average badly"
                )
    return basins, [labels[i] for i in sorted(flagged)], warnings
