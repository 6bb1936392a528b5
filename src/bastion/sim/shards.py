"""Every collaborator's data shard from one loaded dataset, kept as index arrays.

A process per collaborator loads the dataset and cuts its own shard
(``bastion.workspace.tasks.load_shard``). A simulation of hundreds of collaborators in
one process loads the dataset once, partitions it once, and cuts a shard only while
its collaborator runs: memory is one dataset plus one index array per collaborator.
The shards are exactly the ones ``load_shard`` gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bastion.data import check_dataset, dirichlet, iid, label_shards, load_dataset
from bastion.data.errors import DataError, PartitionError
from bastion.data.types import Dataset, DataShard
from bastion.plan import Plan
from bastion.spec.data import FILE_LOADERS
from bastion.workspace.code import import_callable

# ``bastion.data.make_shard``'s default smallest Dirichlet part.
DIRICHLET_MIN_SIZE = 10


def load_plan_dataset(plan: Plan, workspace: Path) -> Dataset:
    """The plan's whole dataset: a registered name or the workspace's ``module:function``."""
    loader = plan.data.loader
    if loader in FILE_LOADERS:
        raise DataError(
            f"data.loader {loader!r} reads each site's own files, so there is no one dataset to "
            "split across simulated clients; run real sites (`bastion collaborator start NAME "
            f"--data {plan.data.dataset}=PATH`), or simulate with a demo dataset or a "
            "module:function loader"
        )
    if ":" in loader:
        factory = import_callable(loader, workspace, "data.loader")
        return check_dataset(factory(**plan.data.args), loader)
    return load_dataset(loader, **plan.data.args)


class ShardIndex:
    """Index arrays of each shard of the plan's partition; ``shard(name)`` cuts one on demand."""

    def __init__(self, plan: Plan, dataset: Dataset) -> None:
        self._plan = plan
        self._shards = plan.shards()
        self.dataset = dataset
        count = plan.shard_count()
        spec = plan.data.partition
        if len(dataset.y_test) < count:
            raise PartitionError(
                f"the test split of '{dataset.name}' has {len(dataset.y_test)} examples, fewer "
                f"than the {count} collaborators: each needs at least one validation example"
            )
        try:
            if spec.method == "dirichlet":
                train = dirichlet(
                    dataset.y_train, count, spec.alpha, spec.seed, min_size=DIRICHLET_MIN_SIZE
                )
            elif spec.method == "shards":
                train = label_shards(
                    dataset.y_train, count, spec.shards_per_collaborator, spec.seed
                )
            else:
                train = iid(len(dataset.y_train), count, spec.seed)
        except PartitionError as exc:
            raise PartitionError(
                f"partitioning the train split of '{dataset.name}': {exc}"
            ) from exc
        self._train = train
        self._valid = iid(len(dataset.y_test), count, spec.seed)

    def train_indices(self, name: str) -> np.ndarray:
        return self._train[self._shard_of(name)]

    def valid_indices(self, name: str) -> np.ndarray:
        return self._valid[self._shard_of(name)]

    def _shard_of(self, name: str) -> int:
        if name in self._shards:
            return self._shards[name]
        return self._plan.shard_of(name)  # not on the roster: the plan's error names it

    def shard(self, name: str) -> DataShard:
        """Collaborator ``name``'s shard, cut now (a copy of its rows only)."""
        train, valid = self.train_indices(name), self.valid_indices(name)
        data = self.dataset
        return DataShard(
            x_train=np.ascontiguousarray(data.x_train[train]),
            y_train=np.ascontiguousarray(data.y_train[train]),
            x_valid=np.ascontiguousarray(data.x_test[valid]),
            y_valid=np.ascontiguousarray(data.y_test[valid]),
            num_classes=data.num_classes,
        )
