"""Merging into a resident model, for weight-search trials: no disk, no model-sized temporaries.

A gpu worker loads its experts once (`load_experts`), then each trial calls `merge_into`, which
overwrites the model's parameters in place. Per parameter it does exactly what the on-disk
engine does (widen to float32, multiply, add, round to the parameter's dtype), so the tensors
are bit for bit the ones `soce merge` writes. Scratch space is two float32 buffers the size of
the largest parameter, kept between calls.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from soce.checkpoints import Checkpoint
from soce.errors import RecipeError
from soce.merging._base import coefficients

if TYPE_CHECKING:
    import torch


class Coefficients(Protocol):
    def coefficients_for(self, name: str) -> np.ndarray: ...


_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_scratch: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def load_experts(
    checkpoints: Sequence[Checkpoint], *, device: str | torch.device = "cpu"
) -> list[dict[str, torch.Tensor]]:
    """Each checkpoint's float tensors as torch tensors on `device`, in their stored dtype."""
    import torch

    experts = []
    for ckpt in checkpoints:
        tensors = {}
        for name, info in ckpt.tensors.items():
            if info.dtype not in _TORCH_DTYPES:
                continue
            raw = ckpt.read(name)
            if info.dtype == "BF16":
                t = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
            else:
                t = torch.from_numpy(raw)
            tensors[name] = t.reshape(info.shape).to(device)
        experts.append(tensors)
    return experts


def _coefficients_fn(weights: Sequence[float] | Coefficients, n: int):
    if hasattr(weights, "coefficients_for"):
        return weights.coefficients_for  # type: ignore[union-attr]
    values = list(weights)  # type: ignore[arg-type]
    if len(values) != n:
        raise RecipeError(f"{len(values)} weights given for {n} experts")
    c = coefficients(values, labels=[f"#{i}" for i in range(n)], normalize=True, allow_negative=False)
    return lambda name: c


def merge_into(
    model: torch.nn.Module,
    experts: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | Coefficients,
) -> None:
    """Overwrite every parameter of `model` with sum_i w_i * experts[i][name].

    `weights` is a list (validated and normalised to sum 1, like `linear`) or a configured
    method such as `Linear` or `Layerwise` that gives coefficients per tensor.
    """
    import torch

    if len(experts) < 1:
        raise RecipeError("merge_into needs at least one expert")
    coeffs_for = _coefficients_fn(weights, len(experts))
    params = list(model.named_parameters())  # tied weights appear once
    for name, _ in params:
        for i, e in enumerate(experts):
            if name not in e:
                raise RecipeError(f"expert #{i} has no tensor {name!r} that the model needs")
    biggest = max(p.numel() for _, p in params)
    device = params[0][1].device
    scratch = _scratch.get(model)
    if scratch is None or scratch[0].numel() < biggest or scratch[0].device != device:
        scratch = (
            torch.empty(biggest, dtype=torch.float32, device=device),
            torch.empty(biggest, dtype=torch.float32, device=device),
        )
        _scratch[model] = scratch
    with torch.no_grad():
        for name, p in params:
            c = [float(x) for x in coeffs_for(name)]
            n = p.numel()
            acc = p if p.dtype == torch.float32 else scratch[0][:n].view(p.shape)
            tmp = scratch[1][:n].view(p.shape)
            for i, e in enumerate(experts):
                src = e[name]
                if src.dtype != torch.float32:
                    tmp.copy_(src)
                    src = tmp
                if i == 0:
                    torch.mul(src, c[0], out=acc)
                else:
                    torch.mul(src, c[i], out=tmp)
                    acc.add_(tmp)
            if acc is not p:
                p.copy_(acc)
