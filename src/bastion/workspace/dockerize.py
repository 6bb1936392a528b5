"""``bastion workspace dockerize``: a self-contained build context for a workspace image.

The context holds the Dockerfile (base image as a build argument), the exported
workspace (the measured files, manifest, signature and initial model: never keys or
certificates), ``requirements.lock`` with the exact versions tested here and the hash of
each wheel, the wheels themselves, an entrypoint for both roles and a healthcheck.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import Plan, load_plan
from bastion.workspace.archive import export_members
from bastion.workspace.docker_engine import build_image, save_image
from bastion.workspace.docker_files import (
    DEFAULT_BASE_IMAGE,
    ENTRYPOINT,
    HEALTHCHECK,
    IMAGE_UID,
    WORKSPACE,
    dockerfile,
)
from bastion.workspace.manifest import measure_workspace, read_manifest
from bastion.workspace.pinning import Pin, resolve, workspace_roots
from bastion.workspace.scope import MANIFEST_FILE
from bastion.workspace.signature import signature_path, verify_signature
from bastion.workspace.verify import default_ca_cert
from bastion.workspace.wheels import fetch_wheels, lock_text

_TAG_PART = re.compile(r"[^a-z0-9_.-]+")


class DockerizeError(BastionError):
    """The build context cannot be written from this workspace."""


@dataclass(frozen=True)
class DockerizeOptions:
    workspace: Path
    #: New (or empty) directory for the build context.
    out: Path
    base_image: str = DEFAULT_BASE_IMAGE
    tag: str | None = None
    #: Local wheel directories, used instead of the package index (air-gapped machines).
    find_links: tuple[Path, ...] = ()
    #: Development only: package a workspace whose manifest is not signed.
    allow_unsigned: bool = False
    #: CA certificate to check the signature with (default: the plan's pki_dir/ca.crt).
    ca_cert: Path | None = None
    #: Appended to the image name of the default tag (``-sgx`` for enclave images).
    tag_suffix: str = ""


@dataclass(frozen=True)
class BuildContext:
    directory: Path
    tag: str
    base_image: str
    measurement: str
    pins: list[Pin]
    notes: list[str] = field(default_factory=list)
    signer: str | None = None

    def build_args(self) -> dict[str, str]:
        return {"BASE_IMAGE": self.base_image}

    def build_command(self) -> str:
        args = " ".join(f"--build-arg {k}={shlex.quote(v)}" for k, v in self.build_args().items())
        return f"docker build {args} -t {shlex.quote(self.tag)} {shlex.quote(str(self.directory))}"


def default_tag(plan: Plan, measurement: str, suffix: str = "") -> str:
    """``bastion-<plan name><suffix>:<first 12 hex digits of the measurement>``."""
    name = _TAG_PART.sub("-", plan.name.lower()).strip("-._") or "workspace"
    return f"bastion-{name[:60]}{suffix}:{measurement[:12]}"


def write_context(options: DockerizeOptions) -> BuildContext:
    """Write the build context; fetches the pinned wheels (pip, or ``find_links``)."""
    workspace = Path(options.workspace)
    out = Path(options.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DockerizeError(f"{out} exists and is not empty: choose a new directory")
    if out.resolve().is_relative_to(workspace.resolve()):
        raise DockerizeError(f"write the build context outside the workspace, not in {out}")
    plan = load_plan(workspace)
    members, signed = export_members(workspace)
    signer = _check_signed(workspace, plan, signed, options)
    # The measurement collaborators report: the manifest's (export_members checked that the
    # files still match it), or, for an unmeasured development workspace, the files now.
    has_manifest = (workspace / MANIFEST_FILE).is_file()
    manifest = read_manifest(workspace)[0] if has_manifest else measure_workspace(workspace)
    measurement = manifest.measurement
    resolution = resolve(workspace_roots(workspace))
    out.mkdir(parents=True, exist_ok=True)
    try:
        _copy_workspace(workspace, members, out / "workspace")
        wheels = fetch_wheels(resolution.pins, out / "wheels", find_links=options.find_links)
        (out / "requirements.lock").write_text(lock_text(resolution.pins, wheels))
        tag = options.tag or default_tag(plan, measurement, options.tag_suffix)
        writable = sorted(
            {f"{WORKSPACE}/{plan.output.checkpoints}", f"{WORKSPACE}/{plan.output.logs}"}
        )
        text = dockerfile(
            plan_name=plan.name,
            measurement=measurement,
            base_image=options.base_image,
            tag=tag,
            python_version=f"{sys.version_info[0]}.{sys.version_info[1]}",
            writable=writable,
            pki_dir=f"{WORKSPACE}/{plan.network.pki_dir}",
        )
        (out / "Dockerfile").write_text(text)
        entrypoint = out / "entrypoint.sh"
        entrypoint.write_text(ENTRYPOINT)
        entrypoint.chmod(0o755)
        (out / "healthcheck.py").write_text(HEALTHCHECK)
        (out / ".dockerignore").write_text("README.txt\n")
        context = BuildContext(
            out, tag, options.base_image, measurement, resolution.pins, resolution.notes, signer
        )
        (out / "README.txt").write_text(run_instructions(context, plan))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return context


def build(context: BuildContext, save: Path | None = None) -> None:
    """Build the image with the local Docker engine, then ``docker save`` it if asked."""
    build_image(context.directory, context.tag, context.build_args())
    if save is not None:
        save_image(context.tag, save)


def _check_signed(
    workspace: Path, plan: Plan, signed: bool, options: DockerizeOptions
) -> str | None:
    """A collaborator refuses an unsigned workspace, so an image of one is refused too."""
    if not signed:
        if options.allow_unsigned:
            return None
        raise DockerizeError(
            f"{workspace} is not signed, and collaborators refuse unsigned workspaces: run "
            "`bastion workspace measure` and `bastion workspace sign` first (or pass "
            "--allow-unsigned for a development image)"
        )
    ca = options.ca_cert or default_ca_cert(workspace, plan)
    if not ca.is_file():
        return "unchecked (no CA certificate here)"
    _, raw = read_manifest(workspace)
    return str(verify_signature(raw, signature_path(workspace), ca))


def _copy_workspace(workspace: Path, members: Sequence[str], target: Path) -> None:
    for rel in members:
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workspace / rel, destination)


def run_instructions(context: BuildContext, plan: Plan) -> str:
    """README.txt of the context: build, then run each role with its secrets mounted."""
    pki = f"{WORKSPACE}/{plan.network.pki_dir}"
    return f"""\
Bastion workspace image for plan {plan.name!r}, measurement {context.measurement}.

Build (no network needed; the wheels are in this directory):
  {context.build_command()}

The image holds no key or certificate. Each host mounts its own PKI directory (ca.crt,
its NAME.key and NAME.crt) read-only at {pki}. The image runs as uid {IMAGE_UID}, which
must be able to read the key (mode 0600): e.g. `sudo chown -R {IMAGE_UID} ./pki-for-docker`.

Aggregator (its certificate's host name is what collaborators dial):
  docker run -d --name bastion-aggregator -p {plan.network.port}:{plan.network.port} \\
    -v "$PWD/pki-for-docker:{pki}:ro" -v bastion-save:{WORKSPACE}/{plan.output.checkpoints} \\
    {context.tag} aggregator --port {plan.network.port}

Collaborator NAME (its data directory mounted read-only where the plan expects it):
  docker run -d --name bastion-NAME -v "$PWD/pki-for-docker:{pki}:ro" \\
    {context.tag} collaborator NAME --aggregator AGGREGATOR_HOST:{plan.network.port}

Check the workspace inside the image against the mounted CA:
  docker run --rm -v "$PWD/pki-for-docker:{pki}:ro" {context.tag} workspace verify
"""
