"""Shared fixtures: an isolated data folder, offline Hugging Face settings, tiny related checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from soce.config import get_settings
from soce.zoo import LlamaShape, make_related_checkpoints


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory):
    os.environ["SOCE_DATA_DIR"] = str(tmp_path_factory.mktemp("soce-data"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


MakeCheckpoints = Callable[..., list[Path]]


@pytest.fixture
def make_checkpoints(tmp_path: Path) -> MakeCheckpoints:
    """Factory: make_checkpoints(n=3, dtype='float32', tied=False, shard_size=None, with_base=False, ...)."""
    counter = iter(range(1000))

    def make(
        n: int = 3, *, hidden: int = 32, layers: int = 2, intermediate: int = 64, tied: bool = False, **kwargs
    ) -> list[Path]:
        root = tmp_path / f"ckpts-{next(counter)}"
        shape = LlamaShape(hidden=hidden, layers=layers, intermediate=intermediate, tied=tied)
        return make_related_checkpoints(root, n, shape=shape, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reference zoo (seed 0), built once per test session."""
    from soce.zoo.build import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo") / "tiny", size="tiny", seed=0)


BFCL_EVAL_VERSION = "2026.3.23"


@pytest.fixture(scope="session")
def bfcl_wheel() -> Path:
    """bfcl-eval's wheel (its data only is used), downloaded once into a cache kept between runs."""
    import subprocess
    import sys

    cache = Path(os.environ.get("SOCE_TEST_CACHE") or "~/.cache/soce-test").expanduser() / "wheels"
    pattern = f"bfcl_eval-{BFCL_EVAL_VERSION}-*.whl"
    if not sorted(cache.glob(pattern)):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"bfcl-eval=={BFCL_EVAL_VERSION}",
             "-d", str(cache)],
            check=True, timeout=300,
        )  # fmt: skip
    return sorted(cache.glob(pattern))[0]
