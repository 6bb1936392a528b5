"""Recording every file Python opens (``sys.addaudithook``) and checking it against a
Gramine manifest's trusted files, allowed files and sealed (encrypted) mounts."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

#: Installs the audit hook before anything else is imported, then runs ``-m bastion``:
#: ``python -c WRAPPER LOG ARGS...`` writes one opened path per line to LOG.
WRAPPER = r"""
import sys
log = open(sys.argv[1], "w", encoding="utf-8", errors="surrogateescape", buffering=1)

def record(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = args[0].decode("utf-8", "surrogateescape") if isinstance(args[0], bytes) else args[0]
        log.write(path + "\n")

sys.addaudithook(record)
import runpy
sys.argv = ["bastion", *sys.argv[2:]]
runpy.run_module("bastion", run_name="__main__", alter_sys=True)
"""


def covered(path: str, entries: Iterable[str | dict[str, str]]) -> bool:
    """Whether a trusted/allowed entry (``file:`` URI, a directory ends with ``/``; or a
    ``{uri, sha256}`` table) covers it."""
    for entry in entries:
        uri = entry["uri"] if isinstance(entry, dict) else entry
        target = uri.removeprefix("file:")
        if (target.endswith("/") and path.startswith(target)) or path == target:
            return True
    return False


#: Files Gramine's LibOS answers itself (its /proc pseudo file system), never from the host:
#: no manifest entry covers them and none is needed. psutil reads /proc/stat when imported.
GRAMINE_PSEUDO_FILES = frozenset({"/proc/stat", "/proc/meminfo", "/proc/cpuinfo"})
GRAMINE_PSEUDO_DIRS = ("/proc/self/", "/proc/sys/")


def emulated(path: str) -> bool:
    return path in GRAMINE_PSEUDO_FILES or path.startswith(GRAMINE_PSEUDO_DIRS)


def opened_paths(log_text: str, cwd: str) -> set[str]:
    return {os.path.normpath(os.path.join(cwd, line)) for line in log_text.splitlines()}


def uncovered(
    opened: Iterable[str], manifest: dict[str, Any], exists: Any = os.path.exists
) -> list[str]:
    """Opened files that exist and that the enclave could not open: neither trusted, nor
    allowed, nor inside a sealed mount, nor emulated by Gramine. (A failed open of a missing
    file needs no entry.)"""
    entries = manifest["sgx"]["trusted_files"] + manifest["sgx"]["allowed_files"]
    sealed = tuple(
        mount["path"] + "/"
        for mount in manifest["fs"]["mounts"]
        if mount.get("type") == "encrypted"
    )
    return sorted(
        path
        for path in opened
        if exists(path)
        and not covered(path, entries)
        and not path.startswith(sealed)
        and not emulated(path)
    )
