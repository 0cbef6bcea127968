"""lm-eval's model interface on an in-memory transformers causal LM, batched for repeated evaluation.

Results equal lm-eval's HFLM for the same model and tokenizer: the same tokenisation rules (trailing
spaces of a context move to the continuation, a BOS token only where the tokenizer adds one and the
text does not start with it), the same left truncation to the model's maximum length, the same
log-probabilities and is_greedy flags, and the same greedy decoding, stop strings and max_gen_toks.
Floats can differ in the last bits, since batches are composed differently.

What HFLM does per request in Python (tokenising, one tensor per request, sorting, a log-softmax over
every position) is done here once per tokenizer and request list: a weight search evaluates the same
requests hundreds of times on one model whose weights change in place, so the tokens, the sort order,
the padded batches and the gather indices are kept in plans (`evaluators.request_plans`) beside the
tokenizer's `RequestEncoder` (`evaluators.request_encoder`) and reused; an evaluation runs the forward
passes and a few vectorised operations per batch.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import LM
from lm_eval.models.utils import postprocess_generated_text, resolve_max_length

from evaluators.request_encoder import request_encoder
from evaluators.request_plans import (
    GenerationBatch,
    GenerationGroup,
    PlanSettings,
    ScorePlan,
    frozen_kwargs,
    generation_plan,
    score_plan,
)

log = logging.getLogger(__name__)

PLANS_PER_TOKENIZER = 64  # request lists remembered per tokenizer (a suite has one or two per split)

# generation_config fields that do not change greedy decoding as HFLM asks for it (do_sample=False and
# its own max_length): token ids, bookkeeping, output and cache options, sampling and beam parameters.
# Any other field with a value (repetition penalty, beams, suppressed tokens, max_new_tokens, ...)
# sends generation through model.generate, as HFLM does it.
_GREEDY_IGNORES = {
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "_from_model_config",
    "transformers_version", "max_length", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "typical_p", "length_penalty", "early_stopping", "use_cache", "cache_implementation", "cache_config",
    "compile_config", "disable_compile", "output_attentions", "output_hidden_states", "output_scores",
    "output_logits", "return_dict_in_generate",
}  # fmt: skip
_GREEDY_DEFAULTS = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "min_length": 0}


class BatchedLM(LM):
    """lm-eval LM over a transformers causal LM in memory: loglikelihood, rolling, greedy generation.

    Cheap to construct (the tokenizer's encoder and plans are shared); `request_seconds` adds up the
    wall time inside the request methods, which is the model's share of an lm-eval run.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        show_progress: bool = False,
    ) -> None:
        super().__init__()
        self.show_progress = show_progress  # a progress bar over batches
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self._device = next(model.parameters()).device
        self.max_length = max_length or resolve_max_length(model.config, tokenizer)
        self.encoder = request_encoder(
            tokenizer, add_bos_token=add_bos_token, prefix_token_id=prefix_token_id
        )
        self.pad_token_id = next(
            (
                t
                for t in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id)
                if t is not None
            ),
            0,
        )
        self.request_seconds = 0.0
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache_argument = cache_argument(model)
        self.plan_settings = PlanSettings(
            batch_size=self.batch_size,
            max_length=self.max_length,
            device=self._device,
            pad_token_id=self.pad_token_id,
            keeps_logits=self._keeps_logits,
            vocab=int(getattr(model.config, "vocab_size", 0) or 50_000),
            greedy_ok=self._greedy_ok(),
            eos=self._eos_ids(),
        )

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def _timed(self, run: Callable[[], list]) -> list:
        started = time.perf_counter()
        try:
            return run()
        finally:
            self.request_seconds += time.perf_counter() - started

    def _bar(self, total: int, what: str) -> Any:
        """A progress bar over batches (one that shows nothing unless show_progress)."""
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{what} batches", unit="batch", disable=not self.show_progress)

    def _plan(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """A plan from the tokenizer's cache, built on first use (least recently used ones go).

        Built under the encoder's lock, which also keeps its tokenisation caches to one writer.
        """
        key = (key, self.plan_settings)
        plans = self.encoder.plans
        with self.encoder.lock:
            if key in plans:
                plans.move_to_end(key)
                return plans[key]
            plan = plans[key] = build()
            while len(plans) > PLANS_PER_TOKENIZER:
                plans.popitem(last=False)
        return plan

    # --- loglikelihood ---

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not requests:
            return []
        pairs = [r.args for r in requests]

        def build() -> ScorePlan:
            return score_plan(self.encoder.encode_pairs(pairs), self.plan_settings)

        return self._timed(lambda: self._score(self._plan(("loglikelihood", tuple(pairs)), build)))

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if not requests:
            return []
        strings = [r.args[0] for r in requests]

        def build() -> tuple[ScorePlan, list[int]]:
            windows: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
            counts: list[int] = []
            for tokens in self.encoder.encode_many(strings):
                rolling = lm_eval_utils.get_rolling_token_windows(
                    token_list=list(tokens),
                    prefix_token=self.encoder.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
                parts = [lm_eval_utils.make_disjoint_window(w) for w in rolling]
                windows += [(tuple(a), tuple(b)) for a, b in parts]
                counts.append(len(parts))
            return score_plan(windows, self.plan_settings), counts

        def run() -> list[float]:
            plan, counts = self._plan(("rolling", tuple(strings)), build)
            scores = self._score(plan)
            totals, at = [], 0
            for n in counts:  # as HFLM: a Python sum of the windows' log-probabilities
                totals.append(sum(lp for lp, _ in scores[at : at + n]))
                at += n
            return totals

        return self._timed(run)

    @torch.inference_mode()
    def _score(self, plan: ScorePlan) -> list[tuple[float, bool]]:
        """(log-probability, is greedy) of every request: HFLM's numbers, computed batch-wise."""
        total = torch.zeros(plan.n_requests, dtype=torch.float32, device=self._device)
        misses = torch.zeros(plan.n_requests, dtype=torch.int32, device=self._device)
        dtype = torch.float32
        bar = self._bar(sum(len(c.batches) for c in plan.chunks), "loglikelihood")
        for chunk in plan.chunks:
            picked = []
            for batch in chunk.batches:
                kwargs = {"logits_to_keep": batch.keep} if batch.keep else {}
                logits = self.model(input_ids=batch.inputs, use_cache=False, **kwargs).logits  # [B, T, V]
                picked.append(logits[batch.rows, batch.positions])  # [N, V]
                bar.update()
            logprobs = F.log_softmax(torch.cat(picked) if len(picked) > 1 else picked[0], dim=-1)
            dtype = logprobs.dtype
            # sums in float32 (as torch sums a low-precision tensor), rounded to the logits' dtype below
            total.index_add_(0, chunk.requests, logprobs.gather(1, chunk.targets[:, None]).squeeze(1).float())
            misses.index_add_(0, chunk.requests, (logprobs.argmax(dim=-1) != chunk.targets).to(torch.int32))
        bar.close()
        values = total.to(dtype).tolist()
        return list(zip(values, (misses == 0).tolist(), strict=True))

    # --- generation ---

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        args = [r.args for r in requests]
        # the key: contexts, and which of the distinct generation kwargs each request has
        distinct: list[dict] = []
        kinds: list[int] = []
        for _, gen_kwargs in args:
            if not (distinct and gen_kwargs == distinct[kinds[-1]]):  # neighbours mostly share them
                kind = next((j for j, d in enumerate(distinct) if d == gen_kwargs), len(distinct))
                if kind == len(distinct):
                    distinct.append(gen_kwargs)
                kinds.append(kind)
            else:
                kinds.append(kinds[-1])
        key = (
            "generate",
            tuple(ctx for ctx, _ in args),
            tuple(kinds),
            tuple(frozen_kwargs(d) for d in distinct),
        )
        return self._timed(
            lambda: self._generate(
                self._plan(key, lambda: generation_plan(args, self.plan_settings, self.encoder)), len(args)
            )
        )

    def _greedy_ok(self) -> bool:
        """Whether the model's generation_config leaves greedy decoding a plain argmax."""
        config = getattr(self.model, "generation_config", None)
        settings = config.to_dict() if config is not None else {}
        return all(
            value is None or name in _GREEDY_IGNORES or _GREEDY_DEFAULTS.get(name) == value
            for name, value in settings.items()
        )

    def _eos_ids(self) -> frozenset[int]:
        """The model's end-of-sequence tokens: as in generate, a row ends at one (the tokenizer's EOS
        text is a stop string besides)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        return frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)

    def _generate(self, groups: list[GenerationGroup], n: int) -> list[str]:
        answers: list[str | None] = [None] * n
        bar = self._bar(sum(len(g.batches) for g in groups), "generate_until")
        for group in groups:
            for batch in group.batches:
                texts = self._hf_generate(group, batch) if group.kwargs else self._greedy(group, batch)
                for i, text in zip(batch.requests, texts, strict=True):
                    answers[i] = postprocess_generated_text(text, group.until, None)
                bar.update()
        bar.close()
        return answers  # type: ignore[return-value]

    @torch.inference_mode()
    def _greedy(self, group: GenerationGroup, batch: GenerationBatch) -> list[str]:
        """Greedy decoding with a KV cache; a row stops at EOS, at a stop string or at max_gen_toks.

        Returns each row's text up to where it stopped (the answer is cut from it). Rows that
        stopped ride along in the batch until all have, their tokens no longer kept.
        """
        B, T = batch.inputs.shape
        kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.model(
            input_ids=batch.inputs,
            attention_mask=batch.mask[:, :T],
            position_ids=batch.positions[:, :T],
            use_cache=True,
            **kwargs,
        )
        watch = group.eos | group.triggers
        tokens: list[list[int]] = [[] for _ in range(B)]
        texts: list[str | None] = [None] * B
        running = list(range(B))
        for step in range(group.max_gen_toks):
            token = out.logits[:, -1].argmax(dim=-1)  # [B]
            ids = token.tolist()
            for r in running:
                tokens[r].append(ids[r])
            if not watch.isdisjoint(ids) and (hits := [r for r in running if ids[r] in watch]):
                stopped = {r for r in hits if ids[r] in group.eos}
                check = [r for r in hits if r not in stopped]
                for r, text in zip(check, self.encoder.decode_many([tokens[r] for r in check]), strict=True):
                    if any(s and s in text for s in group.until):
                        stopped.add(r)
                        texts[r] = text
                running = [r for r in running if r not in stopped]
            if not running or step + 1 == group.max_gen_toks:
                break
            at = T + step  # the new token's column
            out = self.model(
                input_ids=token[:, None],
                attention_mask=batch.mask[:, : at + 1],
                position_ids=batch.positions[:, at : at + 1],
                use_cache=True,
                **_cache_of(out, self._cache_argument),
            )
        rest = [r for r in range(B) if texts[r] is None]
        for r, text in zip(rest, self.encoder.decode_many([tokens[r] for r in rest]), strict=True):
            texts[r] = text
        return texts  # type: ignore[return-value]

    @torch.inference_mode()
    def _hf_generate(self, group: GenerationGroup, batch: GenerationBatch) -> list[str]:
        """Sampling or non-default generation settings: model.generate with HFLM's arguments."""
        from lm_eval.models.utils_hf import stop_sequences_criteria

        B, T = batch.inputs.shape
        out = self.model.generate(
            input_ids=batch.inputs,
            attention_mask=batch.mask[:, :T],
            max_length=T + group.max_gen_toks,
            stopping_criteria=stop_sequences_criteria(self.tokenizer, group.until, T, B),
            pad_token_id=self.pad_token_id,
            use_cache=True,
            **group.kwargs,
        )
        return self.encoder.decode_many(out[:, T:].tolist())


def cache_argument(model: Any) -> str:
    """The name `model.forward` takes its key-value cache by: `cache` (transformers 5.25 on) or
    `past_key_values` (earlier releases and code written for them).

    transformers 5.25 renames `past_key_values` to `cache` behind a FutureWarning where a model declares
    `cache`; a forward that declares only `past_key_values` (remote code) must get that name, which
    a 5.25 output no longer carries.
    """
    parameters = inspect.signature(model.forward).parameters
    return "past_key_values" if "past_key_values" in parameters and "cache" not in parameters else "cache"


def _cache_of(out: Any, argument: str | None = None) -> dict[str, Any]:
    """The key-value cache of a forward pass as keyword arguments of the next call: under `argument`
    (see cache_argument), else under the name the output gives it.

    Read as `out.cache` where the output has one: `out.past_key_values` on a 5.25 output is a deprecated
    alias that warns.
    """
    cache = getattr(out, "cache", None)
    name = "cache"
    if cache is None:
        cache, name = out.past_key_values, "past_key_values"
    return {argument or name: cache}
