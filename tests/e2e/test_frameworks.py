"""Every framework's template federates over mTLS: 2 collaborators, real processes, real data.

Each test creates a workspace with ``bastion workspace create``'s code path, issues real
certificates, starts the aggregator and both collaborators as OS processes, and checks
that the global model's validation accuracy improves from the initial model's.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation

#: template, rounds, the accuracy the final model must reach, and its adapter module.
CASES = [
    ("numpy_logreg_digits", 3, 0.80, "bastion.runners.numpy"),
    ("lightning_mlp_digits", 3, 0.85, "bastion.runners.lightning"),
    ("keras_mlp_digits", 3, 0.85, "bastion.runners.keras"),
    ("jax_mlp_mnist", 3, 0.90, "bastion.runners.jax"),
    ("sklearn_sgd_mnist", 3, 0.85, "bastion.runners.sklearn"),
]


def run_federation(workspace: Path, timeout: float = 240) -> list[float]:
    """Run the workspace's federation to the end; the global accuracy of every round."""
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=timeout)
    logs = "\n".join(federation.log_text(r) for r in ("aggregator", "site-1", "site-2"))
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, logs[-6000:]
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    return [s["tasks"]["validate_global"]["accuracy"] for s in summaries]


@pytest.mark.slow
@pytest.mark.parametrize(("template", "rounds", "target", "module"), CASES, ids=[c[0] for c in CASES])
def test_template_federation_improves(
    template: str, rounds: int, target: float, module: str, tmp_path: Path
) -> None:
    importlib.import_module(module)  # a missing extra fails here, naming it, not in a child
    started = time.perf_counter()
    workspace = make_workspace(tmp_path, template, collaborators=2, rounds=rounds)
    accuracy = run_federation(workspace)
    print(f"{template}: accuracy {accuracy} in {time.perf_counter() - started:.1f}s")
    assert len(accuracy) == rounds + 1  # the initial model, then every round's result
    assert accuracy[-1] >= target > accuracy[0]
