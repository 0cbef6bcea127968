"""A candidate checkpoint: a Hugging Face model folder whose tensors are read lazily."""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from soce.checkpoints._dtypes import FLOAT_CODES, STORAGE, widen
from soce.checkpoints._safetensors import SafetensorsFile, TensorInfo, read_range
from soce.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, PickleRefusedError

log = logging.getLogger(__name__)

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Files that define the tokenizer; a soup copies them from its first ingredient.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)


def _first_line(error: Exception) -> str:
    """The telling line of a long library message, without terminal escapes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    telling = [ln for ln in lines if "Unpickler error" in ln or "Unsupported global" in ln]
    return (telling or lines or [type(error).__name__])[0]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON ({e})") from None


class Checkpoint:
    """One candidate: its config, tokenizer files and an index of its tensors (nothing loaded)."""

    def __init__(
        self,
        path: Path,
        tensors: dict[str, TensorInfo],
        files: list[SafetensorsFile],
        *,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.path = path
        self.folder = path if path.is_dir() else path.parent
        self.tensors = tensors
        self._files = {f.path: f for f in files}
        self._arrays = arrays  # only for opted-in pickle checkpoints
        config_path = self.folder / "config.json"
        self.config: dict[str, Any] | None = _read_json(config_path) if config_path.is_file() else None

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
        """Open a model folder (or a single .safetensors file) and validate every header."""
        path = Path(path).expanduser()
        if not path.exists():
            raise CheckpointNotFoundError(f"{path}: no such file or folder")
        if path.is_file():
            if path.suffix != ".safetensors":
                raise CheckpointNotFoundError(f"{path}: not a .safetensors file or a model folder")
            f = SafetensorsFile(path)
            return cls(path, dict(f.tensors), [f])
        index = path / SAFETENSORS_INDEX
        if index.is_file():
            return cls._open_sharded(path, index)
        single = path / SAFETENSORS_SINGLE
        if single.is_file():
            f = SafetensorsFile(single)
            return cls(path, dict(f.tensors), [f])
        pickles = [p for p in (path / PICKLE_INDEX, path / PICKLE_SINGLE) if p.is_file()]
        if pickles:
            if not allow_pickle:
                raise PickleRefusedError(
                    f"{path}: only pickle weights ({pickles[0].name}) found; pickle files can run code when "
                    "loaded, so they are refused. Convert to safetensors, or opt in with --allow-pickle "
                    "(loaded with torch.load(weights_only=True))"
                )
            return cls._open_pickle(path, pickles[0])
        raise CheckpointNotFoundError(
            f"{path}: no weights found (expected {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX})"
        )

    @classmethod
    def _open_sharded(cls, folder: Path, index: Path) -> Checkpoint:
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptCheckpointError(f"{index}: has no 'weight_map'")
        files: dict[str, SafetensorsFile] = {}
        for shard in sorted({_shard_name(index, s) for s in weight_map.values()}):
            shard_path = _shard_path(folder, index, shard)
            if not shard_path.is_file():
                raise CheckpointNotFoundError(
                    f"{index}: names shard {shard!r}, which is missing from {folder}"
                )
            files[shard] = SafetensorsFile(shard_path)
        tensors: dict[str, TensorInfo] = {}
        # keep the order of the shards' own headers, which is the order tensors lie on disk
        for shard, f in files.items():
            for name, info in f.tensors.items():
                if weight_map.get(name) == shard:
                    tensors[name] = info
        missing = [n for n, s in weight_map.items() if n not in files[s].tensors]
        if missing:
            raise CorruptCheckpointError(
                f"{index}: lists tensors not found in their shards: {', '.join(missing[:5])}"
            )
        return cls(folder, tensors, list(files.values()))

    @classmethod
    def _open_pickle(cls, folder: Path, entry: Path) -> Checkpoint:
        import torch  # only on this opted-in path

        if entry.name == PICKLE_INDEX:
            weight_map = _read_json(entry).get("weight_map", {})
            names = {_shard_name(entry, s) for s in weight_map.values()}
            parts = [_shard_path(folder, entry, p) for p in sorted(names)]
        else:
            parts = [entry]
        arrays: dict[str, np.ndarray] = {}
        tensors: dict[str, TensorInfo] = {}
        for part in parts:
            try:
                state = torch.load(part, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # torch raises many types for bad pickles
                raise CorruptCheckpointError(
                    f"{part}: cannot be loaded with torch.load(weights_only=True): {_first_line(e)}"
                ) from None
            if not isinstance(state, dict):
                raise CorruptCheckpointError(f"{part}: is not a state dict (holds a {type(state).__name__})")
            for name, t in state.items():
                if not isinstance(t, torch.Tensor):
                    raise CorruptCheckpointError(f"{part}: entry {name!r} is not a tensor")
                code = {
                    torch.float32: "F32",
                    torch.float16: "F16",
                    torch.bfloat16: "BF16",
                    torch.float64: "F64",
                    torch.int64: "I64",
                    torch.int32: "I32",
                    torch.int8: "I8",
                    torch.uint8: "U8",
                    torch.bool: "BOOL",
                }.get(t.dtype)
                if code is None:
                    raise CorruptCheckpointError(f"{part}: tensor {name!r} has unsupported dtype {t.dtype}")
                t = t.contiguous()
                arr = t.view(torch.int16).numpy().view(np.uint16) if code == "BF16" else t.numpy()
                arrays[name] = arr
                nbytes = arr.nbytes
                tensors[name] = TensorInfo(name, code, tuple(t.shape), part, -1, nbytes)
        return cls(folder, tensors, [], arrays=arrays)

    # --- reading ---------------------------------------------------------------------------
    def read(self, name: str, start: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, start + out.size) of tensor `name` in its storage dtype (flat).

        Without `out`, the whole tensor is read (flat).
        """
        info = self.tensors[name]
        if out is None:
            out = np.empty(info.numel - start, dtype=STORAGE[info.dtype])
        if self._arrays is not None:
            np.copyto(out, self._arrays[name].reshape(-1)[start : start + out.size])
            return out
        return read_range(self._files[info.file].fileno(), info, start, out)

    def read_float32(self, name: str) -> np.ndarray:
        """The whole tensor widened to float32, in its shape."""
        info = self.tensors[name]
        if info.dtype not in FLOAT_CODES:
            raise CheckpointError(f"{self.path}: tensor {name!r} is {info.dtype}, not a float tensor")
        raw = self.read(name)
        out = raw if info.dtype == "F32" else widen(raw, info.dtype, np.empty(raw.size, np.float32))
        return out.reshape(info.shape)

    # --- facts -----------------------------------------------------------------------------
    @property
    def is_pickle(self) -> bool:
        return self._arrays is not None

    @property
    def weight_files(self) -> list[Path]:
        return sorted({info.file for info in self.tensors.values()})

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(i.shape) for i in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.tensors.values())

    @property
    def dtype(self) -> str:
        """The float dtype code most parameters are stored in (integer buffers do not count)."""
        counts: Counter[str] = Counter()
        for i in self.tensors.values():
            if i.dtype in FLOAT_CODES:
                counts[i.dtype] += i.numel
        return counts.most_common(1)[0][0] if counts else "F32"

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.folder / n for n in TOKENIZER_FILES if (self.folder / n).is_file()]

    @property
    def tied_embeddings(self) -> bool:
        cfg = self.config or {}
        tied = cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False))
        return bool(tied)

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, tensors={len(self.tensors)})"


def _shard_name(index: Path, shard: object) -> str:
    if not isinstance(shard, str) or not shard:
        raise CorruptCheckpointError(f"{index}: a shard name in 'weight_map' is not a file name: {shard!r}")
    return shard


def _shard_path(folder: Path, index: Path, shard: str) -> Path:
    """The shard file an index names, which must lie in the checkpoint's own folder (no absolute path,
    no '..' out of it): an index is data, and must not make us read files elsewhere."""
    path = folder / shard
    if Path(shard).is_absolute() or not path.resolve().is_relative_to(folder.resolve()):
        raise CorruptCheckpointError(
            f"{index}: shard {shard!r} is outside the checkpoint folder {folder}; shards must be files in it"
        )
    return path
