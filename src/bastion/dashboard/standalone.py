"""``bastion aggregator start --dashboard``: the same page for one standalone federation."""

from __future__ import annotations

import logging
from pathlib import Path

from bastion.dashboard.server import DashboardServer, parse_address
from bastion.dashboard.sources import AggregatorSource, LiveFeed
from bastion.plan import load_plan
from bastion.storage.checkpoints import STATE


def start_standalone_dashboard(
    workspace: Path, address: str, tokens_file: Path | None
) -> tuple[LiveFeed, DashboardServer]:
    """The feed to pass to ``run_aggregator(observers=...)`` and the running server."""
    workspace = Path(workspace)
    plan = load_plan(workspace)
    feed = LiveFeed()
    job = {
        "id": plan.name,
        "owner": "",
        "plan_name": plan.name,
        "dataset": plan.data.dataset,
        "rounds": plan.rounds,
        "roster": plan.collaborator_names(),
        "attestation": plan.attestation is not None,
    }
    source = AggregatorSource(feed, job, workspace / plan.output.checkpoints / STATE, None)
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.emit = lambda record: source.remember(handler.format(record))  # type: ignore[method-assign]
    logging.getLogger("bastion").addHandler(handler)
    host, port = parse_address(address)
    server = DashboardServer(source, host, port, tokens_file).start()
    return feed, server
