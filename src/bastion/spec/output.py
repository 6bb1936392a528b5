"""The plan's ``output``: the workspace's folders for checkpoints and logs."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from pydantic import ValidationInfo, field_validator

from bastion.spec.strict import Strict


class OutputSpec(Strict):
    """Where checkpoints and logs go: folders inside the workspace, never outside it
    (``plan initialize --force`` empties the checkpoint folder)."""

    checkpoints: str = "save"
    logs: str = "logs"

    @field_validator("checkpoints", "logs")
    @classmethod
    def _inside_workspace(cls, value: str, info: ValidationInfo) -> str:
        parts = PurePosixPath(value.replace("\\", "/")).parts
        if (
            not value.strip()
            or PurePosixPath(value).is_absolute()
            or PureWindowsPath(value).is_absolute()
            or PureWindowsPath(value).drive
            or ".." in parts
            # The workspace itself as the checkpoint folder: initialize --force would empty
            # it (logs: the measured scope refuses it with its own message).
            or (info.field_name == "checkpoints" and all(part == "." for part in parts))
        ):
            raise ValueError(f"{value!r} must be a folder inside the workspace (relative, no '..')")
        return value
