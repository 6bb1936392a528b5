"""One accepted job's collaborator, in its own process, in the job's directory at the site."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bastion.collaborator.service import run_collaborator
from bastion.data.site import load_site_data
from bastion.errors import BastionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.site.job_process")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--aggregator", required=True)
    parser.add_argument("--pki-dir", required=True, type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_collaborator(
            args.workspace,
            args.name,
            aggregator=args.aggregator,
            site_data=load_site_data(args.data) if args.data else None,
            pki_dir=args.pki_dir,
        )
    except BastionError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
