"""Related Llama checkpoints (one random base plus small perturbations) for tests, demos and benchmarks.

These have no skills; they exist so merging can be exercised on real model folders that
transformers loads. Weight averaging is only meaningful between fine-tunes of one base, which
is what the perturbations imitate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soce.checkpoints._dtypes import narrow
from soce.checkpoints._safetensors import PlannedTensor, plan_shards, pwrite_all, write_index


@dataclass(frozen=True)
class LlamaShape:
    hidden: int = 32
    layers: int = 2
    intermediate: int = 64
    vocab: int = 0  # 0: the size of the character tokenizer
    heads: int = 4
    kv_heads: int = 2
    tied: bool = False

    def vocab_size(self) -> int:
        if self.vocab:
            return self.vocab
        from soce.zoo.tokenizer import vocab_size

        return vocab_size()

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i, v = self.hidden, self.intermediate, self.vocab_size()
        head_dim = h // self.heads
        kv = self.kv_heads * head_dim
        names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            names += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        names.append(("model.norm.weight", (h,)))
        if not self.tied:
            names.append(("lm_head.weight", (v, h)))
        return names

    def config(self, dtype: str) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab_size(),
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tied,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "dtype": dtype,
        }


def write_llama_checkpoint(
    folder: Path,
    shape: LlamaShape,
    tensors: dict[str, np.ndarray],
    *,
    dtype: str = "float32",
    shard_size: int | None = None,
    tokenizer: bool = True,
) -> Path:
    """Write float32 `tensors` as a model folder in `dtype` (float32, bfloat16 or float16)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    planned = [PlannedTensor(name, code, tuple(arr.shape)) for name, arr in tensors.items()]
    shards = plan_shards(planned, max_shard_bytes=shard_size or 1 << 62)
    for shard in shards:
        fd = os.open(folder / shard.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, shard.header, 0)
            for name, offset in shard.offsets.items():
                arr = tensors[name].astype(np.float32).reshape(-1)
                if code == "BF16":
                    raw = narrow(arr.copy(), "BF16", np.empty(arr.size, np.uint16))
                elif code == "F16":
                    raw = arr.astype(np.float16)
                else:
                    raw = arr
                pwrite_all(fd, raw, offset)
            os.ftruncate(fd, shard.size)
        finally:
            os.close(fd)
    if len(shards) > 1:
        write_index(folder / "model.safetensors.index.json", shards, sum(t.nbytes for t in planned))
    (folder / "config.json").write_text(json.dumps(shape.config(dtype), indent=2) + "\n")
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2) + "\n"
    )
    if tokenizer:
        from soce.zoo.tokenizer import build_char_tokenizer

        build_char_tokenizer(folder)
    return folder


def random_base(shape: LlamaShape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in shape.tensors():
        if name.endswith("norm.weight"):
            out[name] = np.ones(dims, np.float32) + rng.standard_normal(dims, dtype=np.float32) * 0.05
        else:
            out[name] = rng.standard_normal(dims, dtype=np.float32) * 0.02
    return out


def make_related_checkpoints(
    root: Path,
    n: int = 4,
    *,
    shape: LlamaShape | None = None,
    dtype: str = "float32",
    seed: int = 0,
    spread: float = 0.1,
    shard_size: int | None = None,
    with_base: bool = False,
    tokenizer: bool = True,
) -> list[Path]:
    """`n` checkpoints that share one random base, each perturbed by `spread` relative noise.

    Returns their folders (and the base's folder last when `with_base`).
    """
    shape = shape or LlamaShape()
    base = random_base(shape, seed)
    folders = []
    for k in range(n):
        rng = np.random.default_rng([seed, k + 1])
        tensors = {
            name: arr + rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(spread * 0.02)
            for name, arr in base.items()
        }
        folders.append(
            write_llama_checkpoint(
                root / f"candidate-{k}",
                shape,
                tensors,
                dtype=dtype,
                shard_size=shard_size,
                tokenizer=tokenizer,
            )
        )
    if with_base:
        folders.append(
            write_llama_checkpoint(
                root / "base", shape, base, dtype=dtype, shard_size=shard_size, tokenizer=tokenizer
            )
        )
    return folders
