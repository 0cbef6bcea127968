"""The output ensemble of k causal LMs, as one model that `evaluators.batched_lm.BatchedLM` runs.

The model-soup literature reports it beside a soup: it keeps every ingredient and pays k forward
passes per token, where the soup pays one. Per position, the ensemble's next-token distribution is
the mean of the members' log-probabilities, renormalised with a log-softmax (so it is a distribution:
the normalised geometric mean of the members' probabilities). Its `logits` are those log-probabilities
(float32), so BatchedLM's own log-softmax leaves them as they are: a choice scores the sum over its
tokens of the ensemble's log-probabilities, and greedy decoding takes the argmax of the ensemble's.

The members are k models, or one model run with k sets of parameters through
`torch.func.functional_call` (`EnsembleLM.sharing`): the parameters a worker already holds resident
are then the ensemble's, with no copy. A forward pass runs the members one after another, so memory
holds one member's activations and two [B, T, V] float32 buffers besides the weights; with a KV cache,
each member keeps its own, carried in the output (`EnsembleCache`).

Only BatchedLM's greedy loop decodes an ensemble. Requests or a generation_config asking for anything
else (sampling, beams, a repetition penalty, ...) go to `model.generate` in BatchedLM, which cannot run
an ensemble: `generate` raises an EvaluationError that names the settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.batched_lm import _cache_of
from soce.errors import EvaluationError


@dataclass(frozen=True)
class EnsembleCache:
    """A KV cache per member, as its forward takes it: {"cache": ...} or {"past_key_values": ...}."""

    members: tuple[dict[str, Any], ...]


@dataclass
class EnsembleOutput:
    """A forward pass of the ensemble: its next-token log-probabilities, and its members' caches."""

    logits: torch.Tensor  # [B, T, V] log-probabilities, float32
    cache: EnsembleCache | None = None

    @property
    def past_key_values(self) -> EnsembleCache | None:
        return self.cache


class EnsembleLM(nn.Module):
    """k causal LMs of one vocabulary as one causal LM whose logits are the ensemble's log-probabilities.

    `EnsembleLM(models)` runs k models; `EnsembleLM.sharing(model, parameters)` runs one model with k
    parameter sets. `config` and `generation_config` are the first member's.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise EvaluationError("an output ensemble needs at least one model")
        vocab = {_vocab_size(m) for m in models}
        if len(vocab) > 1:
            raise EvaluationError(f"the ensemble's members have different vocabularies ({sorted(vocab)})")
        self.members = nn.ModuleList(models)
        self._parameter_sets: list[dict[str, torch.Tensor]] | None = None
        self._keeps = ["logits_to_keep" in inspect.signature(m.forward).parameters for m in models]

    @classmethod
    def sharing(cls, model: nn.Module, parameters: Sequence[Mapping[str, torch.Tensor]]) -> EnsembleLM:
        """An ensemble of `model`'s architecture with each of `parameters` (name -> tensor) in turn.

        Each set must hold every parameter of `model` (tied ones once, under the name
        named_parameters gives), with its shape and dtype; the tensors are used as they are, not copied.
        """
        if not parameters:
            raise EvaluationError("an output ensemble needs at least one parameter set")
        own = dict(model.named_parameters())  # tied parameters appear once
        sets = []
        for i, given in enumerate(parameters):
            for name, p in own.items():
                t = given.get(name)
                if t is None:
                    raise EvaluationError(f"ensemble member #{i} has no tensor {name!r} that the model needs")
                if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                    raise EvaluationError(
                        f"ensemble member #{i}: tensor {name!r} is {tuple(t.shape)} {t.dtype} on {t.device}, "
                        f"the model's {tuple(p.shape)} {p.dtype} on {p.device}"
                    )
            sets.append({name: given[name] for name in own})
        ensemble = cls([model])
        ensemble._parameter_sets = sets
        return ensemble

    @property
    def k(self) -> int:
        return len(self._parameter_sets) if self._parameter_sets is not None else len(self.members)

    @property
    def config(self) -> Any:
        return self.members[0].config

    @property
    def generation_config(self) -> Any:
        return getattr(self.members[0], "generation_config", None)

    def _member(self, i: int, kwargs: dict[str, Any]) -> Any:
        if self._parameter_sets is None:
            return self.members[i](**kwargs)
        return torch.func.functional_call(self.members[0], self._parameter_sets[i], args=(), kwargs=kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        cache: EnsembleCache | None = None,
        past_key_values: EnsembleCache | None = None,
    ) -> EnsembleOutput:
        """The ensemble's log-probabilities at every position (the last `logits_to_keep` if nonzero)."""
        state = cache if cache is not None else past_key_values
        if state is not None and (not isinstance(state, EnsembleCache) or len(state.members) != self.k):
            raise EvaluationError("an ensemble continues from the EnsembleCache of its own previous pass")
        total: torch.Tensor | None = None
        caches: list[dict[str, Any]] = []
        for i in range(self.k):
            keeps = self._keeps[0 if self._parameter_sets is not None else i]
            kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": use_cache}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
            if position_ids is not None:
                kwargs["position_ids"] = position_ids
            if logits_to_keep and keeps:
                kwargs["logits_to_keep"] = logits_to_keep
            if state is not None:
                kwargs.update(state.members[i])
            out = self._member(i, kwargs)
            logits = out.logits  # [B, T, V]
            if logits_to_keep and not keeps:
                logits = logits[:, -logits_to_keep:]
            logprobs = F.log_softmax(logits.float(), dim=-1)
            total = logprobs if total is None else total.add_(logprobs)
            if use_cache:
                caches.append(_cache_of(out))
            del out, logits, logprobs
        assert total is not None
        mean = total.div_(self.k)
        return EnsembleOutput(
            F.log_softmax(mean, dim=-1), EnsembleCache(tuple(caches)) if use_cache else None
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: BatchedLM calls it for settings its greedy loop does not do, which need generate."""
        fixed = {"input_ids", "attention_mask", "max_length", "stopping_criteria", "pad_token_id"}
        asked = {k: v for k, v in kwargs.items() if k not in fixed | {"use_cache"}}
        raise EvaluationError(
            "the output ensemble decodes greedily only: generation kwargs "
            f"{asked} (or a members' generation_config that is not plain greedy) need model.generate, "
            "which cannot run an ensemble"
        )


def _vocab_size(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "vocab_size", None)
