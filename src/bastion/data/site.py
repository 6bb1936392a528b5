"""A site's own configuration of its data: which local files stand for the plan's dataset.

The plan is signed and identical everywhere, so it names a dataset (``data.dataset``) and
how to read it; each site maps that name to its own files in ``site.yaml`` (or with
``bastion collaborator start NAME --data NAME=PATH``). This file is the site's alone: it is
never part of the measured workspace and never sent to anyone.

```yaml
datasets:
  patients:
    path: /data/patients.csv        # relative paths are relative to this file
    valid: /data/holdout.csv        # optional: else a seeded valid_fraction of path
    args: {valid_fraction: 0.2}     # optional: merged over the plan's data.args
```
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bastion.data.errors import DataError

SITE_FILE = "site.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SITE_ARGS = {"valid_fraction", "seed", "delimiter"}


@dataclass(frozen=True)
class SiteDataset:
    """One dataset this site offers: its files and the reading options it sets itself."""

    name: str
    path: Path
    valid: Path | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteData:
    """Every dataset a site maps to local files; empty when it maps none."""

    datasets: dict[str, SiteDataset] = field(default_factory=dict)
    source: str = "no site configuration"

    def get(self, name: str) -> SiteDataset | None:
        return self.datasets.get(name)

    def merged(self, other: SiteData) -> SiteData:
        """This configuration with ``other``'s datasets taking precedence."""
        return SiteData({**self.datasets, **other.datasets}, f"{self.source} + {other.source}")


def load_site_data(path: Path | str) -> SiteData:
    """Read a ``site.yaml``; a bad one is refused in one line naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no site configuration here") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or set(raw) - {"datasets"}:
        raise DataError(f"{path}: a site configuration has one key, 'datasets'")
    entries = raw.get("datasets") or {}
    if not isinstance(entries, dict):
        raise DataError(f"{path}: 'datasets' must map dataset names to their files")
    base = path.parent.resolve()
    datasets = {}
    for name, entry in entries.items():
        where = f"{path}: datasets.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataError(f"{where}: not a dataset name (letters, digits, . _ -)")
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise DataError(f"{where}: give at least 'path'")
        unknown = sorted(set(entry) - {"path", "valid", "args"})
        if unknown:
            raise DataError(f"{where}: unknown keys {unknown}; allowed: path, valid, args")
        args = entry.get("args") or {}
        if not isinstance(args, dict) or set(args) - _SITE_ARGS:
            raise DataError(f"{where}.args: a site may set only {sorted(_SITE_ARGS)}")
        valid = entry.get("valid")
        datasets[name] = SiteDataset(
            name,
            _resolve(base, entry["path"], where),
            _resolve(base, valid, where) if valid is not None else None,
            dict(args),
        )
    return SiteData(datasets, str(path))


def parse_data_options(options: Sequence[str]) -> SiteData:
    """``--data NAME=PATH`` options, each one dataset's training file or folder."""
    datasets = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not _NAME.match(name) or not value:
            raise DataError(f"--data {option!r}: expected NAME=PATH, e.g. patients=/data/a.csv")
        datasets[name] = SiteDataset(name, Path(value).expanduser().resolve())
    return SiteData(datasets, "--data options")


def _resolve(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: a path must be a non-empty string")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
