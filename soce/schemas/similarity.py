"""The basin check's result: per layer group, how alike candidates' weights and task vectors are.

Built by `soce.checkpoints.similarity.checkpoint_similarity`; `soce inspect --similarity` prints it and
the analyse step can embed it in a report. Cosines that are undefined (a zero vector) are null.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Matrix = list[list[float | None]]  # candidate x candidate, in the order of SimilarityResult.candidates


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimilarityCriteria(_Result):
    """The thresholds the warnings apply (see checkpoint_similarity for why these values)."""

    min_weight_cosine: float = Field(
        0.5,
        description="checkpoints whose centred weight cosine is below this do not share a pretrained base",
    )
    max_relative_distance: float = Field(
        1.0, description="a task vector at least this large relative to the base is no fine-tuning step"
    )


class GroupSimilarity(_Result):
    """One layer group (or `overall`): cosines between the candidates, and to the reference."""

    group: str = Field(description="embed, blocks[g], norm, head, other, or overall")
    tensors: int = Field(description="float tensors in the group")
    parameters: int = Field(description="elements per checkpoint in the group")
    weights: Matrix = Field(description="cosine of the weights (every number here: each tensor centred)")
    task_vectors: Matrix = Field(description="cosine of the task vectors (weights minus the reference)")
    base_cosine: list[float | None] | None = Field(
        None, description="weight cosine of each candidate with the base, when a base is given"
    )
    relative_distance: list[float | None] = Field(
        description="norm of each task vector over the reference's norm: |theta_i - ref| / |ref|"
    )


class SimilarityResult(_Result):
    """Pairwise similarity of candidates per layer group, the basins they form and the warnings."""

    candidates: list[str] = Field(description="checkpoint paths, in the order of every matrix")
    base: str | None = None
    reference: Literal["base", "mean"] = Field(
        description="what task vectors are taken against: the base, or the candidates' mean"
    )
    depth_groups: int = Field(description="depth buckets the blocks are split into")
    criteria: SimilarityCriteria = Field(default_factory=SimilarityCriteria)
    groups: list[GroupSimilarity] = Field(description="embed, blocks[0..G-1], norm, head, other (as present)")
    overall: GroupSimilarity
    basins: list[list[str]] = Field(
        description="candidates grouped by shared origin (weight cosine above the threshold), largest first"
    )
    flagged: list[str] = Field(description="candidates unlikely to average well with the rest")
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.warnings
