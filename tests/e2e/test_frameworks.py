"""Every framework's template federates over mTLS: 2 collaborators, real processes, real data.

Each test creates a workspace with ``bastion workspace create``'s code path, issues real
certificates, signs it, starts the aggregator and both collaborators as OS processes,
and checks that the global model's validation accuracy improves from the initial
model's. MXNet's template runs in its own venv: tests/e2e/test_frameworks_mxnet.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.federations import run_template_federation

#: The transformers case stays small on 2 CPU cores: one local epoch per round.
SMALL_TRANSFORMERS: dict[str, Any] = {
    "tasks": [
        {"name": "validate_global", "kind": "validate", "model": "global"},
        {"name": "train", "kind": "train", "args": {"epochs": 1, "batch_size": 16}},
    ],
    "task_runner": {"args": {"lr": 0.001, "max_length": 32}},
}

#: template, adapter module, distribution, rounds, accuracy the final model must reach, plan edits
CASES: list[tuple[str, str, str, int, float, dict[str, Any] | None]] = [
    ("numpy_logreg_digits", "bastion.runners.numpy", "numpy", 3, 0.80, None),
    ("lightning_mlp_digits", "bastion.runners.lightning", "lightning", 3, 0.85, None),
    ("keras_mlp_digits", "bastion.runners.keras", "keras", 3, 0.85, None),
    ("jax_mlp_mnist", "bastion.runners.jax", "jax", 3, 0.90, None),
    ("sklearn_sgd_mnist", "bastion.runners.sklearn", "scikit-learn", 3, 0.85, None),
    # 12 classes: chance is 0.08; the frozen encoder plus a federated head and top layer.
    (
        "transformers_minilm_text",
        "bastion.runners.transformers",
        "transformers",
        3,
        0.40,
        SMALL_TRANSFORMERS,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("template", "adapter", "distribution", "rounds", "target", "changes"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_template_federation_improves(
    template: str,
    adapter: str,
    distribution: str,
    rounds: int,
    target: float,
    changes: dict[str, Any] | None,
    tmp_path: Path,
) -> None:
    run = run_template_federation(tmp_path, template, adapter, distribution, rounds, changes)
    assert len(run.accuracy) == rounds + 1  # the initial model, then every round's result
    assert run.accuracy[-1] >= target > run.accuracy[0]
