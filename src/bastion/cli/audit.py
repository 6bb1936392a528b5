"""``bastion audit``: check and read a federation's signed audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bastion.cli.console import console

app = typer.Typer(
    name="audit",
    help="The aggregator's signed, hash-chained audit log: verify it, show it, check receipts.",
    no_args_is_help=True,
)

LogArg = Annotated[Path, typer.Argument(help="The audit log (logs/audit.jsonl).", dir_okay=False)]


@app.command("verify")
def verify(
    log: LogArg,
    ca: Annotated[
        Path, typer.Option("--ca", help="The federation's CA certificate.", dir_okay=False)
    ] = Path("pki/ca.crt"),
    aggregator: Annotated[
        str | None, typer.Option("--aggregator", help="Require this aggregator as the signer.")
    ] = None,
    receipt: Annotated[
        list[Path] | None,
        typer.Option("--receipt", help="A receipt a site received; must be in the log (repeat)."),
    ] = None,
) -> None:
    """Check every record's chain link and signature, the signer against the CA, receipts."""
    from bastion.audit.log import AuditError, check_receipt, verify_log

    verified = verify_log(log, ca, aggregator)
    for path in receipt or ():
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise AuditError(f"{path}: not a receipt ({exc})") from None
        check_receipt(document, verified)
        console.print(f"receipt {escape(str(path))}: record {document['seq']} is in the log")
    console.print(
        f"[green]verified[/] {escape(str(log))}: {len(verified.records)} records, chain and "
        f"signatures intact, signed by {', '.join(verified.signers)}; head "
        f"{verified.head.seq} {verified.head.hash[:16]}…"
    )


@app.command("show")
def show(
    log: LogArg,
    kind: Annotated[str | None, typer.Option("--kind", help="Only records of this kind.")] = None,
) -> None:
    """Print the log, one line a record (it is not verified here: use `audit verify`)."""
    from bastion.audit.log import read_records

    for _, record in read_records(log):
        if kind is not None and record["kind"] != kind:
            continue
        data = record["data"]
        if record["kind"] == "signer":
            data = {"certificate": f"{record['signer'][:23]}…"}
        fields = " ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in data.items())
        console.print(
            f"{record['seq']:>6} {record['time']} {record['kind']:<18} {escape(fields)}",
            soft_wrap=True,
        )
