"""Importing the model owner's task code from a workspace (``module:function`` paths)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import MissingDependency, PlanError
from bastion.runners.extras import missing_framework

#: Workspace roots task code was imported from in this process (tests, in-process simulation).
_IMPORTED_FROM: set[Path] = set()


def import_callable(spec: str, workspace: Path, key: str) -> Callable[..., Any]:
    """Resolve ``module:attribute``, looking in ``workspace`` first; ``key`` names the plan key."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PlanError(
            f"key '{key}': {spec!r} is not of the form module:function (e.g. task:build_runner)"
        )
    workspace = Path(workspace).resolve()
    _forget_other_workspaces(workspace)
    _forget_foreign_module(module_name, workspace)
    _IMPORTED_FROM.add(workspace)
    sys.path.insert(0, str(workspace))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PlanError(
                f"key '{key}': no module {module_name!r} in workspace {workspace} or installed packages"
            ) from None
        hint = missing_framework(exc, f"key '{key}': module {module_name!r}")
        if hint is not None:
            raise hint from None
        raise PlanError(f"key '{key}': importing {module_name!r} failed: {exc}") from None
    except MissingDependency as exc:  # a Bastion adapter whose framework is absent
        raise MissingDependency(
            exc.package, exc.extra, f"key '{key}': module {module_name!r}"
        ) from None
    except Exception as exc:
        raise PlanError(
            f"key '{key}': importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        sys.path.remove(str(workspace))
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise PlanError(
            f"key '{key}': module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not callable(target):
        raise PlanError(f"key '{key}': {spec!r} is not callable")
    return target


def _forget_other_workspaces(workspace: Path) -> None:
    """Drop every module imported from another workspace, so that task code here that does
    ``from task import ...`` gets this workspace's ``task``, not a stale one."""
    others = [
        root
        for root in _IMPORTED_FROM
        if not (root.is_relative_to(workspace) or workspace.is_relative_to(root))
    ]
    if not others:
        return
    # Modules imported through the resolved sys.path entry carry it as their path prefix.
    prefixes = tuple(f"{root}{os.sep}" for root in others)
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if isinstance(origin, str) and origin.startswith(prefixes):
            del sys.modules[name]
    _IMPORTED_FROM.difference_update(others)


def _forget_foreign_module(module_name: str, workspace: Path) -> None:
    """Drop a same-named module imported from another workspace earlier in this process."""
    top = module_name.split(".")[0]
    module = sys.modules.get(top)
    origin = getattr(module, "__file__", None) if module else None
    if origin and not Path(origin).resolve().is_relative_to(workspace):
        local = workspace / f"{top}.py"
        if local.exists() or (workspace / top / "__init__.py").exists():
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                del sys.modules[name]
