"""Writing a soup folder: weights, config, tokenizer, model card and recipes, atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from soce.checkpoints import Checkpoint, DigestCache, content_hash, default_digest_cache, ensure_compatible
from soce.checkpoints._dtypes import CODE_TO_NAME, code_for
from soce.config import get_settings
from soce.errors import OutputExistsError
from soce.merging._base import MergeContext, MergeMethod, count_layers
from soce.merging.card import CardIngredient, model_card
from soce.merging.engine import StreamingMerge
from soce.merging.layerwise import Layerwise
from soce.merging.registry import build_method
from soce.schemas.merge import MergeRecipe

log = logging.getLogger(__name__)

RECIPE_FILE = "soce_recipe.yml"
MERGEKIT_FILE = "mergekit_config.yml"
ProgressFactory = Callable[[int], Callable[[int], None]]


@dataclass(frozen=True)
class SoupIngredient:
    path: str
    content_hash: str
    weight: float | None


@dataclass(frozen=True)
class Soup:
    """A written soup: where it is, what went in, and what it cost."""

    path: Path
    method: str
    dtype: str
    ingredients: list[SoupIngredient]
    base: SoupIngredient | None
    num_tensors: int
    nbytes: int
    shards: int
    seconds: float
    mergekit_config: bool


@dataclass
class PreparedMerge:
    """Opened, checked inputs and the configured method: everything short of writing."""

    recipe: MergeRecipe
    candidates: list[Checkpoint]
    base: Checkpoint | None
    method: MergeMethod
    out_dtype: str

    def close(self) -> None:
        for c in [*self.candidates, *([self.base] if self.base else [])]:
            c.close()


def prepare_merge(recipe: MergeRecipe) -> PreparedMerge:
    """Open every input, check they can be merged, and build the method; raises SoceError subtypes."""
    candidates = [Checkpoint.open(c.path, allow_pickle=recipe.allow_pickle) for c in recipe.candidates]
    base = Checkpoint.open(recipe.base, allow_pickle=recipe.allow_pickle) if recipe.base else None
    ensure_compatible([*candidates, *([base] if base else [])])
    first = candidates[0]
    context = MergeContext(
        tensor_names=tuple(first.tensors),
        num_layers=count_layers(list(first.tensors), first.config),
        labels=tuple(c.path for c in recipe.candidates),
    )
    method = build_method(recipe, context)
    out_dtype = code_for(recipe.dtype) if recipe.dtype else first.dtype
    return PreparedMerge(recipe, candidates, base, method, out_dtype)


def _absolute(recipe: MergeRecipe) -> MergeRecipe:
    def ab(p: str) -> str:
        return str(Path(p).expanduser().resolve())

    return recipe.model_copy(
        update={
            "candidates": [c.model_copy(update={"path": ab(c.path)}) for c in recipe.candidates],
            "base": ab(recipe.base) if recipe.base else None,
        }
    )


def write_soup(
    recipe: MergeRecipe,
    out: str | Path,
    *,
    force: bool = False,
    scores: Mapping[str, Any] | None = None,
    progress: ProgressFactory | None = None,
    digest_cache: DigestCache | None = None,
    check_finite: bool = False,
    verdict: tuple[bool, str] | None = None,
) -> Soup:
    """Merge and write a complete model folder at `out`; nothing is left behind on failure.

    verdict: (recommended, the verdict line) opens the model card: whether to use this soup at all.
    """
    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another folder or pass --force to replace it")
    recipe = _absolute(recipe)
    inputs = [Path(c.path) for c in recipe.candidates] + ([Path(recipe.base)] if recipe.base else [])
    for p in inputs:
        if out == p or out in p.parents:
            raise OutputExistsError(f"output {out} would overwrite the input {p}")
        if p in out.parents:
            raise OutputExistsError(f"output {out} is inside the input folder {p}; write it elsewhere")
    settings = get_settings()
    prepared = prepare_merge(recipe)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            _usual_mode(tmp)
            soup = _write(
                prepared,
                tmp,
                out,
                scores,
                progress,
                digest_cache or default_digest_cache(),
                check_finite,
                settings,
                verdict,
            )
            replace_path(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        prepared.close()
    return Soup(**{**soup.__dict__, "path": out, "seconds": time.perf_counter() - started})


def _usual_mode(folder: Path) -> None:
    """mkdtemp makes folders private (0700); a soup should be readable like any folder made here."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def replace_path(tmp: Path, out: Path) -> None:
    """Put the folder (or file) `tmp` at `out`, replacing what is there: renames only, so `out` is never
    half written; the old one is removed after."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _write(
    prepared: PreparedMerge,
    tmp: Path,
    out: Path,
    scores: Mapping[str, Any] | None,
    progress: ProgressFactory | None,
    cache: DigestCache,
    check_finite: bool,
    settings: Any,
    verdict: tuple[bool, str] | None = None,
) -> Soup:
    recipe, method = prepared.recipe, prepared.method
    engine = StreamingMerge(
        method,
        prepared.candidates,
        prepared.base,
        out_dtype=prepared.out_dtype,
        shard_size=recipe.shard_size,
        threads=settings.merge_threads,
        chunk_elements=settings.merge_chunk_elements,
        digest_cache=cache,
        check_finite=check_finite,
    )
    tick = progress(sum(t.nbytes for t in engine.plan())) if progress else None
    result = engine.run(tmp, tick)
    inputs = [*prepared.candidates, *([prepared.base] if prepared.base else [])]
    hashes = [content_hash(ckpt, d) for ckpt, d in zip(inputs, result.digests, strict=True)]
    weights = method.ingredient_weights() or {}
    ingredients = [
        SoupIngredient(c.path, h, weights.get(c.path))
        for c, h in zip(recipe.candidates, hashes, strict=False)
    ]
    base = SoupIngredient(recipe.base, hashes[-1], None) if recipe.base else None
    dtype_name = CODE_TO_NAME.get(prepared.out_dtype, prepared.out_dtype)

    first = prepared.candidates[0]
    if first.config is not None:
        config = dict(first.config)
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = dtype_name
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in ("generation_config.json", *[p.name for p in first.tokenizer_files]):
        src = first.folder / extra
        if src.is_file():
            shutil.copyfile(src, tmp / extra)

    (tmp / RECIPE_FILE).write_text(
        "# Replay with: soce merge soce_recipe.yml OUT\n"
        + yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )
    mk = method.mergekit_config([c.path for c in recipe.candidates], recipe.base, dtype_name)
    if mk is not None:
        note = getattr(method, "mergekit_note", None)
        header = "# Replay with: mergekit-yaml mergekit_config.yml OUT\n"
        if note:
            header += "".join(f"# {line}\n" for line in textwrap.wrap(note, 96))
        (tmp / MERGEKIT_FILE).write_text(
            header + yaml.safe_dump({k: v for k, v in mk.items() if v is not None}, sort_keys=False)
        )
    card = model_card(
        name=recipe.name or out.name,
        method=method.name,
        summary=method.summary,
        ingredients=[CardIngredient(i.path, i.content_hash, i.weight) for i in ingredients],
        base=CardIngredient(base.path, base.content_hash, None) if base else None,
        base_model_id=recipe.base_model_id,
        dtype=dtype_name,
        parameters=recipe.parameters,
        groups=method.group_table() if isinstance(method, Layerwise) else None,
        scores=scores,
        verdict=verdict[1] if verdict else None,
        recommended=verdict[0] if verdict else None,
        mergekit=mk is not None,
    )
    (tmp / "README.md").write_text(card)
    return Soup(
        path=tmp,
        method=method.name,
        dtype=dtype_name,
        ingredients=ingredients,
        base=base,
        num_tensors=len(result.tensors),
        nbytes=result.total_bytes,
        shards=len(result.shards),
        seconds=0.0,
        mergekit_config=mk is not None,
    )


def check_recipe(recipe: MergeRecipe) -> None:
    """Validate a recipe against its inputs (paths, compatibility, method parameters) without writing."""
    prepare_merge(recipe).close()
