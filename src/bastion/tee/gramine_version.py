"""Which Gramine is installed, and the oldest one whose manifest checker accepts ours.

The manifests Bastion renders use ``loader.entrypoint.uri``, which Gramine introduced in 1.8
(Gramine 1.7's manifest checker rejects it; 1.9's accepts the manifests as rendered).  The
version is read from Gramine's own Python package, ``graminelibos.__version__``, run with the
interpreter that Gramine's ``gramine-manifest`` script uses, so a system Gramine is found from
a virtual environment too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bastion.errors import BastionError

MINIMUM_GRAMINE = (1, 8)
_PROBE = "import graminelibos; print(graminelibos.__version__)"
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)")


class GramineTooOld(BastionError):
    """The installed Gramine predates the manifest syntax Bastion renders."""


def parse_version(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` from a version string such as ``1.8``, ``v1.9post~UNRELEASED``."""
    match = _VERSION.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_gramine_version(tool: str = "gramine-manifest") -> tuple[int, int] | None:
    """The installed Gramine's version, or None when it cannot be told."""
    path = shutil.which(tool)
    if path is None:
        return None
    try:
        first = Path(path).read_bytes()[:256].split(b"\n", 1)[0].decode("utf-8", "replace")
    except OSError:
        return None
    interpreter = first[2:].strip().split() if first.startswith("#!") else []
    if not interpreter:
        return None
    try:
        done = subprocess.run(
            [*interpreter, "-c", _PROBE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(done.stdout) if done.returncode == 0 else None


def require_gramine(minimum: tuple[int, int] = MINIMUM_GRAMINE) -> tuple[int, int]:
    """Refuse, in one line, a Gramine older than ``minimum`` or one whose version is unknown."""
    version = installed_gramine_version()
    wanted = ".".join(map(str, minimum))
    if version is None:
        raise GramineTooOld(
            f"cannot tell the installed Gramine's version (graminelibos.__version__); Bastion's "
            f"manifests need Gramine >= {wanted} (loader.entrypoint.uri)"
        )
    if version < minimum:
        raise GramineTooOld(
            f"Gramine {version[0]}.{version[1]} is installed, but Bastion's manifests need "
            f"Gramine >= {wanted} (loader.entrypoint.uri); upgrade Gramine"
        )
    return version
