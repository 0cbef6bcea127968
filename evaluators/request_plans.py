"""Plans of lm-eval requests: their tokens in padded batches with the indices that read the answers.

A plan depends only on the requests, the tokenizer and `PlanSettings`, never on the weights, so
`evaluators.batched_lm.BatchedLM` builds it once per request list and runs it on every evaluation:
a `ScorePlan` for loglikelihood requests, `GenerationGroup`s for generate_until requests.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from evaluators.request_encoder import RequestEncoder

SCORE_CHUNK_ELEMENTS = 1 << 24  # picked logits (tokens x vocabulary) log-softmaxed at once: 64 MB in float32


@dataclass(frozen=True)
class PlanSettings:
    """What a plan depends on besides its requests and the tokenizer (so a part of its cache key)."""

    batch_size: int
    max_length: int  # the model's context length: longer inputs are truncated on the left
    device: torch.device
    pad_token_id: int
    keeps_logits: bool  # the model's forward takes logits_to_keep (only the needed positions' logits)
    vocab: int  # the model's vocabulary size: how many scored tokens make a chunk
    greedy_ok: bool  # the model's generation_config leaves greedy decoding a plain argmax
    eos: frozenset[int]  # the model's end-of-sequence tokens


@dataclass
class ScoreBatch:
    """One forward pass of loglikelihood rows and which of its logits score a request's token."""

    inputs: torch.Tensor  # [B, T] right-padded; causal attention keeps padding out of real positions
    keep: int  # logits of the last `keep` positions are enough (0: all)
    rows: torch.Tensor  # [N] row of each scored token
    positions: torch.Tensor  # [N] position (within the kept logits) predicting it


@dataclass
class ScoreChunk:
    """Consecutive batches whose picked logits are scored together (one log-softmax, one gather)."""

    batches: list[ScoreBatch]
    targets: torch.Tensor  # [N] the scored tokens of all the batches, in order
    requests: torch.Tensor  # [N] the request each belongs to


@dataclass
class ScorePlan:
    chunks: list[ScoreChunk]
    n_requests: int


@dataclass
class GenerationBatch:
    inputs: torch.Tensor  # [B, T] left-padded contexts
    mask: torch.Tensor  # [B, T + max_gen_toks] attention mask, ones after the context
    positions: torch.Tensor  # [B, T + max_gen_toks] position ids of the context and generated tokens
    requests: list[int]  # request index of each row


@dataclass
class GenerationGroup:
    """Requests sharing generation kwargs: greedy through our loop, anything else through generate."""

    until: list[str]
    max_gen_toks: int
    kwargs: dict[str, Any]  # what model.generate would get beyond HFLM's fixed arguments
    eos: frozenset[int] = frozenset()  # the model's end-of-sequence tokens: a row ends after one
    triggers: frozenset[int] = frozenset()  # tokens after which a row's text is checked for stop strings
    batches: list[GenerationBatch] = field(default_factory=list)


def frozen_kwargs(value: Any) -> Hashable:
    """A hashable stand-in for lm-eval's generation kwargs (dicts and lists inside)."""
    if isinstance(value, dict):
        return tuple((k, frozen_kwargs(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(frozen_kwargs(v) for v in value)
    return value


def _batches(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of batches over rows sorted longest first, each padded to its first row's length.

    `batch_size` rows of the longest length set the budget of padded tokens per batch; batches of
    shorter rows take more rows within it, so memory never exceeds the first batch's and small models
    make fewer, fuller forward passes.
    """
    if not lengths:
        return []
    budget = batch_size * max(lengths[0], 1)
    bounds, start = [], 0
    while start < len(lengths):
        rows = max(batch_size, budget // max(lengths[start], 1))
        bounds.append((start, min(start + rows, len(lengths))))
        start = bounds[-1][1]
    return bounds


def score_plan(encoded: Sequence[tuple[Sequence[int], Sequence[int]]], settings: PlanSettings) -> ScorePlan:
    """The plan of loglikelihood requests given as (context, continuation) tokens: rows (one per distinct
    input, shared by requests whose input is a prefix of it), sorted longest first and cut into
    batches, with the gather indices of every scored token."""
    # per request: the model input and how many of its last positions predict the continuation
    inputs: list[tuple[int, ...]] = []
    targets: list[tuple[int, ...]] = []
    for context, continuation in encoded:
        if not context or not continuation:
            raise ValueError("a loglikelihood request needs a non-empty context and continuation")
        if len(continuation) > settings.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens exceeds {settings.max_length}")
        whole = (tuple(context) + tuple(continuation))[-(settings.max_length + 1) :]
        inputs.append(whole[:-1])
        targets.append(tuple(continuation))

    # distinct inputs; an input that is a prefix of a longer one with the same context reuses its
    # row (causal attention: its logits are those of the longer row), as HFLM does for one-token
    # continuations of a shared context
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), inputs[i]))
    row_of: dict[tuple[int, ...], int] = {}
    rows: list[tuple[int, ...]] = []
    by_context: dict[tuple[int, ...], list[int]] = {}
    request_row: list[int] = [0] * len(inputs)
    for i in order:
        inp = inputs[i]
        row = row_of.get(inp)
        if row is None:
            ctx_len = len(inp) - len(targets[i]) + 1
            group = by_context.setdefault(inp[:ctx_len], [])
            row = next((r for r in group if rows[r][: len(inp)] == inp), None)
            if row is None:
                row = len(rows)
                rows.append(inp)
                group.append(row)
            row_of[inp] = row
        request_row[i] = row

    requests_of_row: list[list[int]] = [[] for _ in rows]
    for i in order:
        requests_of_row[request_row[i]].append(i)
    device = settings.device
    chunks: list[ScoreChunk] = []
    pending: list[ScoreBatch] = []
    picked: list[list[int]] = [[], []]  # targets and requests of the pending batches
    bounds = _batches([len(r) for r in rows], settings.batch_size)
    for start, end in bounds:
        members = range(start, end)
        width = len(rows[start])  # rows are sorted longest first
        first = min(len(inputs[i]) - len(targets[i]) for r in members for i in requests_of_row[r])
        keep = width - first if settings.keeps_logits and first > 0 else 0
        offset = first if keep else 0
        at: list[list[int]] = [[], []]  # row and position of each scored token
        for b, r in enumerate(members):
            for i in requests_of_row[r]:
                begin = len(inputs[i]) - len(targets[i]) - offset
                at[0] += [b] * len(targets[i])
                at[1] += range(begin, begin + len(targets[i]))
                picked[0] += targets[i]
                picked[1] += [i] * len(targets[i])
        padded = torch.full((len(members), width), settings.pad_token_id, dtype=torch.long)
        for b, r in enumerate(members):
            padded[b, : len(rows[r])] = torch.tensor(rows[r], dtype=torch.long)
        pending.append(
            ScoreBatch(
                inputs=padded.to(device),
                keep=keep,
                rows=torch.tensor(at[0], device=device),
                positions=torch.tensor(at[1], device=device),
            )
        )
        if len(picked[0]) * settings.vocab >= SCORE_CHUNK_ELEMENTS or end == len(rows):
            chunks.append(
                ScoreChunk(
                    batches=pending,
                    targets=torch.tensor(picked[0], device=device),
                    requests=torch.tensor(picked[1], device=device),
                )
            )
            pending, picked = [], [[], []]
    return ScorePlan(chunks=chunks, n_requests=len(inputs))


def generation_plan(
    args: Sequence[tuple[str, dict]], settings: PlanSettings, encoder: RequestEncoder
) -> list[GenerationGroup]:
    """The plan of generate_until requests given as (context, generation kwargs): grouped by kwargs,
    contexts encoded, truncated, sorted and left-padded."""
    by_kwargs: dict[Hashable, list[int]] = {}
    for i, (_, gen_kwargs) in enumerate(args):
        by_kwargs.setdefault(frozen_kwargs(gen_kwargs), []).append(i)
    groups: list[GenerationGroup] = []
    for members in by_kwargs.values():
        gen_kwargs = args[members[0]][1]
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"expected generation kwargs as a dict, got {gen_kwargs!r}")
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, 256))
        until = handle_stop_sequences(kwargs.pop("until", None), eos=encoder.eos_text)
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        if "max_length" in kwargs:
            raise ValueError("generation kwargs give max_length; use max_gen_toks")
        # as HFLM: greedy unless sampling is asked for; temperature is then dropped
        if kwargs.get("do_sample") is False and kwargs.get("temperature", 0.0) == 0.0:
            kwargs.pop("temperature", None)
            if set(kwargs) == {"do_sample"} and settings.greedy_ok:
                kwargs = {}
        max_ctx_len = settings.max_length - max_gen_toks
        if max_ctx_len <= 0:
            raise ValueError(
                f"max_gen_toks {max_gen_toks} leaves no room for a context in {settings.max_length} tokens"
            )
        group = GenerationGroup(
            until=until,
            max_gen_toks=max_gen_toks,
            kwargs=kwargs,
            eos=settings.eos,
            triggers=encoder.stop_triggers(until),
        )
        encoded = encoder.encode_many([args[i][0] for i in members], rule="generation")
        contexts = {i: tokens[-max_ctx_len:] for i, tokens in zip(members, encoded, strict=True)}
        ranked = sorted(members, key=lambda i: (-len(contexts[i]), args[i][0]))
        lengths = [len(contexts[i]) + max_gen_toks for i in ranked]
        for start, end in _batches(lengths, settings.batch_size):
            rows = ranked[start:end]
            width = len(contexts[rows[0]])
            ids = torch.full((len(rows), width), settings.pad_token_id, dtype=torch.long)
            mask = torch.ones((len(rows), width + max_gen_toks), dtype=torch.long)
            for b, i in enumerate(rows):
                pad = width - len(contexts[i])
                ids[b, pad:] = torch.tensor(contexts[i], dtype=torch.long)
                mask[b, :pad] = 0
            # as generate: positions count real tokens; padding gets 1 (it is masked anyway)
            positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
            group.batches.append(
                GenerationBatch(
                    inputs=ids.to(settings.device),
                    mask=mask.to(settings.device),
                    positions=positions.to(settings.device),
                    requests=rows,
                )
            )
        groups.append(group)
    return groups
