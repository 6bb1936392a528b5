"""Talking to a Docker engine when there is one: detect it, build, save.

Nothing here pretends: without a ``docker`` client and a reachable daemon the caller gets
the reason, writes the build context, and tells the user how to build it elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from bastion.errors import BastionError

BUILD_TIMEOUT_SECONDS = 3600


class DockerError(BastionError):
    """A Docker command ran and failed."""


def docker_unavailable() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    client = shutil.which("docker")
    if client is None:
        return "no `docker` client on PATH"
    try:
        result = subprocess.run(
            [client, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker version` did not answer: {exc}"
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"the Docker daemon is not reachable ({last[0]})"
    return None


def run_docker(
    args: Sequence[str],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = BUILD_TIMEOUT_SECONDS,
) -> str:
    """Run ``docker ARGS``; on failure raise with the command and its last output lines."""
    command = ["docker", *args]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise DockerError(f"{what}: `{' '.join(command)}` ran over {timeout:.0f}s") from None
    except OSError as exc:
        raise DockerError(f"{what}: cannot run docker: {exc}") from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise DockerError(f"{what} failed (exit {result.returncode}): {tail}")
    return result.stdout


def build_image(
    context: Path,
    tag: str,
    build_args: Mapping[str, str],
    *,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> None:
    args = ["build", "--tag", tag]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    run_docker([*args, *extra, str(context)], f"building image {tag}", env=env)


def save_image(tag: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    run_docker(["save", "--output", str(path), tag], f"saving image {tag} to {path}")
