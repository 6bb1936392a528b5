"""The graminized image: Gramine manifests rendered inside the image, signed at build time.

The manifest templates must name the *image's* interpreter, standard library and packages,
so the Dockerfile renders them inside the image (``bastion tee image-manifests``) with the
image's own Python, then runs ``gramine-manifest`` and ``gramine-sgx-sign``. The enclave
signing key reaches ``gramine-sgx-sign`` as a BuildKit secret (``--secret id=enclave-key``):
it is mounted for that one ``RUN`` step and never stored in a layer.

Three enclaves, one per purpose, each ``/opt/bastion/enclave/<role>/bastion.manifest.sgx``:

* ``aggregator``: ``bastion aggregator start --host 0.0.0.0``;
* ``collaborator``: ``bastion collaborator start``, its name and the aggregator's address
  from the host (``BASTION_COLLABORATOR_NAME``, ``BASTION_AGGREGATOR``: names and
  addresses only, which mTLS and attestation make harmless to pass through);
* ``seal``: ``bastion tee seal``, which copies the site's PKI from ``/pki-in`` (read-only,
  host-controlled) and the image's initial model into the sealed mounts, once per host.
"""

from __future__ import annotations

import shlex
import string
from dataclasses import dataclass, replace
from pathlib import Path

from bastion.plan import load_plan
from bastion.storage.checkpoints import INITIAL
from bastion.tee.gramine import HOST_ENV_ALLOWED, ManifestOptions, Role, render_manifest_template
from bastion.tee.gramine_build import MANIFEST_NAME, build_steps
from bastion.tee.runtime import PythonRuntime
from bastion.workspace.pinned import has_manifest, pin_workspace

ENCLAVE_DIR = Path("/opt/bastion/enclave")
#: Where the graminized image keeps the initial model (a trusted file of the seal enclave).
INITIAL_DIR = Path("/opt/bastion/initial")
SEAL_INPUT = Path("/pki-in")
KEY_SECRET = "enclave-key"
KEY_IN_BUILD = f"/run/secrets/{KEY_SECRET}"
ENCLAVE_ROLES: tuple[Role, ...] = ("aggregator", "collaborator", "seal")
#: Gramine's package repository (installation docs); build arguments, so a mirror can be used.
GRAMINE_KEYRING_URL = "https://packages.gramineproject.io/gramine-keyring.gpg"
GRAMINE_REPO_URL = "https://packages.gramineproject.io/"


@dataclass(frozen=True)
class EnclaveOptions:
    """What shapes every enclave of the image (see ``ManifestOptions`` for each)."""

    debug: bool = False
    enclave_size: str = "8G"
    max_threads: int = 64
    isv_prod_id: int = 0
    isv_svn: int = 0
    #: Where a site's data is mounted in the container (allowed files); None: no data mount.
    data_dir: str | None = None
    seal_checkpoints: bool = True

    def cli_args(self) -> list[str]:
        """The same options as ``bastion tee image-manifests`` arguments (for the Dockerfile)."""
        args = [
            f"--enclave-size={self.enclave_size}",
            f"--max-threads={self.max_threads}",
            f"--isv-prod-id={self.isv_prod_id}",
            f"--isv-svn={self.isv_svn}",
            "--debug" if self.debug else "--no-debug",
            "--seal-checkpoints" if self.seal_checkpoints else "--no-seal-checkpoints",
        ]
        if self.data_dir is not None:
            args.append(f"--data-dir={self.data_dir}")
        return args


def role_options(
    workspace: Path,
    role: Role,
    options: EnclaveOptions,
    *,
    python: PythonRuntime | None = None,
    initial_dir: Path = INITIAL_DIR,
    seal_input: Path = SEAL_INPUT,
) -> ManifestOptions:
    """The manifest options of one of the image's enclaves."""
    common = ManifestOptions(
        workspace=workspace,
        role=role,
        debug=options.debug,
        enclave_size=options.enclave_size,
        max_threads=options.max_threads,
        isv_prod_id=options.isv_prod_id,
        isv_svn=options.isv_svn,
        data_dir=Path(options.data_dir) if options.data_dir else None,
        seal_checkpoints=options.seal_checkpoints,
        # MRENCLAVE commits to exactly the hashes the model owner signed (refused if the
        # image's copy differs); an unsigned development image trusts the files as they are.
        pinned_workspace=pin_workspace(workspace) if has_manifest(workspace) else None,
        python=python,
    )
    if role == "aggregator":
        return replace(common, args=("aggregator", "start", "--host", "0.0.0.0"))
    if role == "collaborator":
        return replace(common, host_env=HOST_ENV_ALLOWED)
    args = ["tee", "seal", "--from", str(seal_input)]
    trusted: tuple[Path, ...] = ()
    model = initial_dir / INITIAL
    if options.seal_checkpoints and model.is_file():
        args += ["--initial-model", str(model)]
        trusted = (initial_dir,)
    return replace(common, args=tuple(args), extra_allowed=(seal_input,), extra_trusted=trusted)


def render_image_templates(
    workspace: Path,
    out: Path,
    options: EnclaveOptions,
    *,
    python: PythonRuntime | None = None,
    initial_dir: Path = INITIAL_DIR,
) -> list[Path]:
    """Write ``<out>/<role>/bastion.manifest.template`` for every enclave of the image."""
    python = python or PythonRuntime.probe()
    written = []
    for role in ENCLAVE_ROLES:
        manifest = role_options(workspace, role, options, python=python, initial_dir=initial_dir)
        target = Path(out) / role / f"{MANIFEST_NAME}.manifest.template"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_manifest_template(manifest), encoding="utf-8")
        written.append(target)
    return written


def sign_script() -> str:
    """The shell loop of the Dockerfile's signing step, from ``gramine_build``'s commands."""
    steps = " && ".join(step.shell() for step in build_steps(key=Path(KEY_IN_BUILD)))
    roles = " ".join(ENCLAVE_ROLES)
    return f"for role in {roles}; do cd {ENCLAVE_DIR}/$role && {steps} || exit 1; done"


_DOCKERFILE = string.Template(
    """\
# Bastion SGX image for plan '$plan_name' (workspace measurement $measurement).
# Generated by `bastion workspace graminize`. Build with BuildKit; the enclave signing key is
# a build secret that gramine-sgx-sign reads and no layer stores:
#   DOCKER_BUILDKIT=1 docker build --secret id=$key_secret,src=ENCLAVE_KEY.pem \\
#     --build-arg BASE_IMAGE=$base_image -t $tag .
# Keys and certificates are NOT in this image: each host seals its own PKI into its
# enclave's encrypted directory at run time (see README.txt).
$build_stage
FROM $${BASE_IMAGE} AS enclave-templates
$runtime_setup\
# Manifests name this image's interpreter, stdlib and packages, so they are rendered here.
RUN chmod 0755 /opt/bastion/entrypoint.sh \\
 && mkdir -p $writable $pki_dir $initial_dir $secrets_dir \\
$move_initial && bastion tee image-manifests --workspace $workspace --out $enclave_dir $enclave_args \\
 && chown $uid:$uid $writable $secrets_dir

FROM enclave-templates AS enclave
ARG GRAMINE_KEYRING_URL=$keyring_url
ARG GRAMINE_REPO_URL=$repo_url
# Gramine from its package repository, unless the base image already has it.
RUN if ! command -v gramine-sgx-sign >/dev/null; then \\
      apt-get update \\
      && apt-get install -y --no-install-recommends ca-certificates curl \\
      && curl -fsSLo /usr/share/keyrings/gramine-keyring.gpg "$${GRAMINE_KEYRING_URL}" \\
      && . /etc/os-release \\
      && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/gramine-keyring.gpg] $${GRAMINE_REPO_URL} $${VERSION_CODENAME} main" \\
         > /etc/apt/sources.list.d/gramine.list \\
      && apt-get update && apt-get install -y --no-install-recommends gramine \\
      && rm -rf /var/lib/apt/lists/*; \\
    fi
# Render with Gramine's paths, hash every trusted file, sign: MRENCLAVE is fixed here.
RUN --mount=type=secret,id=$key_secret,required=true \\
    $sign_script
$final
"""
)


def graminized_dockerfile(
    *,
    fields: dict[str, str],
    plan_name: str,
    measurement: str,
    tag: str,
    pki_dir: str,
    checkpoints_dir: str,
    options: EnclaveOptions,
) -> str:
    """The graminized image's Dockerfile; ``fields`` come from ``docker_files.common_fields``."""
    move = ""
    if options.seal_checkpoints:
        # A sealed checkpoints mount cannot open a plain file: the initial model moves to a
        # trusted directory, from which the seal enclave copies it into the sealed mount.
        model = f"{checkpoints_dir}/{INITIAL}"
        move = f" && if [ -f {model} ]; then mv {model} {INITIAL_DIR}/; fi \\\n"
    return _DOCKERFILE.substitute(
        fields,
        plan_name=plan_name.replace("\n", " "),
        measurement=measurement,
        tag=tag,
        key_secret=KEY_SECRET,
        pki_dir=pki_dir,
        initial_dir=str(INITIAL_DIR),
        secrets_dir="/secrets",
        move_initial=move,
        enclave_dir=str(ENCLAVE_DIR),
        enclave_args=shlex.join(options.cli_args()),
        keyring_url=GRAMINE_KEYRING_URL,
        repo_url=GRAMINE_REPO_URL,
        sign_script=sign_script(),
    )


def enclave_entrypoint(workspace: Path, role_file: str, port_file: str) -> str:
    """The graminized image's entrypoint: each role starts its own signed enclave."""
    port = load_plan(workspace).network.port
    return f"""\
#!/bin/sh
# Bastion SGX container entrypoint (needs /dev/sgx_enclave and the aesmd socket):
#   aggregator                              the aggregator enclave (port {port})
#   collaborator NAME [--aggregator H:P]    one data site's enclave
#   seal                                    seal the PKI mounted at {SEAL_INPUT} (once per host)
#   anything else                           a `bastion` command outside the enclave, e.g.
#                                           `tee inspect {ENCLAVE_DIR}/aggregator/bastion.sig`
set -eu
role="${{1:-aggregator}}"
if [ "$#" -gt 0 ]; then shift; fi
enclave() {{
  cd "{ENCLAVE_DIR}/$1"
  exec gramine-sgx {MANIFEST_NAME}
}}
case "$role" in
  aggregator)
    echo aggregator > {role_file}
    echo {port} > {port_file}
    enclave aggregator ;;
  collaborator)
    if [ "$#" -lt 1 ]; then
      echo "usage: collaborator NAME [--aggregator HOST:PORT]" >&2
      exit 2
    fi
    BASTION_COLLABORATOR_NAME="$1"
    shift
    if [ "$#" -ge 2 ] && [ "$1" = "--aggregator" ]; then BASTION_AGGREGATOR="$2"; shift 2; fi
    if [ "$#" -gt 0 ]; then
      echo "the enclave's arguments are fixed; only NAME and --aggregator may be given" >&2
      exit 2
    fi
    export BASTION_COLLABORATOR_NAME
    if [ -n "${{BASTION_AGGREGATOR:-}}" ]; then export BASTION_AGGREGATOR; fi
    echo collaborator > {role_file}
    enclave collaborator ;;
  seal)
    enclave seal ;;
  *)
    exec bastion "$role" "$@" ;;
esac
"""
