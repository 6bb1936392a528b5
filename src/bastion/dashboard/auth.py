"""Who may look at the dashboard: bearer tokens, stored hashed, each naming an identity.

``bastion dashboard token create NAME --role operator|model-owner`` prints a token once;
the token file keeps only its SHA-256 (tokens are 256 random bits, so a plain hash is
enough: nothing to brute-force) with the identity it stands for. An operator sees every
site and job; a model owner sees the registry of sites and only its own jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError
from bastion.storage.atomic import atomic_write_text

OPERATOR = "operator"
MODEL_OWNER = "model-owner"
ROLES = (OPERATOR, MODEL_OWNER)
TOKEN_PREFIX = "bdt_"


@dataclass(frozen=True)
class Viewer:
    """An authenticated identity: what it may see follows from its role."""

    name: str
    role: str

    def may_see_job(self, owner: str) -> bool:
        return self.role == OPERATOR or owner == self.name


#: Whoever reaches a dashboard bound to the loopback interface (the machine's own users).
LOCAL_OPERATOR = Viewer("local", OPERATOR)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """A JSON file of ``{sha256: {name, role, created}}``; the tokens themselves are never kept."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, dict[str, object]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BastionError(f"{self.path}: unreadable token file: {exc}") from None
        if not isinstance(data, dict):
            raise BastionError(f"{self.path}: not a token file")
        return data

    def create(self, name: str, role: str) -> str:
        if role not in ROLES:
            raise BastionError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if not name:
            raise BastionError("a token needs the name of the identity it stands for")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entries = self._load()
        entries[_digest(token)] = {"name": name, "role": role, "created": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(entries, indent=1, sort_keys=True))
        self.path.chmod(0o600)
        return token

    def revoke(self, name: str) -> int:
        entries = self._load()
        kept = {k: v for k, v in entries.items() if v.get("name") != name}
        atomic_write_text(self.path, json.dumps(kept, indent=1, sort_keys=True))
        return len(entries) - len(kept)

    def identities(self) -> list[tuple[str, str]]:
        return sorted({(str(v["name"]), str(v["role"])) for v in self._load().values()})

    def check(self, token: str) -> Viewer | None:
        """The identity a presented token stands for, or None."""
        if not token:
            return None
        wanted = _digest(token)
        found = None
        for digest, entry in self._load().items():  # constant-time compare of every entry
            if hmac.compare_digest(digest, wanted):
                found = Viewer(str(entry["name"]), str(entry["role"]))
        return found


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
