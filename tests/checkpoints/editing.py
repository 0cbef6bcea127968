"""Helpers that edit a test checkpoint folder in place."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from soce.checkpoints import Checkpoint, save_file


def rewrite_weights(folder: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Load a float32 candidate's tensors, let `change` edit the dict, write model.safetensors again."""
    with Checkpoint.open(folder) as ckpt:
        tensors = {name: ckpt.read_float32(name).copy() for name in ckpt.tensors}
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))
