"""Loading merge recipes from YAML: ours, or mergekit's config for the methods we share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from soce.errors import RecipeError, UnknownMergeMethodError
from soce.schemas.merge import MergeRecipe, pydantic_error_message

# mergekit merge_method -> (our method, parameters implied by the name)
MERGEKIT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("linear", {}),
    "task_arithmetic": ("task_arithmetic", {}),
    "ties": ("ties", {}),
    "dare_linear": ("dare", {}),
    "dare_ties": ("dare", {"sign_consensus": True}),
}
_MERGEKIT_KEYS = {"models", "merge_method", "base_model", "parameters", "dtype", "out_dtype", "name"}
_LINEAR_FAMILY = {"linear"}


def load_recipe(path: str | Path) -> MergeRecipe:
    """Read a recipe file; relative model paths are taken relative to the file's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot be read ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    recipe = (
        from_mergekit(data, where=f"{path}: ")
        if "merge_method" in data
        else parse_recipe(data, where=f"{path}: ")
    )
    return _relative_to(recipe, path.parent)


def parse_recipe(data: dict[str, Any], where: str = "") -> MergeRecipe:
    if "models" in data and "candidates" not in data:
        data = {k: v for k, v in data.items() if k != "models"} | {"candidates": data["models"]}
    try:
        return MergeRecipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(where + pydantic_error_message(e)) from None


def _relative_to(recipe: MergeRecipe, folder: Path) -> MergeRecipe:
    def fix(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (folder / q))

    return recipe.model_copy(
        update={
            "candidates": [c.model_copy(update={"path": fix(c.path)}) for c in recipe.candidates],
            "base": fix(recipe.base) if recipe.base else None,
        }
    )


def _scalar(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(
            f"{where} is {value!r}; soce merge takes a number here (mergekit gradients and filters are not "
            "supported: use method: layerwise for per-layer weights)"
        )
    return float(value)


def from_mergekit(data: dict[str, Any], where: str = "") -> MergeRecipe:
    """Convert a mergekit-yaml config (models / merge_method / base_model / dtype) to our recipe."""
    unknown = sorted(set(data) - _MERGEKIT_KEYS)
    if unknown:
        raise RecipeError(
            f"{where}mergekit key(s) {', '.join(map(repr, unknown))} are not supported by soce merge"
        )
    mk_method = data.get("merge_method")
    if mk_method not in MERGEKIT_METHODS:
        raise UnknownMergeMethodError(
            f"{where}mergekit method {mk_method!r} has no SoCE equivalent; supported: "
            + ", ".join(sorted(MERGEKIT_METHODS))
        )
    method, implied = MERGEKIT_METHODS[mk_method]
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise RecipeError(f"{where}'models' must be a non-empty list of {{model: PATH, parameters: {{...}}}}")
    base = data.get("base_model")
    shared = dict(data.get("parameters") or {})
    default_weight = shared.pop("weight", None)
    default_density = shared.pop("density", None)
    shared.pop("int8_mask", None)  # a memory option of mergekit's; we compute in float32 anyway
    if mk_method in _LINEAR_FAMILY and base is not None:
        raise RecipeError(
            f"{where}base_model is ignored by mergekit's {mk_method}; remove it or list it under models"
        )
    candidates = []
    for i, entry in enumerate(models):
        loc = f"{where}models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise RecipeError(f"{loc} needs a 'model' path")
        model = entry["model"]
        if not isinstance(model, str):
            raise RecipeError(f"{loc}.model must be a local path (LoRA and hub references are not supported)")
        if base is not None and model == base:
            continue  # mergekit lets the base appear among the models; it contributes as the base
        params = dict(entry.get("parameters") or {})
        weight = params.pop("weight", default_weight)
        density = params.pop("density", default_density)
        if params:
            raise RecipeError(f"{loc}.parameters: unsupported key(s) {', '.join(sorted(params))}")
        candidates.append(
            {
                "path": model,
                "weight": None if weight is None else _scalar(weight, f"{loc}.parameters.weight"),
                "density": None if density is None else _scalar(density, f"{loc}.parameters.density"),
            }
        )
    for key, value in shared.items():
        if isinstance(value, list | dict):
            _scalar(value, f"{where}parameters.{key}")
    dtype = data.get("out_dtype") or data.get("dtype")
    recipe = {
        "method": method,
        "candidates": candidates,
        "base": base,
        "parameters": {**shared, **implied},
        "dtype": dtype_name(dtype, where) if dtype else None,
        "name": data.get("name"),
    }
    return parse_recipe(recipe, where)


def dtype_name(value: str, where: str = "") -> str:
    """The canonical name of a dtype written `float16`, `fp16`, `torch.float16` and the like; a RecipeError
    whose message starts with `where` for an unknown one."""
    from soce.checkpoints._dtypes import CODE_TO_NAME, code_for

    try:
        return CODE_TO_NAME[code_for(str(value))]
    except ValueError as e:
        raise RecipeError(f"{where}dtype: {e}") from None
