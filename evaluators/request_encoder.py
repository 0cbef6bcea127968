"""HFLM's tokenisation rules for one tokenizer, every result remembered (`RequestEncoder`).

lm-eval's HFLM tokenises each request on each evaluation. Tokens depend only on the strings and the
tokenizer, so here they are computed once per tokenizer object and options and shared by every model
that uses it, with the request plans built from them (`evaluators.request_plans`).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from lm_eval.models.utils import has_bos_prefix

MAX_CACHED_STRINGS = 1_000_000  # tokenisations remembered per tokenizer before the cache starts over


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


def request_encoder(
    tokenizer: Any, *, add_bos_token: bool | None = None, prefix_token_id: int | None = None
) -> RequestEncoder:
    """The `RequestEncoder` of a tokenizer (one per tokenizer object and options, kept while it lives)."""
    with _encoders_lock:
        per_tokenizer = _encoders.setdefault(tokenizer, {})
        key = (add_bos_token, prefix_token_id)
        if key not in per_tokenizer:
            per_tokenizer[key] = RequestEncoder(
                tokenizer, add_bos_token=add_bos_token, prefix_token_id=prefix_token_id
            )
        return per_tokenizer[key]
