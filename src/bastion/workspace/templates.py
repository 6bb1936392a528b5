"""Workspace templates shipped with Bastion, and ``bastion workspace create``."""

from __future__ import annotations

import json
import re
import shutil
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import PLAN_FILE, load_plan
from bastion.spec.names import repeated
from bastion.spec.network import parse_address
from bastion.spec.strict import NAME_PATTERN

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


def parse_roster(value: str) -> int | list[str]:
    """``--collaborators``: a count (``3``: site-1..site-3) or the sites' names, comma-separated."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not re.match(NAME_PATTERN, n)]
    if not names or bad:
        raise BastionError(
            f"--collaborators {value!r}: give a count or names such as hospital-a,hospital-b "
            f"(letters, digits, . _ -; each the CN of that site's certificate){'; bad: ' + ', '.join(bad) if bad else ''}"
        )
    twice = repeated(names)
    if twice:
        raise BastionError(f"--collaborators: {', '.join(twice)} named twice")
    return names


def create_workspace(
    directory: Path,
    template_name: str,
    collaborators: int | Sequence[str] | None = None,
    rounds: int | None = None,
    name: str | None = None,
    aggregator: str | None = None,
) -> Path:
    """Copy a template into ``directory`` (new or empty) and fill in its plan.

    ``collaborators`` is a roster size (site-1..site-N) or the sites' names; ``aggregator``
    (``HOST[:PORT]``) is the address sites dial, a name in the aggregator's certificate.
    """
    template = get_template(template_name)
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise BastionError(f"{directory} is not empty; choose a new directory for the workspace")
    roster = collaborators if collaborators is not None else template.collaborators
    names = collaborator_names(roster) if isinstance(roster, int) else list(roster)
    count = len(names) if not isinstance(roster, int) else roster
    if not 1 <= count <= 10_000:
        raise BastionError(f"--collaborators must be between 1 and 10000, got {count}")
    target = parse_address(aggregator, 50051, "--aggregator") if aggregator else None
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
        collaborators="\n".join(f"  - {n}" for n in names),
    )
    if target is not None:
        text = re.sub(r"(?m)^  address: .*$", f"  address: {target.host}", text, count=1)
        text = re.sub(r"(?m)^  port: .*$", f"  port: {target.port}", text, count=1)
    plan_path.write_text(text, encoding="utf-8")
    load_plan(plan_path)  # a template must always produce a valid plan
    return directory
