"""The tiny reference model zoo: related checkpoints of one base, built locally with no downloads."""

from soce.zoo.examples import LlamaShape, make_related_checkpoints, write_llama_checkpoint
from soce.zoo.tokenizer import build_char_tokenizer

__all__ = ["LlamaShape", "build_char_tokenizer", "make_related_checkpoints", "write_llama_checkpoint"]
