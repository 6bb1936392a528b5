"""``bastion pki``: run the federation's certificate authority and request certificates."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bastion.cli.console import console
from bastion.pki import (
    DEFAULT_PKI_DIR,
    IssuedCert,
    Role,
    certificate_fingerprint,
    create_request,
    csr_fingerprint,
    init_ca,
    issue,
    list_issued,
    load_certificate,
    load_csr,
    sign_request,
    subject_alternative_names,
)
from bastion.pki.identity import format_time

app = typer.Typer(
    name="pki",
    help=(
        "Certificate authority and member certificates. The operator runs `init`, then "
        "`sign` for each request (or `issue` when everything happens on one machine); "
        "members run `request` where their key will live."
    ),
    no_args_is_help=True,
)

PkiDir = Annotated[
    Path,
    typer.Option(
        "--pki-dir",
        help="PKI directory (CA files, keys, requests, certificates).",
        file_okay=False,
    ),
]
Hosts = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        help="Host name or IP address peers dial (repeat for several); "
        "an aggregator needs at least one.",
    ),
]
Days = Annotated[int, typer.Option("--days", min=1, help="Days the certificate is valid.")]
RoleOption = Annotated[
    Role, typer.Option("--role", help="Role the certificate grants.", case_sensitive=False)
]


def _p(path: Path) -> str:
    """A path as rich markup text, so brackets in it print as themselves."""
    return escape(str(path))


def _print_fingerprint(label: str, fingerprint: str) -> None:
    """On one line and verbatim: rich would otherwise turn ``:AB:`` into an emoji."""
    console.print(Text(label + fingerprint), soft_wrap=True)


def _status(entry: IssuedCert, now: datetime) -> str:
    if now > entry.not_after:
        return "[red]expired[/]"
    if now < entry.not_before:
        return "[yellow]not yet valid[/]"
    return "[green]valid[/]"


def _print_issued(entry: IssuedCert) -> None:
    cert = load_certificate(entry.path)
    hosts = ", ".join(subject_alternative_names(cert)) or "none"
    console.print(
        f"[green]issued[/] {_p(entry.path)} to [bold]{entry.name}[/] as {entry.role.value}"
    )
    console.print(f"  serial      {entry.serial_hex}")
    console.print(f"  valid until {format_time(entry.not_after)}")
    console.print(f"  hosts       {hosts}")
    _print_fingerprint("  SHA-256     ", entry.fingerprint)


@app.command()
def init(
    pki_dir: PkiDir = DEFAULT_PKI_DIR,
    common_name: Annotated[
        str, typer.Option("--common-name", help="Subject CN of the CA certificate.")
    ] = "Bastion Federation CA",
    days: Annotated[int, typer.Option("--days", min=1, help="Days the CA is valid.")] = 3650,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing CA, voiding every certificate it issued."
        ),
    ] = False,
) -> None:
    """Create the federation's CA: ca.key (keep it secret, mode 0600) and ca.crt (share it)."""
    path = init_ca(pki_dir, common_name=common_name, days=days, force=force)
    console.print(f"[green]created CA[/] {_p(path)} (key {_p(path.with_suffix('.key'))})")
    _print_fingerprint("  SHA-256 ", certificate_fingerprint(load_certificate(path)))
    console.print("Give ca.crt to every member; ca.key never leaves this machine.")


@app.command()
def request(
    name: Annotated[str, typer.Argument(help="Identity name: the CN, e.g. the plan's name.")],
    host: Hosts = None,
    role: RoleOption = Role.COLLABORATOR,
    pki_dir: PkiDir = DEFAULT_PKI_DIR,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing key for NAME.")
    ] = False,
) -> None:
    """Make a private key and a signing request for NAME here, where the key will stay.

    Send NAME.csr to the CA operator and read them the printed fingerprint by phone.

    The operator checks it before signing, so a swapped request is caught.
    """
    csr_path = create_request(pki_dir, name, role, host or (), force=force)
    console.print(f"[green]wrote[/] {_p(csr_path)} and its key {_p(csr_path.with_suffix('.key'))}")
    _print_fingerprint("  request SHA-256 ", csr_fingerprint(csr_path))
    console.print(
        f"Send {csr_path.name} to the CA operator and confirm this fingerprint with them "
        f"out of band; put the {name}.crt and ca.crt you get back into {_p(pki_dir)}."
    )


@app.command()
def sign(
    csr: Annotated[Path, typer.Argument(help="The request (.csr) to sign.", dir_okay=False)],
    role: RoleOption,
    days: Days = 365,
    expect_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--expect-fingerprint",
            help="Refuse unless the request has this SHA-256 fingerprint "
            "(as the requester read it to you).",
        ),
    ] = None,
    pki_dir: PkiDir = DEFAULT_PKI_DIR,
) -> None:
    """Sign a request with the given role, writing NAME.crt into the PKI directory.

    Non-interactive: compare the printed fingerprint with the requester's (by phone).

    Or pass --expect-fingerprint to have the comparison made for you.

    The role given here is the one granted; a request asking for another is refused.
    """
    request_csr = load_csr(csr)
    console.print(f"request {_p(csr)}")
    _print_fingerprint("  SHA-256 ", csr_fingerprint(request_csr))
    entry = sign_request(pki_dir, csr, role, days=days, expected_fingerprint=expect_fingerprint)
    _print_issued(entry)
    _publish(pki_dir)
    console.print(f"Send {entry.path.name} and ca.crt back to {entry.name}.")


@app.command("issue")
def issue_command(
    name: Annotated[str, typer.Argument(help="Identity name: the CN, e.g. the plan's name.")],
    role: RoleOption,
    host: Hosts = None,
    days: Days = 365,
    pki_dir: PkiDir = DEFAULT_PKI_DIR,
) -> None:
    """Make key, request and certificate for NAME in one step, on the CA machine.

    For tests and single-site setups; across sites use `request` + `sign` instead,
    so that private keys never travel.
    """
    _print_issued(issue(pki_dir, name, role, host or (), days=days))
    _publish(pki_dir)
    console.print(f"Key: {_p(pki_dir / (name + '.key'))} (copy it only over a secure channel).")


def _publish(pki_dir: Path) -> None:
    """A name's older certificates are superseded in the CRL as soon as it has a new one."""
    from bastion.pki.revocation import publish_crl

    path = publish_crl(pki_dir)
    console.print(f"Revocation list: {_p(path)} (give it to the aggregator and the sites).")


@app.command("revoke")
def revoke_command(
    target: Annotated[str, typer.Argument(help="A name (all its live certificates) or a serial.")],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="key-compromise, superseded, cessation-of-operation, affiliation-changed, "
            "unspecified.",
        ),
    ],
    pki_dir: PkiDir = DEFAULT_PKI_DIR,
) -> None:
    """Revoke certificates and publish the CA-signed revocation list (ca.crl)."""
    from bastion.pki.revocation import crl_path, revoke

    for entry in revoke(pki_dir, target, reason):
        console.print(f"[red]revoked[/] {entry.name} serial {entry.serial_hex} ({escape(reason)})")
    console.print(f"Revocation list: {_p(crl_path(pki_dir))}; services reload it when it changes.")


@app.command("renew")
def renew_command(
    name: Annotated[str, typer.Argument(help="The identity to renew.")],
    csr: Annotated[
        Path | None,
        typer.Option("--csr", help="A new request (new key); default: the key NAME holds here."),
    ] = None,
    days: Days = 365,
    pki_dir: PkiDir = DEFAULT_PKI_DIR,
) -> None:
    """Issue NAME a new certificate; its previous one is superseded in the CRL."""
    from bastion.pki.revocation import crl_path, renew

    _print_issued(renew(pki_dir, name, days=days, csr=csr))
    console.print(
        f"Revocation list: {_p(crl_path(pki_dir))}; running services pick up the new "
        "certificate without a restart."
    )


@app.command("list")
def list_command(pki_dir: PkiDir = DEFAULT_PKI_DIR) -> None:
    """Show every certificate the CA issued, with its validity and fingerprint."""
    entries = list_issued(pki_dir)
    if not entries:
        console.print(f"No certificates issued yet from {_p(pki_dir)}.")
        return
    table = Table(
        title=f"Certificates issued by {_p(pki_dir / 'ca.crt')}",
        caption=f"full serials and fingerprints: {_p(pki_dir / 'issued.json')}",
    )
    for column in ("name", "role"):
        table.add_column(column, no_wrap=True)
    for column in ("serial", "valid until", "status", "SHA-256"):
        table.add_column(column, overflow="fold")
    now = datetime.now(timezone.utc)
    from bastion.pki.revocation import revoked_entries

    revoked = revoked_entries(pki_dir)
    for entry in entries:
        status = (
            f"[red]revoked ({revoked[entry.serial].reason})[/]"
            if entry.serial in revoked
            else _status(entry, now)
        )
        table.add_row(
            Text(entry.name),
            entry.role.value,
            entry.serial_hex[:16] + "…",
            format_time(entry.not_after),
            status,
            Text(entry.fingerprint[:23] + "…"),
        )
    console.print(table)
