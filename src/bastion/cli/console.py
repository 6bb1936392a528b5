"""The rich consoles every command prints through (results on stdout, logs on stderr)."""

from __future__ import annotations

import logging
import os

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def configure_logging(verbose: bool = False) -> None:
    """Rich log lines on stderr; metrics never go here (they go to the metrics log)."""
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose or os.environ.get("BASTION_DEBUG") else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    logging.getLogger("grpc").setLevel(logging.WARNING)
