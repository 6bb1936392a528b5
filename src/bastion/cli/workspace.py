"""``bastion workspace``: templates, creation, measurement and signing, archives, images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bastion.cli.console import console
from bastion.cli.options import WorkspaceOption
from bastion.workspace.templates import create_workspace, list_templates

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
    collaborators: int | None = typer.Option(
        None, "--collaborators", "-n", help="Roster size (site-1..site-N)."
    ),
    rounds: int | None = typer.Option(None, "--rounds", "-r", help="Number of training rounds."),
) -> None:
    """Create a workspace: plan.yaml, task code and requirements from a template."""
    path = create_workspace(directory, template, collaborators=collaborators, rounds=rounds)
    console.print(f"[green]created[/] workspace {path} from template [bold]{template}[/]")
    console.print(
        "next: [bold]bastion pki init[/], issue identities, then [bold]bastion plan initialize[/] "
        f"(run them inside {path})"
    )


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
    from bastion.plan import load_plan
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
    max_file_mib: int = typer.Option(4096, min=1, help="Refuse a member larger than this."),
    max_total_mib: int = typer.Option(32768, min=1, help="Refuse archives unpacking to more."),
) -> None:
    """Unpack an exported workspace, refusing unsafe archives; optionally verify it."""
    import shutil

    from bastion.plan import load_plan
    from bastion.workspace.archive import Limits, import_workspace
    from bastion.workspace.verify import verify_workspace

    limits = Limits(max_file_bytes=max_file_mib << 20, max_total_bytes=max_total_mib << 20)
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
    _say(
        "next: put the federation's ca.crt and this site's key and certificate in its PKI "
        "directory, then `bastion workspace verify` and `bastion collaborator start NAME`"
    )
