"""The ``bastion`` command: one sub-command group per module in this package.

This module only wires groups together and turns ``BastionError`` into one red
line and exit code 2; there is no logic here.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.text import Text

from bastion.cli.console import configure_logging, console, err_console
from bastion.errors import BastionError

app = typer.Typer(
    name="bastion",
    help="Secure federated learning: workspaces, PKI, plans, aggregator, collaborators, enclaves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from bastion import __version__

        console.print(f"bastion {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Secure federated learning: workspaces, PKI, plans, aggregator, collaborators, enclaves."""


def _register() -> None:
    """Attach every command group; imported lazily so ``--help`` stays fast."""
    from importlib import import_module

    for module_name, group in _GROUPS:
        try:
            module = import_module(f"bastion.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bastion.cli.{module_name}":
                continue
            raise
        if group is None:
            module.register(app)
        else:
            app.add_typer(module.app, name=group)


#: (module under bastion.cli, group name or None for top-level commands)
_GROUPS: list[tuple[str, str | None]] = [
    ("workspace", "workspace"),
    ("pki", "pki"),
    ("plan", "plan"),
    ("aggregator", "aggregator"),
    ("collaborator", "collaborator"),
    ("simulate", None),
    ("status", None),
    ("tee", "tee"),
    ("director", "director"),
    ("site", "site"),
    ("job", None),
    ("audit", "audit"),
    ("dashboard", "dashboard"),
]


def main() -> None:
    """Entry point of the ``bastion`` console script."""
    # gRPC's C core logs to stderr on its own (ssl_transport_security.cc, ...); it speaks
    # only with --verbose. It reads this before its first import, so it is set here.
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if verbose else "NONE")
    _register()
    try:
        app()
    except BastionError as exc:
        # Plain text, never markup: messages hold paths and fingerprints with ':' and '['.
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


__all__ = ["app", "configure_logging", "console", "main"]
