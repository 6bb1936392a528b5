"""One accepted job's collaborator, in its own process, in the job's directory at the site."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
from pathlib import Path

from bastion.collaborator.service import run_collaborator
from bastion.data.site import load_site_data
from bastion.errors import BastionError

#: a job's log at the site rotates at this size, keeping this many older files
LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 5
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    log_file: Path | None, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
) -> None:
    """The job's own rotated log file at the site (``collaborator.log``), else stderr."""
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.site.job_process")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--aggregator", required=True)
    parser.add_argument("--pki-dir", required=True, type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--log-file", type=Path, help="rotated log file (default: stderr)")
    args = parser.parse_args(argv)
    configure_logging(args.log_file)
    try:
        run_collaborator(
            args.workspace,
            args.name,
            aggregator=args.aggregator,
            site_data=load_site_data(args.data) if args.data else None,
            pki_dir=args.pki_dir,
            own_process=True,
        )
    except BastionError as exc:
        logging.getLogger("bastion.site").error("error: %s", exc)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
