"""The base of the plan's section models: an unknown key is refused, and a parsed value
never changes (the plan's hash is taken once)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Names of tasks, sites, groups and datasets: safe in paths, logs and metric keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: ``module:function`` in the workspace.
CALLABLE_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
