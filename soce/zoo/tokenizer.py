"""A character-level tokenizer built with `tokenizers`, saved as a Hugging Face tokenizer."""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"


def build_char_tokenizer(folder: Path | None = None):
    """A PreTrainedTokenizerFast with one token per character; saved to `folder` when given."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARACTERS))}
    # BPE without merges splits text into single characters
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()  # decode by concatenation; without it tokens are joined with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    if folder is not None:
        tok.save_pretrained(folder)
    return tok


def vocab_size() -> int:
    return len(SPECIALS) + len(CHARACTERS)
