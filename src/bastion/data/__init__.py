"""Datasets that ship with installed packages, and partitioners that deal them to collaborators.

``load_dataset("mnist")`` then ``make_shard(dataset, index, count)`` gives collaborator
``index`` its ``DataShard``. Importing this package imports neither scikit-learn nor the
datasets themselves; each loads on first use.
"""

from bastion.data.errors import DataError, PartitionError
from bastion.data.partition import dirichlet, iid, label_shards
from bastion.data.registry import check_dataset, load_dataset, registered_datasets
from bastion.data.shard import METHODS, make_shard
from bastion.data.types import Dataset, DataShard

__all__ = [
    "METHODS",
    "DataError",
    "DataShard",
    "Dataset",
    "PartitionError",
    "check_dataset",
    "dirichlet",
    "iid",
    "label_shards",
    "load_dataset",
    "make_shard",
    "registered_datasets",
]
