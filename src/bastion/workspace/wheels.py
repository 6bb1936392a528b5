"""Fetching the pinned wheels into an image's build context, so ``docker build`` needs no
network and installs exactly these files (``pip install --require-hashes``)."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from bastion.errors import BastionError
from bastion.workspace.pinning import BASTION_DISTRIBUTION, Pin

#: What a source checkout needs to build Bastion's wheel; everything else is left behind.
_SOURCE_PARTS = ("pyproject.toml", "README.md", "LICENSE", "src")
_SOURCE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


class WheelError(BastionError):
    """A pinned wheel could not be fetched or built."""


def fetch_wheels(
    pins: Sequence[Pin], directory: Path, *, find_links: Sequence[Path] = ()
) -> dict[str, Path]:
    """Download every pin's wheel (Bastion's own is built when installed from source)."""
    directory.mkdir(parents=True, exist_ok=True)
    others = [pin for pin in pins if canonicalize_name(pin.name) != BASTION_DISTRIBUTION]
    own = [pin for pin in pins if canonicalize_name(pin.name) == BASTION_DISTRIBUTION]
    if own:
        _bastion_wheel(own[0], directory, find_links)
    if others:
        requirements = directory.parent / ".download-requirements.txt"
        requirements.write_text("".join(pin.line() + "\n" for pin in others), encoding="utf-8")
        try:
            _pip(
                ["download", "--no-deps", "--only-binary=:all:", "--dest", str(directory)]
                + _sources(find_links)
                + ["--requirement", str(requirements)],
                "download the pinned wheels",
            )
        finally:
            requirements.unlink(missing_ok=True)
    return _index(directory, pins)


def _bastion_wheel(pin: Pin, directory: Path, find_links: Sequence[Path]) -> None:
    """Build from the source tree of an editable install, else download the release."""
    source = _editable_source()
    if source is None:
        _pip(
            ["download", "--no-deps", "--only-binary=:all:", "--dest", str(directory)]
            + _sources(find_links)
            + [pin.line()],
            f"download {pin.line()}",
        )
        return
    with tempfile.TemporaryDirectory(prefix="bastion-wheel-") as scratch:
        copy = Path(scratch) / "src-copy"
        copy.mkdir()
        for part in _SOURCE_PARTS:  # build a copy: never write build files into a checkout
            path = source / part
            if path.is_dir():
                shutil.copytree(path, copy / part, ignore=_SOURCE_IGNORE)
            elif path.is_file():
                shutil.copy2(path, copy / part)
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(directory)]
            + [str(copy)],
            f"build the {BASTION_DISTRIBUTION} wheel from {source}",
        )


def _sources(find_links: Sequence[Path]) -> list[str]:
    """Local wheel directories replace the index (an air-gapped build must not hang on it)."""
    if not find_links:
        return []
    return ["--no-index"] + [arg for path in find_links for arg in ("--find-links", str(path))]


def _editable_source() -> Path | None:
    try:
        raw = metadata.distribution(BASTION_DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not raw:
        return None
    info = json.loads(raw)
    url = urlparse(info.get("url", ""))
    if url.scheme != "file" or not info.get("dir_info", {}).get("editable"):
        return None
    path = Path(unquote(url.path))
    return path if (path / "pyproject.toml").is_file() else None


#: Fixed zip timestamps (1980-01-01, the zip epoch): the same source builds the same wheel,
#: so the same workspace gives the same requirements.lock and Docker reuses its layers.
_REPRODUCIBLE = {"SOURCE_DATE_EPOCH": "315532800"}


def _pip(args: list[str], what: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    env = {**os.environ, **_REPRODUCIBLE}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise WheelError(f"pip could not {what}: {tail}")


def _index(directory: Path, pins: Sequence[Pin]) -> dict[str, Path]:
    """The wheel file of each pin, by canonical name; a missing or extra wheel is an error."""
    wanted = {canonicalize_name(pin.name): pin for pin in pins}
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        pin = wanted.get(name)
        if pin is None or Version(pin.version) != version:
            raise WheelError(f"{path.name} in {directory} matches no pinned requirement")
        found[name] = path
    absent = sorted(set(wanted) - set(found))
    if absent:
        raise WheelError(f"no wheel for {', '.join(wanted[n].line() for n in absent)}")
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lock_text(pins: Sequence[Pin], wheels: dict[str, Path]) -> str:
    """``requirements.lock``: one ``name==version --hash=sha256:...`` line per pin."""
    lines = ["# Pinned by `bastion workspace dockerize`; installed with --require-hashes --no-deps"]
    for pin in pins:
        wheel = wheels[canonicalize_name(pin.name)]
        lines.append(f"{pin.line()} --hash=sha256:{sha256_of(wheel)}")
    return "\n".join(lines) + "\n"
