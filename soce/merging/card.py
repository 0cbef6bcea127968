"""The soup's model card (README.md with Hugging Face front matter)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class CardIngredient:
    path: str
    content_hash: str
    weight: float | None


def model_card(
    *,
    name: str,
    method: str,
    summary: str,
    ingredients: Sequence[CardIngredient],
    base: CardIngredient | None,
    base_model_id: str | None,
    dtype: str,
    parameters: Mapping[str, object],
    groups: Mapping[str, Sequence[float]] | None = None,
    scores: Mapping[str, Mapping[str, float] | float] | None = None,
    mergekit: bool = True,
    verdict: str | None = None,
    recommended: bool | None = None,
) -> str:
    """The card; `verdict` (with `recommended`) opens it: whether to use this soup at all."""
    front: dict[str, object] = {"library_name": "transformers", "tags": ["merge", "model-soup", "soce"]}
    if base_model_id:
        front["base_model"] = base_model_id
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    if verdict:
        head = {True: "Recommended", False: "Not recommended", None: "Verdict"}[recommended]
        lines += [f"> **{head}:** {verdict}", ""]
    lines.append(
        f"A model soup of {len(ingredients)} checkpoint(s), merged with SoCE using the `{method}` method "
        f"({summary}), written as {dtype}."
    )
    lines += [
        "",
        "## Ingredients",
        "",
        "| # | checkpoint | content hash | weight |",
        "|---|---|---|---|",
    ]
    for i, ing in enumerate(ingredients, start=1):
        w = "per group" if ing.weight is None else f"{ing.weight:.6g}"
        lines.append(f"| {i} | `{ing.path}` | `{ing.content_hash}` | {w} |")
    if base is not None:
        lines += [
            "",
            f"Base model (task vectors are taken against it): `{base.path}` (`{base.content_hash}`).",
        ]
    if parameters:
        lines += [
            "",
            "## Parameters",
            "",
            "```yaml",
            yaml.safe_dump(dict(parameters), sort_keys=True, default_flow_style=None).strip(),
            "```",
        ]
    if groups:
        lines += [
            "",
            "## Layer-wise weights",
            "",
            "| tensors | " + " | ".join(f"#{i}" for i in range(1, len(ingredients) + 1)) + " |",
        ]
        lines.append("|---|" + "---|" * len(ingredients))
        for group, ws in groups.items():
            lines.append(f"| {group} | " + " | ".join(f"{w:.4g}" for w in ws) + " |")
    if scores:
        lines += ["", "## Scores", ""]
        for key, value in scores.items():
            if isinstance(value, Mapping):
                lines.append(f"- **{key}**: " + ", ".join(f"{k} {v:.4g}" for k, v in value.items()))
            else:
                lines.append(f"- **{key}**: {value:.4g}")
    lines += ["", "## Reproduce", "", "```bash", "soce merge soce_recipe.yml OUT"]
    if mergekit:
        lines.append("mergekit-yaml mergekit_config.yml OUT   # the same soup with mergekit")
    lines += ["```", ""]
    return "\n".join(lines)
