"""A site's policy: who may run jobs on its data, on which datasets, and how many at once.

```yaml
owners:                      # model owners by certificate name; each with the datasets
  alice: [patients]          # it may use ('*': every dataset this site offers)
  bob: '*'
max_concurrent_jobs: 2
max_wall_seconds: 86400      # a job's collaborator is stopped after this long
require_attestation: false   # only jobs whose plan attests the peers
auto_approve: true           # false: jobs allowed by the policy wait for `bastion site approve`
```

The policy is the site's alone; the director never sees it, only each decision and its
reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bastion.errors import BastionError

POLICY_FILE = "policy.yaml"
_KEYS = {"owners", "max_concurrent_jobs", "max_wall_seconds", "require_attestation", "auto_approve"}


class PolicyError(BastionError):
    """The site policy file is invalid."""


@dataclass(frozen=True)
class SitePolicy:
    owners: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # None: any dataset
    max_concurrent_jobs: int = 1
    max_wall_seconds: float = 86400.0
    require_attestation: bool = False
    auto_approve: bool = True

    def refusal(self, owner: str, dataset: str, attestation: bool, offered: set[str]) -> str | None:
        """Why a job of ``owner`` on ``dataset`` may not run here, or None when it may."""
        if owner not in self.owners:
            return f"model owner {owner!r} is not allowed by this site's policy"
        if dataset not in offered:
            return f"this site offers no dataset {dataset!r}"
        allowed = self.owners[owner]
        if allowed is not None and dataset not in allowed:
            return f"model owner {owner!r} may not use dataset {dataset!r} here"
        if self.require_attestation and not attestation:
            return "this site requires attestation and the job's plan has none"
        return None


def load_policy(path: Path | str) -> SitePolicy:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: no site policy here") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: a site policy is a mapping with keys {sorted(_KEYS)}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise PolicyError(f"{path}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    owners: dict[str, tuple[str, ...] | None] = {}
    entries: Any = raw.get("owners") or {}
    if isinstance(entries, list):
        entries = dict.fromkeys(entries, "*")
    if not isinstance(entries, dict):
        raise PolicyError(f"{path}: 'owners' maps model owner names to datasets (or '*')")
    for owner, datasets in entries.items():
        if datasets == "*" or datasets is None:
            owners[str(owner)] = None
        elif isinstance(datasets, list) and all(isinstance(d, str) for d in datasets):
            owners[str(owner)] = tuple(datasets)
        else:
            raise PolicyError(f"{path}: owners.{owner}: a list of dataset names, or '*'")
    try:
        policy = SitePolicy(
            owners,
            int(raw.get("max_concurrent_jobs", 1)),
            float(raw.get("max_wall_seconds", 86400)),
            bool(raw.get("require_attestation", False)),
            bool(raw.get("auto_approve", True)),
        )
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
    if policy.max_concurrent_jobs < 1 or policy.max_wall_seconds <= 0:
        raise PolicyError(f"{path}: max_concurrent_jobs and max_wall_seconds must be positive")
    return policy
