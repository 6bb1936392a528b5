"""The rich consoles every command prints through (results on stdout, logs on stderr)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
