"""Workspace templates shipped with Bastion, and ``bastion workspace create``."""

from __future__ import annotations

import json
import shutil
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import PLAN_FILE, load_plan

_PLAN_TEMPLATE_KEYS = ("name", "rounds", "collaborators")


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    rounds: int
    collaborators: int
    path: Path


def _root() -> Path:
    return Path(str(resources.files("bastion.workspace") / "templates"))


def list_templates() -> list[Template]:
    found = []
    for folder in sorted(_root().iterdir()):
        meta_file = folder / "template.json"
        if folder.is_dir() and meta_file.exists():
            meta = json.loads(meta_file.read_text())
            found.append(
                Template(
                    folder.name,
                    meta["description"],
                    int(meta["rounds"]),
                    int(meta["collaborators"]),
                    folder,
                )
            )
    return found


def get_template(name: str) -> Template:
    for template in list_templates():
        if template.name == name:
            return template
    names = ", ".join(t.name for t in list_templates())
    raise BastionError(
        f"unknown template {name!r}; available: {names} (see `bastion workspace templates`)"
    )


def collaborator_names(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


def create_workspace(
    directory: Path,
    template_name: str,
    collaborators: int | None = None,
    rounds: int | None = None,
    name: str | None = None,
) -> Path:
    """Copy a template into ``directory`` (new or empty) and fill in its plan."""
    template = get_template(template_name)
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise BastionError(f"{directory} is not empty; choose a new directory for the workspace")
    count = collaborators if collaborators is not None else template.collaborators
    if not 1 <= count <= 10_000:
        raise BastionError(f"--collaborators must be between 1 and 10000, got {count}")
    total_rounds = rounds if rounds is not None else template.rounds
    if total_rounds < 1:
        raise BastionError(f"--rounds must be at least 1, got {total_rounds}")
    shutil.copytree(
        template.path,
        directory,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("template.json", "__pycache__"),
    )
    plan_path = directory / PLAN_FILE
    text = string.Template(plan_path.read_text(encoding="utf-8")).substitute(
        name=name or directory.resolve().name,
        rounds=total_rounds,
        collaborators="\n".join(f"  - {n}" for n in collaborator_names(count)),
    )
    plan_path.write_text(text, encoding="utf-8")
    load_plan(plan_path)  # a template must always produce a valid plan
    return directory
