"""The Gramine commands that build and start the enclave, run only where Gramine exists.

Command lines follow Gramine's manual pages "gramine-manifest", "gramine-sgx-sign" and
"gramine" (``gramine-sgx <name>`` reads ``<name>.manifest.sgx`` and ``<name>.sig``).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError

MANIFEST_NAME = "bastion"
INSTALL_HINT = "install Gramine (https://gramine.readthedocs.io/en/stable/installation.html)"


class GramineNotInstalled(BastionError):
    """A Gramine tool is needed but not on PATH."""


class GramineBuildError(BastionError):
    """A Gramine tool ran and failed."""


@dataclass(frozen=True)
class BuildStep:
    """One command of the enclave build, for the Dockerfile, the README, or to run."""

    tool: str
    argv: tuple[str, ...]
    purpose: str

    def shell(self) -> str:
        return shlex.join(self.argv)


def build_steps(*, key: Path, name: str = MANIFEST_NAME) -> list[BuildStep]:
    """The commands that turn ``<name>.manifest.template`` into a signed enclave
    (``<name>.manifest.sgx`` and ``<name>.sig``), with names relative to the directory that
    holds the template, so they read the same in a Dockerfile, a README, or here."""
    return [
        BuildStep(
            "gramine-manifest",
            ("gramine-manifest", f"{name}.manifest.template", f"{name}.manifest"),
            "render the template with Gramine's install paths",
        ),
        BuildStep(
            "gramine-sgx-sign",
            (
                "gramine-sgx-sign",
                "--manifest",
                f"{name}.manifest",
                "--output",
                f"{name}.manifest.sgx",
                "--key",
                str(key),
            ),
            f"hash trusted files, compute MRENCLAVE, write {name}.sig signed with the key",
        ),
    ]


def run_command(name: str = MANIFEST_NAME) -> BuildStep:
    """The command that starts the signed enclave (needs SGX hardware and the AESM/DCAP)."""
    return BuildStep("gramine-sgx", ("gramine-sgx", name), "start the enclave")


def missing_tools(steps: Sequence[BuildStep]) -> list[str]:
    """The tools of ``steps`` that are not on PATH."""
    return sorted({step.tool for step in steps if shutil.which(step.tool) is None})


def run_build_steps(steps: Sequence[BuildStep], directory: Path) -> None:
    """Run the build for real; refuses up front when a Gramine tool is missing."""
    missing = missing_tools(steps)
    if missing:
        raise GramineNotInstalled(
            f"{', '.join(missing)} not found on PATH: {INSTALL_HINT}, or run this inside the "
            "Bastion SGX image"
        )
    if any(step.tool == "gramine-manifest" for step in steps):
        from bastion.tee.gramine_version import require_gramine

        require_gramine()  # one line, before any tool runs: 1.7 would reject the manifest
    for step in steps:
        result = subprocess.run(step.argv, cwd=directory, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise GramineBuildError(
                f"`{step.shell()}` failed with exit code {result.returncode} in {directory}: "
                + " | ".join(tail)
            )
