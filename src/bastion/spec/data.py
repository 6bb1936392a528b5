"""The plan's ``data``: what each site trains on, and how a simulation splits a dataset."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from bastion.spec.strict import NAME_PATTERN, Strict


class PartitionSpec(Strict):
    method: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    shards_per_collaborator: int = Field(default=2, ge=1)
    seed: int = 0


#: Loaders that read a site's own files (``bastion.data.local``); the site maps
#: ``data.dataset`` to its paths in its own ``site.yaml`` or with ``--data NAME=PATH``.
FILE_LOADERS = ("csv", "parquet", "image_folder", "arrays")


class DataSpec(Strict):
    """What each site trains on: a dataset the site maps to its own files, or (simulation)
    a registered demo dataset or the task code's loader, split across the roster."""

    dataset: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="the name each site maps to its own files (site.yaml or --data NAME=PATH)",
    )
    loader: str = Field(
        min_length=1,
        description="a site's files: csv, parquet, image_folder, arrays; a demo dataset "
        "(descriptions, digits, mnist); or module:function in the workspace",
    )
    args: dict[str, Any] = Field(default_factory=dict)
    partition: PartitionSpec = Field(
        default_factory=PartitionSpec,
        description="simulation only: how a dataset without site files is split across the roster",
    )

    @model_validator(mode="after")
    def _files_need_a_name(self) -> DataSpec:
        if self.loader in FILE_LOADERS and self.dataset is None:
            raise ValueError(
                f"data.loader {self.loader!r} reads each site's own files: name the dataset "
                "sites map to them in data.dataset"
            )
        return self
