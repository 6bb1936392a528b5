"""Building a collaborator's runner and data shard from a workspace's plan."""

from __future__ import annotations

import logging
from pathlib import Path

from bastion.data import check_dataset, load_dataset, make_shard
from bastion.data.errors import DataError
from bastion.data.local import load_site_shard
from bastion.data.site import SiteData
from bastion.data.types import DataShard
from bastion.errors import PlanError
from bastion.plan import Plan
from bastion.runners.base import LocalPrivacy, TaskRunner
from bastion.spec.data import FILE_LOADERS
from bastion.workspace.code import import_callable

log = logging.getLogger("bastion.collaborator")


def build_runner(plan: Plan, workspace: Path) -> TaskRunner:
    """Call the plan's ``task_runner.path`` with its ``args``; the result must be a TaskRunner."""
    factory = import_callable(plan.task_runner.path, workspace, "task_runner.path")
    try:
        runner = factory(**plan.task_runner.args)
    except TypeError as exc:
        raise PlanError(
            f"key 'task_runner.args': {plan.task_runner.path} rejected them: {exc}"
        ) from None
    if not isinstance(runner, TaskRunner):
        raise PlanError(
            f"key 'task_runner.path': {plan.task_runner.path} returned {type(runner).__name__}, "
            "which lacks get_weights/set_weights/train/validate (see bastion.runners.base.TaskRunner)"
        )
    privacy = plan.differential_privacy
    if privacy is not None and privacy.local is not None:
        if not isinstance(runner, LocalPrivacy):
            raise PlanError(
                f"key 'differential_privacy.local': {type(runner).__name__} cannot train with "
                "DP-SGD; local DP runs in the PyTorch runner (bastion.runners.torch, Opacus)"
            )
        runner.enable_local_dp(
            privacy.local.noise_multiplier,
            privacy.local.max_grad_norm,
            privacy.delta,
            secure_mode=privacy.local.secure_mode,
            accountant="rdp" if privacy.accountant == "rdp" else "prv",  # Opacus's PLD-style one
        )
    return runner


def load_shard(
    plan: Plan, collaborator: str, workspace: Path, site: SiteData | None = None
) -> DataShard:
    """What this collaborator trains and validates on.

    A dataset the site maps to its own files is used whole; otherwise (simulation, demos)
    the plan's dataset is split across the roster, and the log says so.
    """
    spec = plan.data
    mapped = site.get(spec.dataset) if site is not None and spec.dataset else None
    if spec.loader in FILE_LOADERS:
        if mapped is None:
            raise DataError(
                f"the plan reads dataset {spec.dataset!r} from each site's own files "
                f"({spec.loader}); map it here: `bastion collaborator start {collaborator} "
                f"--data {spec.dataset}=PATH` or datasets.{spec.dataset}.path in a site.yaml"
            )
        shard = load_site_shard(
            spec.loader, mapped.path, mapped.valid, {**spec.args, **mapped.args}
        )
        log.info(
            "%s: dataset %r from %s (this site's own files)",
            collaborator,
            spec.dataset,
            mapped.path,
        )
        return shard
    if ":" in spec.loader:
        loader = import_callable(spec.loader, workspace, "data.loader")
        if mapped is not None:
            return _whole(loader(path=str(mapped.path), **spec.args), spec.loader)
        dataset = check_dataset(loader(**spec.args), spec.loader)
    else:
        dataset = load_dataset(spec.loader, **spec.args)
    index, count = plan.shard_of(collaborator), plan.shard_count()
    log.info(
        "%s: no site files for the plan's data: using part %d of %d of %r, split across the "
        "roster (a simulation split; map data.dataset to this site's files to train on them)",
        collaborator,
        index + 1,
        count,
        dataset.name,
    )
    partition = spec.partition
    return make_shard(
        dataset,
        index=index,
        count=count,
        method=partition.method,
        seed=partition.seed,
        alpha=partition.alpha,
        shards_per_part=partition.shards_per_collaborator,
    )


def _whole(loaded: object, source: str) -> DataShard:
    """A task loader's answer for a site's own path: its shard, or its dataset used whole."""
    if isinstance(loaded, DataShard):
        return loaded
    dataset = check_dataset(loaded, source)
    return DataShard(
        dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, dataset.num_classes
    )
