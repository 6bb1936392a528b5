"""``compression`` in ``plan.yaml``: the stages collaborators apply to their update deltas.

```yaml
compression:
  stages: [{stage: topk, fraction: 0.01}, {stage: quantize8}]
  error_feedback: true
```

The spec builds the ``Pipeline`` while the plan is validated, so stages that cannot
compose are one plan error; ``check_plan_composition`` adds the checks that involve
other sections (secure aggregation).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bastion.compression.errors import CompressionError
from bastion.compression.pipeline import Pipeline, check_secure_aggregation
from bastion.compression.stages import BFloat16, Float16, Quantize8, RandomK, Stage, TopK

StageName = Literal["topk", "randomk", "float16", "bfloat16", "quantize8"]
_SPARSIFIERS = ("topk", "randomk")


class StageSpec(BaseModel):
    """One stage: a sparsifier (``topk``, ``randomk`` with ``fraction``) or a value codec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: StageName
    fraction: float | None = Field(
        default=None, gt=0, le=1, description="sparsifiers: share of coordinates kept"
    )
    seed: int = Field(default=0, ge=0, description="randomk: public seed of the shared pattern")

    @model_validator(mode="after")
    def _fraction_where_it_belongs(self) -> StageSpec:
        if self.stage in _SPARSIFIERS and self.fraction is None:
            raise ValueError(f"stage {self.stage!r} needs 'fraction' (share of coordinates kept)")
        if self.stage not in _SPARSIFIERS and self.fraction is not None:
            raise ValueError(f"stage {self.stage!r} codes values and takes no 'fraction'")
        return self

    def build(self) -> Stage:
        if self.stage == "topk":
            assert self.fraction is not None
            return TopK(self.fraction)
        if self.stage == "randomk":
            assert self.fraction is not None
            return RandomK(self.fraction, self.seed)
        if self.stage == "float16":
            return Float16()
        if self.stage == "bfloat16":
            return BFloat16()
        return Quantize8()


class CompressionSpec(BaseModel):
    """The pipeline collaborators encode their deltas with, and whether they keep a residual."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[StageSpec] = Field(min_length=1)
    error_feedback: bool = Field(
        default=True, description="carry what compression dropped into the next round's delta"
    )

    @model_validator(mode="after")
    def _stages_compose(self) -> CompressionSpec:
        try:
            self.pipeline()
        except CompressionError as exc:
            raise ValueError(str(exc)) from None
        return self

    def pipeline(self) -> Pipeline:
        """The validated pipeline (an ``IncompatibleCompression`` if the stages do not compose)."""
        return Pipeline([stage.build() for stage in self.stages])


def check_plan_composition(spec: CompressionSpec, secure_aggregation: bool) -> str | None:
    """Why this compression cannot run with the plan's other mechanisms, or None."""
    if secure_aggregation:
        try:
            check_secure_aggregation(spec.pipeline())
        except CompressionError as exc:
            return f"compression: {exc}"
    return None
