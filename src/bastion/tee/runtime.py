"""Where the enclave's software lives: the Python interpreter and Gramine's install.

The interpreter is asked for its own paths (``sys.path``, ``sysconfig``), as Gramine's
``python.get_sys_path`` template helper does (Gramine docs: "gramine-manifest").
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError

#: Where Debian/Ubuntu packages install Gramine; used when its Python package is absent.
DEFAULT_GRAMINE_PKGLIBDIR = Path("/usr/lib/x86_64-linux-gnu/gramine")


class RuntimeProbeError(BastionError):
    """The Python interpreter meant for the enclave could not be inspected."""


@dataclass(frozen=True)
class PythonRuntime:
    """The interpreter the enclave runs, as that interpreter itself reports its paths."""

    executable: Path
    stdlib: Path
    path_entries: tuple[Path, ...]
    libpython: Path | None
    arch_libdir: str

    @classmethod
    def probe(cls, interpreter: Path | str | None = None) -> PythonRuntime:
        """Ask ``interpreter`` (default: this one) for its ``sys.path`` with ``-E -s -c``.

        A fresh process is used so that the caller's script directory, working directory,
        ``PYTHONPATH`` and user site never end up trusted.
        """
        python = str(interpreter or sys.executable)
        if not python:
            raise RuntimeProbeError("cannot locate the Python interpreter: pass it explicitly")
        try:
            out = subprocess.run(
                [python, "-E", "-s", "-c", _PROBE_SCRIPT],
                capture_output=True,
                check=True,
                text=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeProbeError(f"cannot run {python} to list its paths: {exc}") from None
        try:
            facts = json.loads(out)
        except json.JSONDecodeError:
            raise RuntimeProbeError(f"{python} did not report its paths: is it Python 3?") from None
        stdlib = Path(facts["stdlib"])
        entries: list[Path] = []
        for raw in facts["sys_path"]:
            path = Path(raw)
            usable = raw and path.is_absolute() and path.exists()
            if usable and not path.is_relative_to(stdlib) and path not in entries:
                entries.append(path)
        libpython = None
        if facts["shared"] and facts["libdir"] and facts["soname"]:
            candidate = Path(facts["libdir"]) / facts["soname"]
            libpython = candidate if candidate.exists() else None
        multiarch = facts["multiarch"]
        return cls(
            executable=Path(facts["executable"]),
            stdlib=stdlib,
            path_entries=tuple(entries),
            libpython=libpython,
            arch_libdir=f"/lib/{multiarch}" if multiarch else "/lib64",
        )


_PROBE_SCRIPT = """
import json, os, sys, sysconfig
v = sysconfig.get_config_var
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "stdlib": sysconfig.get_paths()["stdlib"],
    "sys_path": sys.path,
    "shared": bool(v("Py_ENABLE_SHARED")),
    "libdir": v("LIBDIR"),
    "soname": v("INSTSONAME"),
    "multiarch": v("MULTIARCH"),
}))
"""


@dataclass(frozen=True)
class GramineInstall:
    """Where Gramine's LibOS (``libsysdb.so``) and patched glibc live."""

    pkglibdir: Path

    @property
    def libos(self) -> Path:
        return self.pkglibdir / "libsysdb.so"

    @property
    def runtime_dir(self) -> Path:
        return self.pkglibdir / "runtime" / "glibc"

    @property
    def installed(self) -> bool:
        return self.libos.is_file()

    @classmethod
    def detect(cls) -> GramineInstall:
        """Gramine's Python package knows its install dir; else the Debian package path."""
        try:
            import graminelibos

            return cls(Path(graminelibos._CONFIG_PKGLIBDIR))
        except (ImportError, AttributeError):
            return cls(DEFAULT_GRAMINE_PKGLIBDIR)
