"""``bastion workspace``: templates, creation, measurement and signing, archives, images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from bastion.cli.console import console
from bastion.cli.options import WorkspaceOption
from bastion.plan import load_plan
from bastion.workspace.templates import create_workspace, list_templates

if TYPE_CHECKING:
    from bastion.workspace.dockerize import BuildContext

app = typer.Typer(
    help="Workspaces: create, measure and sign, export and import, dockerize and graminize.",
    no_args_is_help=True,
)


@app.command("templates")
def templates() -> None:
    """List the workspace templates that ship with Bastion."""
    table = Table("template", "description", "rounds", "collaborators")
    for template in list_templates():
        table.add_row(
            template.name, template.description, str(template.rounds), str(template.collaborators)
        )
    console.print(table)


@app.command("create")
def create(
    directory: Path = typer.Argument(..., help="New (or empty) directory for the workspace."),
    template: str = typer.Option(
        ..., "--template", "-t", help="Template name (see `workspace templates`)."
    ),
    collaborators: str | None = typer.Option(
        None,
        "--collaborators",
        "-n",
        help="The roster: site names (hospital-a,hospital-b; each its certificate's CN) "
        "or a count (site-1..site-N).",
    ),
    rounds: int | None = typer.Option(None, "--rounds", "-r", help="Number of training rounds."),
    aggregator: str | None = typer.Option(
        None,
        "--aggregator",
        help="HOST[:PORT] the sites dial (network.address; a name in the aggregator's "
        "certificate). Default: the template's 127.0.0.1:50051.",
    ),
) -> None:
    """Create a workspace: plan.yaml, task code and requirements from a template."""
    from bastion.workspace.templates import parse_roster

    roster = parse_roster(collaborators) if collaborators is not None else None
    path = create_workspace(
        directory, template, collaborators=roster, rounds=rounds, aggregator=aggregator
    )
    console.print(f"[green]created[/] workspace {path} from template [bold]{template}[/]")
    _say(
        f"next (model owner): `bastion plan validate -w {path}` and `bastion plan initialize "
        f"-w {path}`, then measure and sign it with your model-owner certificate"
    )
    if load_plan(path).data.dataset is None:
        _say(f"to try it on this machine alone first: `bastion simulate -w {path}`")


def _say(text: str) -> None:
    """Plain text: paths and digests may hold brackets that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("measure")
def measure(workspace: Path = WorkspaceOption) -> None:
    """Write workspace.manifest.json: SHA-256 of every measured file and the plan's hash."""
    from bastion.workspace.verify import measure as measure_files

    path, manifest = measure_files(workspace)
    _say(f"wrote {path}: {len(manifest.files)} files, plan {manifest.plan_sha256[:16]}…")
    if manifest.excluded:
        _say(f"not measured (run-time directories): {', '.join(manifest.excluded)}")
    _say(f"measurement {manifest.measurement}")
    _say("next: bastion workspace sign --key KEY --cert CERT (a model-owner identity)")


@app.command("sign")
def sign(
    workspace: Path = WorkspaceOption,
    key: Path = typer.Option(..., "--key", help="The model owner's private key (PEM)."),
    cert: Path = typer.Option(..., "--cert", help="The model owner's certificate (PEM)."),
    ca: Path | None = typer.Option(
        None,
        "--ca",
        help="Federation CA certificate to check --cert against (default: the "
        "plan's pki_dir/ca.crt when present).",
    ),
) -> None:
    """Sign the manifest as the model owner (a model-owner certificate of the federation CA)."""
    from bastion.workspace.verify import sign as sign_manifest

    path, signer = sign_manifest(workspace, key, cert, ca)
    _say(f"wrote {path}, signed by {signer}")


@app.command("verify")
def verify(
    workspace: Path = WorkspaceOption,
    ca: Path | None = typer.Option(
        None, "--ca", help="Federation CA certificate (default: the plan's pki_dir/ca.crt)."
    ),
) -> None:
    """Check the signature and every file, as a collaborator does before it runs any code."""
    from bastion.workspace.verify import verify_workspace

    verified = verify_workspace(workspace, load_plan(workspace), ca)
    _say(
        f"verified: {len(verified.manifest.files)} files match the manifest signed by "
        f"{verified.signer}"
    )
    _say(f"measurement {verified.measurement}")


@app.command("export")
def export(
    archive: Path = typer.Argument(..., help="The .tar.gz to write (outside the workspace)."),
    workspace: Path = WorkspaceOption,
    initial_model: bool = typer.Option(
        True, help="Include the initial model checkpoint (the aggregator needs it)."
    ),
) -> None:
    """Write a portable archive: plan, code, requirements, manifest, signature, initial model.

    Never the PKI directory: keys, certificates and ca.crt travel separately."""
    from bastion.workspace.archive import export_workspace

    exported = export_workspace(workspace, archive, initial_model=initial_model)
    model = "with" if exported.initial_model else "without"
    _say(f"wrote {exported.archive}: {exported.files} files, {model} the initial model")
    if not exported.signed:
        _say(
            "warning: the workspace is not signed, so collaborators will refuse it; run "
            "`bastion workspace measure` and `bastion workspace sign` first"
        )


@app.command("import")
def import_(
    archive: Path = typer.Argument(..., help="An archive written by `bastion workspace export`."),
    directory: Path = typer.Argument(..., help="New (or empty) directory for the workspace."),
    ca: Path | None = typer.Option(
        None, "--ca", help="Federation CA certificate: verify the signature and files now."
    ),
    max_file_mib: int | None = typer.Option(
        None, min=1, help="Refuse a member larger than this (default: the largest declared)."
    ),
    max_total_mib: int | None = typer.Option(
        None, min=1, help="Refuse archives unpacking to more (default: 2x the declared size)."
    ),
) -> None:
    """Unpack an exported workspace, refusing unsafe archives; optionally verify it."""
    import shutil

    from bastion.workspace.archive import Limits, declared_limits, import_workspace
    from bastion.workspace.verify import verify_workspace

    limits = None
    if max_file_mib is not None or max_total_mib is not None:
        declared = declared_limits(archive) if archive.is_file() else Limits()
        limits = Limits(
            max_file_bytes=max_file_mib << 20 if max_file_mib else declared.max_file_bytes,
            max_total_bytes=max_total_mib << 20 if max_total_mib else declared.max_total_bytes,
        )
    path = import_workspace(archive, directory, limits)
    if ca is not None:
        try:
            verified = verify_workspace(path, load_plan(path), ca)
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        _say(f"imported and verified {path}: signed by {verified.signer}")
        _say(f"measurement {verified.measurement}")
    else:
        _say(f"imported {path}")
    plan = load_plan(path)
    data = f" --data {plan.data.dataset}=PATH" if plan.data.dataset else ""
    _say("next, with ca.crt and this party's key and certificate in its pki/ folder:")
    _say(f"  the aggregator host: bastion aggregator start -w {path} --pki-dir pki")
    _say(f"  a data site:         bastion collaborator start NAME -w {path} --pki-dir pki{data}")


FindLinksOption = typer.Option(
    None,
    "--find-links",
    help="A directory of wheels to use instead of the package index (repeat; air-gapped hosts).",
)
BuildOption = typer.Option(
    None,
    "--build/--no-build",
    help="Build the image (default: when a Docker engine answers; otherwise only the context).",
)


def _build_plan(build: bool | None, save: Path | None) -> str | None:
    """Why no image will be built (None: build one); refuses up front when --build or
    --save cannot be honoured here."""
    from bastion.errors import BastionError
    from bastion.workspace.docker_engine import docker_unavailable

    if build is False:
        if save is not None:
            raise BastionError("--save needs the image: drop --no-build")
        return "--no-build"
    reason = docker_unavailable()
    if reason is not None and (build or save is not None):
        raise BastionError(
            f"cannot build here: {reason}. Drop --build/--save to write only the build context, "
            "then build it on a host with Docker"
        )
    return reason


@app.command("dockerize")
def dockerize(
    out: Path = typer.Argument(..., help="New (or empty) directory for the build context."),
    workspace: Path = WorkspaceOption,
    base_image: str = typer.Option(
        "python:3.11-slim", help="Base image (build argument BASE_IMAGE); needs this Python."
    ),
    tag: str | None = typer.Option(None, help="Image tag (default: bastion-PLAN:MEASUREMENT)."),
    find_links: list[Path] | None = FindLinksOption,
    build: bool | None = BuildOption,
    save: Path | None = typer.Option(None, help="Write the built image here (docker save)."),
    ca: Path | None = typer.Option(
        None, "--ca", help="Federation CA certificate (default: the plan's pki_dir/ca.crt)."
    ),
    allow_unsigned: bool = typer.Option(
        False, help="DEVELOPMENT ONLY: package a workspace whose manifest is not signed."
    ),
) -> None:
    """Write a Docker build context (Dockerfile, workspace, pinned wheels, entrypoints) and
    build the image when a Docker engine is present. Keys are never in the image."""
    from bastion.workspace.dockerize import DockerizeOptions, write_context
    from bastion.workspace.dockerize import build as build_context

    not_building = _build_plan(build, save)
    options = DockerizeOptions(
        workspace=workspace,
        out=out,
        base_image=base_image,
        tag=tag,
        find_links=tuple(find_links or ()),
        allow_unsigned=allow_unsigned,
        ca_cert=ca,
    )
    context = write_context(options)
    _report_context(context)
    if not_building is not None:
        _say(f"no image built ({not_building}); on a host with Docker:")
        _say(f"  {context.build_command()}")
        return
    _say(f"building {context.tag} …")
    build_context(context, save)
    _say(f"built image {context.tag}" + (f", saved to {save}" if save else ""))
    _say(f"run it: see {context.directory / 'README.txt'}")


def _report_context(context: BuildContext) -> None:
    _say(
        f"wrote build context {context.directory}: workspace measurement "
        f"{context.measurement[:16]}…, {len(context.pins)} pinned wheels, signed by "
        f"{context.signer or 'nobody (development image)'}"
    )
    for note in context.notes:
        _say(f"  note: {note}")


@app.command("graminize")
def graminize(
    out: Path = typer.Argument(..., help="New (or empty) directory for the build context."),
    signing_key: Path = typer.Option(
        ..., "--signing-key", help="Enclave signing key (`bastion tee keygen`); a build secret."
    ),
    workspace: Path = WorkspaceOption,
    base_image: str = typer.Option(
        "python:3.11-slim", help="Base image (build argument BASE_IMAGE); needs this Python."
    ),
    tag: str | None = typer.Option(None, help="Image tag (default: bastion-PLAN-sgx:MEASUREMENT)."),
    find_links: list[Path] | None = FindLinksOption,
    build: bool | None = BuildOption,
    save: Path | None = typer.Option(None, help="Write the built image here (docker save)."),
    ca: Path | None = typer.Option(
        None, "--ca", help="Federation CA certificate (default: the plan's pki_dir/ca.crt)."
    ),
    debug: bool = typer.Option(False, help="Debug enclaves: the host can read their memory."),
    enclave_size: str = typer.Option("8G", help="Enclave size, a power of two (e.g. 4G, 16G)."),
    max_threads: int = typer.Option(64, help="Enclave thread slots."),
    isv_prod_id: int = typer.Option(0, help="ISV product id (0..65535), pinned by the policy."),
    isv_svn: int = typer.Option(0, help="ISV security version (0..65535)."),
    data_dir: str | None = typer.Option(
        None, help="Where a site's data is mounted in the container (allowed, unprotected)."
    ),
    seal_checkpoints: bool = typer.Option(
        True, help="Seal checkpoints to the signer (off: the host can read the model)."
    ),
) -> None:
    """Everything dockerize does, plus Gramine manifests for SGX enclaves, signed at build time
    with --signing-key (a BuildKit secret: never in the context or the image)."""
    from bastion.workspace.dockerize import DockerizeOptions
    from bastion.workspace.gramine_image import EnclaveOptions
    from bastion.workspace.graminize import (
        GraminizeOptions,
        build_enclave_image,
        write_enclave_context,
    )

    not_building = _build_plan(build, save)
    options = GraminizeOptions(
        docker=DockerizeOptions(
            workspace=workspace,
            out=out,
            base_image=base_image,
            tag=tag,
            find_links=tuple(find_links or ()),
            ca_cert=ca,
            tag_suffix="-sgx",
        ),
        signing_key=signing_key,
        enclave=EnclaveOptions(
            debug=debug,
            enclave_size=enclave_size,
            max_threads=max_threads,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            data_dir=data_dir,
            seal_checkpoints=seal_checkpoints,
        ),
    )
    enclave = write_enclave_context(options)
    _report_context(enclave.context)
    _say(f"enclaves: aggregator, collaborator, seal; signer MRSIGNER {enclave.mrsigner}")
    if debug:
        _say(
            "warning: DEBUG enclaves: the host can read their memory; never use them with real data"
        )
    if not_building is not None:
        _say(f"no image built ({not_building}); on a host with Docker and BuildKit:")
        _say(f"  {enclave.build_command()}")
        return
    _say(f"building {enclave.context.tag} (BuildKit; installs Gramine unless the base has it) …")
    for role, sig in zip(
        ("aggregator", "collaborator", "seal"), build_enclave_image(enclave, save), strict=True
    ):
        _say(
            f"  {role}: MRENCLAVE {sig.mrenclave.hex()} MRSIGNER {sig.mrsigner.hex()} "
            f"isv_prod_id {sig.isv_prod_id} isv_svn {sig.isv_svn} debug {'yes' if sig.debug else 'no'}"
        )
    _say(f"built image {enclave.context.tag}" + (f", saved to {save}" if save else ""))
    _say(f"SIGSTRUCTs in {enclave.context.directory / 'sigstructs'}; run it: see README.txt")
