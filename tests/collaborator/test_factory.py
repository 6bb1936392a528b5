"""build_collaborator: the update path, local DP and runner abilities chosen once from the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.simulation import plain_workspace

from bastion.collaborator.factory import choose_update_path
from bastion.collaborator.local_privacy import NoLocalPrivacy, site_privacy
from bastion.collaborator.update_path import Handover, SendCompressed, SendSecurely, SendWeights
from bastion.compression.wire import UpdateEncoder
from bastion.errors import PlanError
from bastion.plan import load_plan
from bastion.runners.base import KeepsClientState, LocalPrivacy, RoundAware, TaskResult
from bastion.tensors import Weights

TOPK = {"stages": [{"stage": "topk", "fraction": 0.5}]}


class Channel:
    """Records what reaches ``send_result``."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, Weights | None]] = []

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        self.sent.append((round_number, task, weights))
        return True, ""


def _plan(tmp_path: Path, **changes: Any):  # noqa: ANN202 - a Plan
    return load_plan(plain_workspace(tmp_path, collaborators=3, rounds=1, plan_changes=changes))


def test_a_plain_plan_sends_the_weights(tmp_path: Path) -> None:
    channel = Channel()
    path = choose_update_path(_plan(tmp_path), "site-1", channel, None, None, ())  # type: ignore[arg-type]
    assert isinstance(path, SendWeights)
    weights = {"w": np.ones(3)}
    handover = path.hand_in(1, "train", TaskResult(5), {"w": np.zeros(3)}, weights)
    assert handover == Handover(True, "")
    assert channel.sent == [(1, "train", weights)]


def test_a_compressing_plan_sends_the_encoded_delta_and_reuses_an_encoder(tmp_path: Path) -> None:
    plan = _plan(tmp_path, compression=TOPK)
    channel = Channel()
    fresh = choose_update_path(plan, "site-1", channel, None, None, ())  # type: ignore[arg-type]
    assert isinstance(fresh, SendCompressed)
    assert plan.compression is not None
    kept = UpdateEncoder(plan.compression)
    reused = choose_update_path(plan, "site-1", channel, None, kept, ())  # type: ignore[arg-type]
    assert isinstance(reused, SendCompressed) and reused.encoder is kept
    reused.hand_in(1, "train", TaskResult(5), {"w": np.zeros(4)}, {"w": np.arange(4.0)})
    [(_, _, payload)] = channel.sent
    assert payload is not None and "w" not in payload  # an encoded delta, not the model


def test_secure_aggregation_needs_the_sites_standing(tmp_path: Path) -> None:
    plan = _plan(tmp_path, secure_aggregation={})
    with pytest.raises(PlanError, match="no signing identity"):
        choose_update_path(plan, "site-1", Channel(), None, None, ())  # type: ignore[arg-type]


def test_secure_aggregation_refuses_a_transport_without_its_stages(tmp_path: Path) -> None:
    from bastion.collaborator.secure_update import SecureAggregation
    from bastion.errors import BastionError
    from bastion.privacy.secagg.identity import simulated_identities

    plan = _plan(tmp_path, secure_aggregation={})
    identities, _ = simulated_identities(plan.collaborator_names())
    name = plan.collaborator_names()[0]
    standing = SecureAggregation(plan, identities[name])
    path = choose_update_path(plan, name, Channel(), standing, None, ())  # type: ignore[arg-type]
    assert isinstance(path, SendSecurely)
    with pytest.raises(BastionError, match="cannot do secure aggregation"):
        path.hand_in(1, "train", TaskResult(5), {"w": np.zeros(2)}, {"w": np.ones(2)})


def test_a_plan_without_local_dp_has_no_guard(tmp_path: Path) -> None:
    assert isinstance(site_privacy(_plan(tmp_path), "site-1", object()), NoLocalPrivacy)


def test_the_torch_runner_has_the_optional_abilities() -> None:
    torch = pytest.importorskip("torch")
    from bastion.runners.torch import TorchRunner

    runner = TorchRunner(torch.nn.Linear(2, 2), threads=1)
    assert isinstance(runner, RoundAware)
    assert isinstance(runner, KeepsClientState)
    assert isinstance(runner, LocalPrivacy) and runner.local_dp is None
    assert not isinstance(object(), RoundAware | KeepsClientState | LocalPrivacy)
