"""``bastion dashboard``: tokens for the web dashboard (served by ``director start
--dashboard`` and ``aggregator start --dashboard``)."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.console import console

app = typer.Typer(help="Web dashboard access tokens.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

TokensOption = typer.Option(
    ..., "--tokens", dir_okay=False, help="The token file (only hashes are stored)."
)


@token_app.command("create")
def create(
    name: str = typer.Argument(
        ..., help="The identity: a model owner's certificate name, or an operator."
    ),
    role: str = typer.Option("model-owner", help="model-owner (its own jobs) or operator (all)."),
    tokens: Path = TokensOption,
) -> None:
    """Print a new token once; the file keeps only its SHA-256."""
    from bastion.dashboard.auth import TokenStore

    print(TokenStore(tokens).create(name, role))


@token_app.command("list")
def list_tokens(tokens: Path = TokensOption) -> None:
    """Identities holding tokens."""
    from bastion.dashboard.auth import TokenStore

    for name, role in TokenStore(tokens).identities():
        console.print(f"{name}\t{role}")


@token_app.command("revoke")
def revoke(name: str = typer.Argument(...), tokens: Path = TokensOption) -> None:
    """Revoke every token of ``name``."""
    from bastion.dashboard.auth import TokenStore

    console.print(f"revoked {TokenStore(tokens).revoke(name)} token(s) of {name}")
