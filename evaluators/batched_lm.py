"""lm-eval's model interface on an in-memory transformers causal LM, batched for repeated evaluation.

Results equal lm-eval's HFLM for the same model and tokenizer: the same tokenisation rules (trailing
spaces of a context move to the continuation, a BOS token only where the tokenizer adds one and the
text does not start with it), the same left truncation to the model's maximum length, the same
log-probabilities and is_greedy flags, and the same greedy decoding, stop strings and max_gen_toks.
Floats can differ in the last bits, since batches are composed differently.

What HFLM does per request in Python (tokenising, one tensor per request, sorting, a log-softmax over
every position) is done here once per tokenizer and request list: a weight search evaluates the same
requests hundreds of times on one model whose weights change in place, so the tokens, the sort order,
the padded batches and the gather indices are kept in plans (`ScorePlan`, `GenerationGroup`) and
reused; an evaluation runs the forward passes and a few vectorised operations per batch.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import LM
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)

log = logging.getLogger(__name__)

PLANS_PER_TOKENIZER = 64  # request lists remembered per tokenizer (a suite has one or two per split)
MAX_CACHED_STRINGS = 1_000_000  # tokenisations remembered per tokenizer before the cache starts over
SCORE_CHUNK_ELEMENTS = 1 << 24  # picked logits (tokens x vocabulary) log-softmaxed at once: 64 MB in float32

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


def _decodes_plainly(tokenizer: Any) -> bool:
    """Whether tokenizer.decode is its Rust backend's decode and nothing more (no space clean-up)."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return False
    return (
        isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._decode is TokenizersBackend._decode
        and type(tokenizer).decode is TokenizersBackend.decode
        and not tokenizer.clean_up_tokenization_spaces
    )


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for lm-eval's generation kwargs (dicts and lists inside)."""
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
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


class RequestEncoder:
    """HFLM's tokenisation rules for one tokenizer, with every result remembered.

    Everything here depends only on strings and the tokenizer, so it is shared by every model that
    uses the tokenizer; plans (tokens, batches, indices) for whole request lists are kept too.
    """

    def __init__(self, tokenizer: Any, *, add_bos_token: bool | None, prefix_token_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.prefix_token_id = (
            prefix_token_id if prefix_token_id is not None else (bos if bos is not None else eos)
        )
        self.eot_token_id = eos
        self.prefix_text = tokenizer.decode(self.prefix_token_id)  # HFLM's BOS-prefix test of loglikelihood
        self.eos_text = tokenizer.decode(eos, skip_special_tokens=False) if eos is not None else None
        self._texts: dict[tuple[str, bool | None], tuple[int, ...]] = {}
        self._pairs: dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._token_texts: list[str] | None = None
        self._triggers: dict[tuple[str, ...], frozenset[int]] = {}
        self.plans: OrderedDict[Hashable, Any] = OrderedDict()
        self._plain_decode = _decodes_plainly(tokenizer)
        self.lock = threading.Lock()

    # --- tokenisation, as HFLM.tok_encode / TemplateLM._encode_pair / HFLM.tok_batch_encode ---

    def _special_tokens(self, text: str, rule: str) -> bool | None:
        """add_special_tokens for `text`: None leaves the tokenizer's default (HFLM passes nothing)."""
        if rule == "loglikelihood" and has_bos_prefix(text, self.prefix_text):
            return False
        if rule == "generation" and has_bos_prefix(text, self.tokenizer.bos_token):
            return False
        return self.add_bos_token

    def encode_many(self, texts: Sequence[str], *, rule: str = "loglikelihood") -> list[tuple[int, ...]]:
        """Token ids of each text; the misses are encoded in one call to the (Rust) tokenizer."""
        keys = [(t, self._special_tokens(t, rule)) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._texts))
        if missing:
            if len(self._texts) + len(missing) > MAX_CACHED_STRINGS:
                self._texts.clear()
            for special in {s for _, s in missing}:
                batch = [t for t, s in missing if s == special]
                kwargs = {} if special is None else {"add_special_tokens": special}
                ids = self.tokenizer(batch, **kwargs)["input_ids"]
                self._texts.update({(t, special): tuple(i) for t, i in zip(batch, ids, strict=True)})
        return [self._texts[k] for k in keys]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(context, continuation) token ids of each loglikelihood request, as HFLM splits them."""
        missing = [p for p in dict.fromkeys(pairs) if p not in self._pairs]
        if missing:
            if len(self._pairs) + len(missing) > MAX_CACHED_STRINGS:
                self._pairs.clear()
            texts: list[str] = []
            for context, continuation in missing:
                if context:
                    # trailing spaces of the context belong to the continuation: the whole text is
                    # encoded and split after the tokens of the context without them
                    texts += [context + continuation, context.rstrip()]
            encoded = iter(self.encode_many(texts))
            plain = iter(self._plain(missing))
            for context, continuation in missing:
                if context:
                    whole, ctx = next(encoded), next(encoded)
                    self._pairs[(context, continuation)] = (ctx, whole[len(ctx) :])
                else:  # empty context: the prefix token (BOS or EOS) conditions the continuation
                    cont = next(plain)
                    if cont[0] != self.prefix_token_id:
                        self._pairs[(context, continuation)] = ((self.prefix_token_id,), cont)
                    else:
                        self._pairs[(context, continuation)] = (cont[:1], cont[1:])
        return [self._pairs[p] for p in pairs]

    def _plain(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[int, ...]]:
        """Continuations of empty contexts, encoded without special tokens."""
        texts = [cont for ctx, cont in pairs if not ctx]
        if not texts:
            return []
        return [tuple(i) for i in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def decode_many(self, sequences: list[list[int]]) -> list[str]:
        """HFLM's decoding of generated tokens (special tokens skipped), in one call."""
        if not sequences:
            return []
        if self._plain_decode:  # what the tokenizer's decode does, without its per-sequence Python
            # one sequence at a time: decode_batch's thread pool costs more than these short texts
            # and, spinning beside torch's threads, slows the next forward passes
            decode = self.tokenizer.backend_tokenizer.decode
            return [decode(ids, skip_special_tokens=True) for ids in sequences]
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    # --- stop strings ---

    def stop_triggers(self, stops: Sequence[str]) -> frozenset[int]:
        """Tokens whose text holds the last character of a stop string.

        A stop string is complete only after a token that produces its last character, so only rows
        whose new token is one of these need their text checked. A miss (a token whose text differs
        in context) costs extra steps, never a different answer: the answer is cut from the text.
        """
        key = tuple(stops)
        found = self._triggers.get(key)
        if found is None:
            if self._token_texts is None:
                self._token_texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            lasts = {s[-1] for s in stops if s}
            found = frozenset(i for i, text in enumerate(self._token_texts) if any(c in text for c in lasts))
            self._triggers[key] = found
        return found


_encoders: weakref.WeakKeyDictionary[Any, dict[tuple, RequestEncoder]] = weakref.WeakKeyDictionary()
_encoders_lock = threading.Lock()


def request_encoder(tokenizer: Any, *, add_bos_token: bool | None = None, prefix_token_id: int | None = None):
    """The `RequestEncoder` of a tokenizer (one per tokenizer object and options, kept while it lives)."""
    with _encoders_lock:
        per_tokenizer = _encoders.setdefault(tokenizer, {})
        key = (add_bos_token, prefix_token_id)
        if key not in per_tokenizer:
            per_tokenizer[key] = RequestEncoder(
                tokenizer, add_bos_token=add_bos_token, prefix_token_id=prefix_token_id
            )
        return per_tokenizer[key]


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
        # what plans depend on besides the requests, the tokenizer and the settings
        self._plan_key = (
            self.batch_size,
            self.max_length,
            str(self._device),
            self._keeps_logits,
            self._greedy_ok(),
            self._eos_ids(),
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
        key = (key, self._plan_key)
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
            return self._score_plan(self.encoder.encode_pairs(pairs))

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
            return self._score_plan(windows), counts

        def run() -> list[float]:
            plan, counts = self._plan(("rolling", tuple(strings)), build)
            scores = self._score(plan)
            totals, at = [], 0
            for n in counts:  # as HFLM: a Python sum of the windows' log-probabilities
                totals.append(sum(lp for lp, _ in scores[at : at + n]))
                at += n
            return totals

        return self._timed(run)

    def _score_plan(self, encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> ScorePlan:
        """Rows (one per distinct input, shared by requests whose input is a prefix of it), sorted
        longest first and cut into batches, with the gather indices of every scored token."""
        # per request: the model input and how many of its last positions predict the continuation
        inputs: list[tuple[int, ...]] = []
        targets: list[tuple[int, ...]] = []
        for context, continuation in encoded:
            if not context or not continuation:
                raise ValueError("a loglikelihood request needs a non-empty context and continuation")
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens exceeds {self.max_length}")
            whole = (tuple(context) + tuple(continuation))[-(self.max_length + 1) :]
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
        device = self._device
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 50_000)
        chunks: list[ScoreChunk] = []
        pending: list[ScoreBatch] = []
        picked: list[list[int]] = [[], []]  # targets and requests of the pending batches
        bounds = _batches([len(r) for r in rows], self.batch_size)
        for start, end in bounds:
            members = range(start, end)
            width = len(rows[start])  # rows are sorted longest first
            first = min(len(inputs[i]) - len(targets[i]) for r in members for i in requests_of_row[r])
            keep = width - first if self._keeps_logits and first > 0 else 0
            offset = first if keep else 0
            at: list[list[int]] = [[], []]  # row and position of each scored token
            for b, r in enumerate(members):
                for i in requests_of_row[r]:
                    begin = len(inputs[i]) - len(targets[i]) - offset
                    at[0] += [b] * len(targets[i])
                    at[1] += range(begin, begin + len(targets[i]))
                    picked[0] += targets[i]
                    picked[1] += [i] * len(targets[i])
            padded = torch.full((len(members), width), self.pad_token_id, dtype=torch.long)
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
            if len(picked[0]) * vocab >= SCORE_CHUNK_ELEMENTS or end == len(rows):
                chunks.append(
                    ScoreChunk(
                        batches=pending,
                        targets=torch.tensor(picked[0], device=device),
                        requests=torch.tensor(picked[1], device=device),
                    )
                )
                pending, picked = [], [[], []]
        return ScorePlan(chunks=chunks, n_requests=len(inputs))

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
        key = ("generate", tuple(ctx for ctx, _ in args), tuple(kinds), tuple(_freeze(d) for d in distinct))
        return self._timed(
            lambda: self._generate(self._plan(key, lambda: self._generation_plan(args)), len(args))
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

    def _generation_plan(self, args: Sequence[tuple[str, dict]]) -> list[GenerationGroup]:
        """Requests grouped by generation kwargs, contexts encoded, truncated, sorted and left-padded."""
        greedy_ok, eos = self._greedy_ok(), self._eos_ids()
        by_kwargs: dict[Hashable, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            by_kwargs.setdefault(_freeze(gen_kwargs), []).append(i)
        groups: list[GenerationGroup] = []
        for members in by_kwargs.values():
            gen_kwargs = args[members[0]][1]
            if not isinstance(gen_kwargs, dict):
                raise ValueError(f"expected generation kwargs as a dict, got {gen_kwargs!r}")
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, 256))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.encoder.eos_text)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            if "max_length" in kwargs:
                raise ValueError("generation kwargs give max_length; use max_gen_toks")
            # as HFLM: greedy unless sampling is asked for; temperature is then dropped
            if kwargs.get("do_sample") is False and kwargs.get("temperature", 0.0) == 0.0:
                kwargs.pop("temperature", None)
                if set(kwargs) == {"do_sample"} and greedy_ok:
                    kwargs = {}
            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise ValueError(
                    f"max_gen_toks {max_gen_toks} leaves no room for a context in {self.max_length} tokens"
                )
            group = GenerationGroup(
                until=until,
                max_gen_toks=max_gen_toks,
                kwargs=kwargs,
                eos=eos,
                triggers=self.encoder.stop_triggers(until),
            )
            encoded = self.encoder.encode_many([args[i][0] for i in members], rule="generation")
            contexts = {i: tokens[-max_ctx_len:] for i, tokens in zip(members, encoded, strict=True)}
            ranked = sorted(members, key=lambda i: (-len(contexts[i]), args[i][0]))
            lengths = [len(contexts[i]) + max_gen_toks for i in ranked]
            for start, end in _batches(lengths, self.batch_size):
                rows = ranked[start:end]
                width = len(contexts[rows[0]])
                ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
                mask = torch.ones((len(rows), width + max_gen_toks), dtype=torch.long)
                for b, i in enumerate(rows):
                    pad = width - len(contexts[i])
                    ids[b, pad:] = torch.tensor(contexts[i], dtype=torch.long)
                    mask[b, :pad] = 0
                # as generate: positions count real tokens; padding gets 1 (it is masked anyway)
                positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
                group.batches.append(
                    GenerationBatch(
                        inputs=ids.to(self._device),
                        mask=mask.to(self._device),
                        positions=positions.to(self._device),
                        requests=rows,
                    )
                )
            groups.append(group)
        return groups

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
                **_cache_of(out),
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


def _cache_of(out: Any) -> dict[str, Any]:
    """The key-value cache of a forward pass, as the next call takes it: `cache` (transformers 5.25 on)
    or `past_key_values` (earlier releases, and later ones with a deprecation warning)."""
    cache = getattr(out, "cache", None)
    if cache is not None:
        return {"cache": cache}
    return {"past_key_values": out.past_key_values}
