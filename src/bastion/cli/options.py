"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

WorkspaceOption = typer.Option(
    Path("."), "--workspace", "-w", help="Workspace directory (holds plan.yaml).", show_default=True
)
InsecureOption = typer.Option(
    False, "--insecure", help="Plain-text gRPC without TLS. For throwaway local tests only."
)
VerboseOption = typer.Option(False, "--verbose", "-v", help="Debug logging.")
PkiDirOption = typer.Option(
    None,
    "--pki-dir",
    "--pki",
    envvar="BASTION_PKI_DIR",
    file_okay=False,
    help="This party's PKI folder: ca.crt, its own key and certificate (default: the plan's "
    "network.pki_dir inside the workspace). Where `bastion pki request` put them.",
)
AllowUnsignedWorkspaceOption = typer.Option(
    False,
    "--allow-unsigned-workspace",
    envvar="BASTION_ALLOW_UNSIGNED_WORKSPACE",
    help="DEVELOPMENT ONLY: run a workspace without a valid model-owner signature (still "
    "measured, so the aggregator can compare). Never with real data.",
)

DashboardOption = typer.Option(
    None,
    "--dashboard",
    help="Serve the web dashboard on HOST:PORT (127.0.0.1 unless told; any other address "
    "needs --dashboard-tokens).",
)
DashboardTokensOption = typer.Option(
    None,
    "--dashboard-tokens",
    dir_okay=False,
    help="Token file of `bastion dashboard token create`: every request must bear one.",
)
