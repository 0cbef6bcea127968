"""lm-eval's own command line, as the parity tests run it: the hf model in float32 on the CPU, one
thread, the test's own HF_HOME, no progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path


def lm_eval_command(
    model: Path,
    include_path: str | Path,
    tasks: Sequence[str],
    out: Path,
    *extra: str,
    batch_size: int = 8,
    hf_home: Path,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `lm_eval run` on `tasks` from `include_path`, results under `out`;
    `extra`: more of its options (--apply_chat_template, --log_samples, --limit N, ...)."""
    args = ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu"]
    args += ["--include_path", str(include_path), "--tasks", ",".join(tasks), "--batch_size", str(batch_size)]
    args += [*extra, "--output_path", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(hf_home), "TQDM_DISABLE": "1"}
    return [sys.executable, "-m", "lm_eval", "run", *args], env
