"""``bastion workspace graminize``: the dockerize context, plus Gramine SGX enclaves.

The context is ``dockerize``'s (workspace, pinned wheels, healthcheck) with a Dockerfile
that renders the Gramine manifests inside the image, installs Gramine unless the base image
has it, and signs each enclave with ``gramine-sgx-sign`` using the enclave key passed as a
BuildKit secret, so neither the key nor any certificate is ever in the context or the image.
Building needs a Docker engine with BuildKit (and, unless the base image has Gramine,
network access to Gramine's package repository); running needs SGX hardware.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import load_plan
from bastion.tee.gramine_build import MANIFEST_NAME
from bastion.tee.signing_key import load_enclave_key, mrsigner_of
from bastion.tee.sigstruct import Sigstruct, read_sigstruct
from bastion.workspace.docker_engine import DockerError, build_image, run_docker
from bastion.workspace.docker_files import (
    IMAGE_UID,
    PORT_FILE,
    ROLE_FILE,
    WORKSPACE,
    common_fields,
)
from bastion.workspace.dockerize import BuildContext, DockerizeOptions, write_context
from bastion.workspace.gramine_image import (
    ENCLAVE_DIR,
    ENCLAVE_ROLES,
    KEY_SECRET,
    SEAL_INPUT,
    EnclaveOptions,
    enclave_entrypoint,
    graminized_dockerfile,
)


class GraminizeError(BastionError):
    """The enclave image cannot be prepared or built."""


@dataclass(frozen=True)
class GraminizeOptions:
    docker: DockerizeOptions
    #: The enclave signing key (RSA-3072, e=3; `bastion tee keygen`): a build secret only.
    signing_key: Path
    enclave: EnclaveOptions = field(default_factory=EnclaveOptions)


@dataclass(frozen=True)
class EnclaveContext:
    context: BuildContext
    signing_key: Path
    mrsigner: str

    def build_command(self) -> str:
        base = self.context.build_command().removeprefix("docker build ")
        secret = f"--secret id={KEY_SECRET},src={shlex.quote(str(self.signing_key.resolve()))}"
        return f"DOCKER_BUILDKIT=1 docker build {secret} {base}"


def write_enclave_context(options: GraminizeOptions) -> EnclaveContext:
    """Write the build context of the enclave image; the signing key stays where it is."""
    key_path = Path(options.signing_key)
    out = Path(options.docker.out).resolve()
    if key_path.resolve().is_relative_to(out):
        raise GraminizeError(f"keep the signing key {key_path} outside the build context {out}")
    key = load_enclave_key(key_path)  # refuses what SGX would refuse, before any work
    plan = load_plan(options.docker.workspace)
    # The plan is part of every enclave's MRENCLAVE, so it can pin only MRSIGNER: check it.
    policy = plan.attestation.policy if plan.attestation else None
    mrsigner = mrsigner_of(key.public_key()).hex()
    if policy is not None and policy.mrsigner not in (None, mrsigner):
        raise GraminizeError(
            f"the plan's attestation policy pins MRSIGNER {policy.mrsigner}, but {key_path} "
            f"has MRSIGNER {mrsigner}: sign with the key the policy names, or update the plan "
            "(then measure and sign the workspace again)"
        )
    context = write_context(options.docker)
    writable = sorted({f"{WORKSPACE}/{plan.output.checkpoints}", f"{WORKSPACE}/{plan.output.logs}"})
    fields = common_fields(
        base_image=context.base_image,
        python_version=f"{sys.version_info[0]}.{sys.version_info[1]}",  # as dockerize's wheels
        writable=writable,
    )
    text = graminized_dockerfile(
        fields=fields,
        plan_name=plan.name,
        measurement=context.measurement,
        tag=context.tag,
        pki_dir=f"{WORKSPACE}/{plan.network.pki_dir}",
        checkpoints_dir=f"{WORKSPACE}/{plan.output.checkpoints}",
        options=options.enclave,
    )
    (context.directory / "Dockerfile").write_text(text)
    entrypoint = context.directory / "entrypoint.sh"
    entrypoint.write_text(enclave_entrypoint(options.docker.workspace, ROLE_FILE, PORT_FILE))
    entrypoint.chmod(0o755)
    enclave = EnclaveContext(context, key_path, mrsigner)
    readme = sgx_instructions(
        enclave, plan.network.port, f"{WORKSPACE}/{plan.output.checkpoints}", options.enclave
    )
    (context.directory / "README.txt").write_text(readme)
    return enclave


def build_enclave_image(enclave: EnclaveContext, save: Path | None = None) -> list[Sigstruct]:
    """Build with BuildKit (the key as a secret), save if asked, and read back each SIGSTRUCT."""
    context = enclave.context
    try:
        build_image(
            context.directory,
            context.tag,
            context.build_args(),
            extra=["--secret", f"id={KEY_SECRET},src={enclave.signing_key.resolve()}"],
            env={"DOCKER_BUILDKIT": "1"},
        )
    except DockerError as exc:
        if "buildx" not in str(exc):
            raise
        raise GraminizeError(
            f"{exc}. The enclave image needs BuildKit (the key is a build secret): install "
            "Docker's buildx plugin (package docker-buildx-plugin or docker-buildx)"
        ) from None
    sigstructs = extract_sigstructs(context.tag, context.directory / "sigstructs")
    for sig in sigstructs:
        if sig.mrsigner.hex() != enclave.mrsigner:
            raise GraminizeError(
                f"the image's enclaves are signed by MRSIGNER {sig.mrsigner.hex()}, not by "
                f"{enclave.signing_key} ({enclave.mrsigner}): the build did not use that key"
            )
    if save is not None:
        run_docker(["save", "--output", str(save), context.tag], f"saving {context.tag}")
    return sigstructs


def extract_sigstructs(tag: str, target: Path) -> list[Sigstruct]:
    """Copy ``<role>.sig`` out of the image (what `tee inspect` and the policy read)."""
    target.mkdir(parents=True, exist_ok=True)
    container = run_docker(["create", tag], f"creating a container of {tag}").strip()
    try:
        found = []
        for role in ENCLAVE_ROLES:
            path = target / f"{role}.sig"
            source = f"{container}:{ENCLAVE_DIR}/{role}/{MANIFEST_NAME}.sig"
            run_docker(["cp", source, str(path)], f"copying {role}'s SIGSTRUCT")
            found.append(read_sigstruct(path))
        return found
    finally:
        try:
            run_docker(["rm", container], "removing the temporary container")
        except DockerError:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)


def sgx_instructions(
    enclave: EnclaveContext, port: int, checkpoints: str, options: EnclaveOptions
) -> str:
    """README.txt of the enclave context: build, inspect, seal, run on SGX hardware."""
    tag = enclave.context.tag
    save = f' -v "$PWD/sealed-save:{checkpoints}"' if options.seal_checkpoints else ""
    data = f' -v "$PWD/data:{options.data_dir}:ro"' if options.data_dir else ""
    devices = (
        "--device /dev/sgx_enclave --device /dev/sgx_provision "
        "-v /var/run/aesmd/aesm.socket:/var/run/aesmd/aesm.socket"
    )
    return f"""\
Bastion SGX enclave image, workspace measurement {enclave.context.measurement}.
Enclave signer MRSIGNER {enclave.mrsigner}.

Build (BuildKit; the key is a build secret and is stored in no layer; without Gramine in the
base image the build installs it from packages.gramineproject.io):
  {enclave.build_command()}

Identity of each enclave (pin MRSIGNER with isv_prod_id/min_isv_svn in the plan's
attestation policy; record MRENCLAVE, which depends on the plan and cannot be in it):
  docker run --rm {tag} tee inspect {ENCLAVE_DIR}/aggregator/{MANIFEST_NAME}.sig

Every host, once: seal its PKI (ca.crt, NAME.key, NAME.crt) into its own sealed directory,
readable only by enclaves of this signer. The image runs as uid {IMAGE_UID}.
  docker run --rm {devices} \\
    -v "$PWD/pki-NAME:{SEAL_INPUT}:ro" -v "$PWD/sealed-pki:/secrets"{save} {tag} seal
  shred -u pki-NAME/NAME.key    # the plain key is no longer needed on this host

Aggregator:
  docker run -d --name bastion-aggregator {devices} -p {port}:{port} \\
    -v "$PWD/sealed-pki:/secrets"{save} {tag} aggregator

Collaborator NAME:
  docker run -d --name bastion-NAME {devices} -v "$PWD/sealed-pki:/secrets"{data} \\
    {tag} collaborator NAME --aggregator AGGREGATOR_HOST:{port}
"""
