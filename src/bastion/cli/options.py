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
AllowUnsignedWorkspaceOption = typer.Option(
    False,
    "--allow-unsigned-workspace",
    envvar="BASTION_ALLOW_UNSIGNED_WORKSPACE",
    help="DEVELOPMENT ONLY: run a workspace without a valid model-owner signature (still "
    "measured, so the aggregator can compare). Never with real data.",
)
