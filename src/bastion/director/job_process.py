"""One job's aggregator, in its own process: the existing engine, streaming its round events.

The director starts ``python -m bastion.director.job_process`` per running job. Round
events go to stdout as JSON lines, which the director reads into its database (no log
tailing); the log goes to stderr, which the director writes to the job's log file. A
restarted job resumes from its workspace's last round checkpoint, on the same port.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import IO, Any

from bastion.aggregator.events import (
    FederationFinished,
    ProtocolReported,
    ResultAccepted,
    RoundEvent,
    RoundObserver,
    RoundReported,
    RoundStarted,
    SiteBack,
    SiteLost,
)
from bastion.aggregator.service import run_aggregator
from bastion.errors import BastionError


def event_message(event: RoundEvent) -> dict[str, Any] | None:
    """The JSON form of the round events a submitter (and the dashboard) follows."""
    if isinstance(event, RoundStarted):
        return {
            "type": "round_started",
            "round": event.round,
            "final_evaluation": event.final_evaluation,
            "collaborators": list(event.collaborators),
        }
    if isinstance(event, ResultAccepted):
        return {
            "type": "result",
            "round": event.round,
            "collaborator": event.collaborator,
            "task": event.task,
            "kind": event.kind,
            "example_count": event.example_count,
            "metrics": dict(event.metrics),
        }
    if isinstance(event, RoundReported):
        return {"type": "round", "round": event.round, "record": dict(event.record)}
    if isinstance(event, SiteLost):
        return {"type": "site_lost", "collaborator": event.collaborator}
    if isinstance(event, SiteBack):
        return {"type": "site_back", "collaborator": event.collaborator}
    if isinstance(event, FederationFinished):
        return {"type": "finished", "rounds": event.rounds, "best": event.best}
    if isinstance(event, ProtocolReported) and event.kind == "secure_aggregation":
        fields = event.fields
        return {
            "type": "secure_aggregation",
            "round": event.round,
            "outcome": fields.get("outcome"),
            "participants": fields.get("participants"),
            "dropped": dict(fields.get("dropped") or {}),
        }
    return None


class EventStream(RoundObserver):
    """Writes the round events a submitter follows, one JSON line each, to ``out``."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def notify(self, event: RoundEvent) -> None:
        message = event_message(event)
        if message is None:
            return
        try:  # observers run under the engine's lock: never let a closed pipe break a round
            self.out.write(json.dumps(message, default=str) + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.director.job_process")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--pki-dir", required=True, type=Path)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--roster", required=True, help="comma-separated site names")
    parser.add_argument("--open-roster", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_aggregator(
            args.workspace,
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            observers=[EventStream(sys.stdout)],
            pki_dir=args.pki_dir,
            roster=[name for name in args.roster.split(",") if name],
            open_roster=args.open_roster,
            own_process=True,
        )
    except BastionError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
