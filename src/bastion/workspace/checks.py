"""``bastion plan validate``: everything ``plan initialize`` and the sites would refuse,
checked before any model exists, and reported all at once.

Beyond the plan's own schema: the strategy and its arguments, the data loader (a site-file
format, a registered dataset, or the workspace's ``module:function``), the task runner's
and the assigner's import paths, and whether their arguments fit their signatures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bastion.algorithms.registry import create_plan_strategy
from bastion.data.registry import resolve_loader
from bastion.errors import BastionError
from bastion.plan import Plan, plan_problems
from bastion.spec.data import FILE_LOADERS
from bastion.workspace.code import import_callable


def validate_workspace_plan(workspace: Path) -> tuple[Plan | None, list[str]]:
    """The plan and every problem found in it and in what it names (empty: it is valid)."""
    plan, problems = plan_problems(workspace)
    if plan is None:
        return None, problems
    root = Path(workspace)
    checks: list[Callable[[], object]] = [
        lambda: create_plan_strategy(plan),
        lambda: _check_loader(plan, root),
        lambda: _check_callable(
            plan.task_runner.path, plan.task_runner.args, root, "task_runner.path"
        ),
    ]
    if plan.assigner is not None:
        assigner = plan.assigner
        checks.append(lambda: _check_callable(assigner, None, root, "assigner"))
    for check in checks:
        try:
            check()
        except BastionError as exc:
            problems.append(str(exc))
    return (plan if not problems else None), problems


def _check_loader(plan: Plan, workspace: Path) -> None:
    loader = plan.data.loader
    if loader in FILE_LOADERS:
        return  # each site's files are checked where they are, when the site starts
    if ":" in loader:
        import_callable(loader, workspace, "data.loader")
        return
    try:
        function = resolve_loader(loader)
    except BastionError as exc:
        raise BastionError(
            f"key 'data.loader': {exc}; or a site-file format: {', '.join(FILE_LOADERS)}"
        ) from None
    _bind(function, plan.data.args, "data.args", loader)


def _check_callable(spec: str, args: Mapping[str, Any] | None, workspace: Path, key: str) -> None:
    function = import_callable(spec, workspace, key)
    if args is not None:
        _bind(function, args, key.replace(".path", ".args"), spec)


def _bind(function: Callable[..., Any], args: Mapping[str, Any], key: str, name: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to check here
    try:
        signature.bind(**args)
    except TypeError as exc:
        parameters = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = [k for k in args if k not in parameters] if not takes_any else []
        accepted = ", ".join(parameters) or "no arguments"
        problem = f"takes no argument {', '.join(map(repr, unknown))}" if unknown else str(exc)
        raise BastionError(f"key '{key}': {name} {problem}; it takes: {accepted}") from None
