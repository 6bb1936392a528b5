"""``compression`` in ``plan.yaml``: the stages collaborators apply to their update deltas.

```yaml
compression:
  stages: [{stage: topk, fraction: 0.01}, {stage: quantize8}]
  error_feedback: true
  downstream: {stage: blockwise8, block_size: 64}   # optional: the model sent to sites
```

Which stages compose is decided here by stage name and kind (``composition_problem``), so a
plan that cannot run is one plan error; ``bastion.compression.pipeline.Pipeline`` applies the
same rules to the stage objects it is given. ``check_plan_composition`` adds the checks that
involve other sections (secure aggregation). ``downstream`` codes the model the aggregator
sends to the sites for training rounds with one value codec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StageName = Literal[
    "topk", "randomk", "float16", "bfloat16", "quantize8", "blockwise8", "blockwise4", "nf4"
]
SPARSIFIER = "sparsifier"
VALUE_CODEC = "value codec"
#: The kind of each stage the plan can name.
STAGE_KINDS: dict[str, str] = {
    "topk": SPARSIFIER,
    "randomk": SPARSIFIER,
    "float16": VALUE_CODEC,
    "bfloat16": VALUE_CODEC,
    "quantize8": VALUE_CODEC,
    "blockwise8": VALUE_CODEC,
    "blockwise4": VALUE_CODEC,
    "nf4": VALUE_CODEC,
}
#: Codecs with one scale per block of values (``bastion.compression.blockwise``).
BLOCK_QUANTIZERS = frozenset({"blockwise8", "blockwise4", "nf4"})
#: The block sizes a block quantizer accepts (values per float32 scale).
BLOCK_SIZE_RANGE = (8, 1 << 16)
#: Sparsifiers that keep different coordinates at each client (no shared pattern).
PER_CLIENT_PATTERN = frozenset({"topk"})


class StageSpec(BaseModel):
    """One stage: a sparsifier (``topk``, ``randomk`` with ``fraction``) or a value codec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: StageName
    fraction: float | None = Field(
        default=None, gt=0, le=1, description="sparsifiers: share of coordinates kept"
    )
    seed: int = Field(default=0, ge=0, description="randomk: public seed of the shared pattern")
    block_size: int | None = Field(
        default=None,
        ge=BLOCK_SIZE_RANGE[0],
        le=BLOCK_SIZE_RANGE[1],
        description="blockwise8, blockwise4, nf4: values per float32 scale (default 64)",
    )

    @model_validator(mode="after")
    def _fraction_where_it_belongs(self) -> StageSpec:
        if self.kind == SPARSIFIER and self.fraction is None:
            raise ValueError(f"stage {self.stage!r} needs 'fraction' (share of coordinates kept)")
        if self.kind != SPARSIFIER and self.fraction is not None:
            raise ValueError(f"stage {self.stage!r} codes values and takes no 'fraction'")
        if self.block_size is not None and self.stage not in BLOCK_QUANTIZERS:
            raise ValueError(
                f"stage {self.stage!r} takes no 'block_size' (only {sorted(BLOCK_QUANTIZERS)} do)"
            )
        return self

    @property
    def kind(self) -> str:
        return STAGE_KINDS[self.stage]


class CompressionSpec(BaseModel):
    """The pipeline collaborators encode their deltas with, and whether they keep a residual."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[StageSpec] = Field(min_length=1)
    error_feedback: bool = Field(
        default=True, description="carry what compression dropped into the next round's delta"
    )
    downstream: StageSpec | None = Field(
        default=None, description="the value codec of the model sent to sites for training"
    )

    @model_validator(mode="after")
    def _stages_compose(self) -> CompressionSpec:
        problem = composition_problem([(s.stage, s.kind) for s in self.stages])
        if problem is None and self.downstream is not None:
            problem = downstream_problem(self.downstream.stage, self.downstream.kind)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def names(self) -> list[str]:
        return [s.stage for s in self.stages]


def composition_problem(stages: Sequence[tuple[str, str]]) -> str | None:
    """Why stages, given as (name, kind), cannot form one pipeline, or None when they can.

    At most one sparsifier, first, then at most one value codec: coordinates are chosen
    from the exact values, and a value is coded once.
    """
    names = [name for name, _ in stages]
    sparsifiers = [i for i, (_, kind) in enumerate(stages) if kind == SPARSIFIER]
    codecs = [i for i, (_, kind) in enumerate(stages) if kind == VALUE_CODEC]
    if len(sparsifiers) > 1:
        return (
            f"pipeline {names} sparsifies twice ({[names[i] for i in sparsifiers]}): "
            "use one sparsifier with the combined fraction"
        )
    if len(codecs) > 1:
        return (
            f"pipeline {names} codes values twice ({[names[i] for i in codecs]}): each value "
            "is coded once; keep one of them"
        )
    if sparsifiers and codecs and codecs[0] < sparsifiers[0]:
        return (
            f"pipeline {names} codes values before sparsifying: put "
            f"{names[sparsifiers[0]]!r} first so coordinates are chosen from exact values"
        )
    return None


def downstream_problem(name: str, kind: str) -> str | None:
    """Why ``name`` cannot code the model sent to the sites, or None when it can."""
    if kind == SPARSIFIER:
        return (
            f"downstream: {name!r} would zero most of the model's weights; the "
            "model sent to the sites takes one value codec (e.g. blockwise8, nf4, float16)"
        )
    return None


def masking_problem(sparsifier: str | None, shared_pattern: bool) -> str | None:
    """Why a pipeline with this sparsifier cannot run under secure aggregation's masks, or None."""
    if sparsifier is not None and not shared_pattern:
        return (
            f"{sparsifier!r} keeps different coordinates at each client, and secure "
            "aggregation can only sum vectors over the same coordinates: use "
            "RandomK (a sparsity pattern shared through a public seed), or turn off "
            "secure aggregation to use top-k"
        )
    return None


def check_plan_composition(spec: CompressionSpec, secure_aggregation: bool) -> str | None:
    """Why this compression cannot run with the plan's other mechanisms, or None."""
    if not secure_aggregation:
        return None
    quantizer = next((s.stage for s in spec.stages if s.stage in BLOCK_QUANTIZERS), None)
    if quantizer is not None:
        return (
            f"compression: {quantizer!r} scales each block of each client's update by its own "
            "factor, and secure aggregation can only sum words of one shared fixed-point field: "
            "drop it from compression.stages (secure_aggregation.bits sets the width of the "
            "masked words) or turn off secure aggregation"
        )
    sparsifier = next((s.stage for s in spec.stages if s.kind == SPARSIFIER), None)
    problem = masking_problem(sparsifier, sparsifier not in PER_CLIENT_PATTERN)
    return None if problem is None else f"compression: {problem}"
