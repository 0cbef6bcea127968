"""Fixtures: a tiny task folder in the zoo's format and two tiny random checkpoints.

Scores are near chance; these tests are about mechanics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from soce.schemas.suite import SuiteSpec
from soce.zoo import LlamaShape, make_related_checkpoints
from tests.evaluators.task_folder import Zoo, write_zoo_tasks


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """A shared task folder and two candidates; tests must not modify it (see `fresh_zoo`)."""
    root = write_zoo_tasks(tmp_path_factory.mktemp("zoo"))
    shape = LlamaShape(hidden=32, layers=2, intermediate=64)
    candidates = make_related_checkpoints(root / "candidates", 2, shape=shape)
    return Zoo(root, SuiteSpec.from_file(root / "suite.yaml"), candidates)


@pytest.fixture
def fresh_zoo(tmp_path: Path, zoo: Zoo) -> Zoo:
    """A task folder of this test's own (to edit), with the shared candidates."""
    root = write_zoo_tasks(tmp_path / "zoo")
    return Zoo(root, SuiteSpec.from_file(root / "suite.yaml"), zoo.candidates)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: tiny models run faster and identically on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
