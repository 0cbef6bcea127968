"""`soce demo`: build (or reuse) the reference zoo and run the whole SoCE pipeline on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from soce.config import get_settings
from soce.schemas.run import RunRecipe
from workers.finalize import RunResult
from workers.local import run_local
from workers.progress import Stages

DEMO_TRIALS = {"tiny": 12, "demo": 30}


def zoo_folder(size: str, seed: int = 0, pool: str = "default") -> Path:
    name = f"{size}-seed{seed}" if pool == "default" else f"{size}-{pool}-seed{seed}"
    return get_settings().data_dir / "zoo" / name


def ensure_zoo(size: str, seed: int, stages: Stages, pool: str = "default") -> Path:
    """The zoo under the data folder, built when missing or built by another zoo version, size or pool."""
    from soce.zoo.build import POOLS, SIZES, ZOO_VERSION, build_zoo

    if size not in SIZES:
        raise ValueError(f"unknown zoo size {size!r}; use one of {', '.join(SIZES)}")
    if pool not in POOLS:
        raise ValueError(f"unknown zoo pool {pool!r}; use one of {', '.join(POOLS)}")
    folder = zoo_folder(size, seed, pool)
    manifest = folder / "zoo.json"
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if (found.get("version"), found.get("size"), found.get("pool")) == (ZOO_VERSION, size, pool):
            stages.note(f"reusing the {size} zoo in {folder}")
            return folder
    label = size if pool == "default" else f"{size} {pool}"
    stages.note(f"building the {label} zoo in {folder} (once; later runs reuse it)")

    def factory(total: int):
        ctx = stages.stage("zoo", total=total, unit="step")
        advance = ctx.__enter__()
        _open.append(ctx)
        return advance

    _open: list = []
    try:
        build_zoo(folder, size=size, seed=seed, pool=pool, force=True, progress=factory)
    finally:
        for ctx in _open:
            ctx.__exit__(*sys.exc_info())
    return folder


def demo_recipe(zoo: Path, out: Path, size: str, pool: str = "default") -> RunRecipe:
    return RunRecipe(
        name=f"soce-demo-{size}" + ("" if pool == "default" else f"-{pool}"),
        candidates=[str(zoo / "candidates" / "*")],
        suite=str(zoo / "suite.yaml"),
        sampler="tpe",
        n_trials=DEMO_TRIALS[size],
        seed=0,
        output=str(out),
    )


def run_demo(
    size: str = "demo", out: Path = Path("soce-demo"), *, quiet: bool = False, pool: str = "default"
) -> RunResult:
    stages = Stages(quiet=quiet)
    zoo = ensure_zoo(size, 0, stages, pool=pool)
    return run_local(demo_recipe(zoo, out.expanduser().resolve(), size, pool), stages=stages)
