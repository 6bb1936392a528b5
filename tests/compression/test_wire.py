"""Compressed updates on the wire: collaborators send encoded deltas, the aggregator decodes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.simulation import Recorder, plain_workspace

from bastion.aggregator.engine import Aggregator
from bastion.compression.pipeline import build_pipeline
from bastion.compression.wire import UpdateEncoder, decode_update
from bastion.errors import UpdateRejected
from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.inprocess import InProcessClient, InProcessFederation
from bastion.spec.compression import CompressionSpec
from bastion.tensors import Weights, total_bytes

TOPK_8BIT = {"stages": [{"stage": "topk", "fraction": 0.25}, {"stage": "quantize8"}]}


def _spec(raw: dict[str, Any]) -> CompressionSpec:
    return CompressionSpec.model_validate(raw)


def test_decoded_update_is_global_plus_the_coded_delta() -> None:
    rng = np.random.default_rng(0)
    global_weights = {
        "w": rng.normal(size=(40, 10)).astype(np.float32),
        "steps": np.array([7], dtype=np.int64),
    }
    local = {
        "w": global_weights["w"] + rng.normal(scale=0.1, size=(40, 10)).astype(np.float32),
        "steps": np.array([9], dtype=np.int64),
    }
    spec = _spec({"stages": [{"stage": "float16"}], "error_feedback": False})
    payload = UpdateEncoder(spec).encode(local, global_weights, round_number=1)
    assert payload["w::values"].dtype == np.float16 and "steps::raw" in payload
    model = decode_update(build_pipeline(spec), payload, global_weights, round_number=1)
    assert model["w"].dtype == np.float32 and model["steps"].tolist() == [9]
    # float16 rounds the *delta* (about 0.1), not the weights: error ~ 1e-4, not 1e-3.
    np.testing.assert_allclose(model["w"], local["w"], atol=2e-4)


def test_error_feedback_carries_what_topk_dropped_into_the_next_round() -> None:
    global_weights = {"w": np.zeros(100, dtype=np.float64)}
    step = {"w": np.linspace(0.01, 1.0, 100)}
    spec = _spec({"stages": [{"stage": "topk", "fraction": 0.1}]})
    encoder = UpdateEncoder(spec)
    sent = np.zeros(100)
    for round_number in range(1, 21):
        payload = encoder.encode(step, global_weights, round_number)
        sent += decode_update(build_pipeline(spec), payload, global_weights, round_number)["w"]
    # 20 rounds of the same delta: what arrived adds up to 20 deltas minus one residual.
    assert encoder.feedback is not None
    np.testing.assert_allclose(sent + encoder.feedback.residual["w"], 20 * step["w"])
    assert np.count_nonzero(sent) > 10  # small coordinates got through in later rounds


class TamperingClient(InProcessClient):
    """Sends a compressed payload whose indices point outside the tensor."""

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        if weights is not None:
            weights = dict(weights)
            name = next(n for n in weights if n.endswith("::indices"))
            weights[name] = weights[name] + np.uint32(1_000_000)
        return super().send_result(round_number, task, example_count, metrics, weights)


def test_a_federation_trains_on_compressed_updates(tmp_path: Path) -> None:
    workspace = plain_workspace(
        tmp_path, collaborators=3, rounds=4, plan_changes={"compression": TOPK_8BIT}
    )
    recorder = Recorder()
    federation = InProcessFederation(workspace, client_factory=recorder.client)
    federation.run()

    model = federation.aggregator.model
    for sent in recorder.updates(1):
        assert sent.weights is not None
        assert set(sent.weights) == {
            f"{name}::{part}" for name in model for part in ("values", "indices", "range")
        }
        assert sent.weights[f"{next(iter(model))}::values"].dtype == np.uint8
        # A quarter of the values at 1 byte plus 4-byte indices: about a third of float32.
        assert total_bytes(sent.weights) < total_bytes(model) / 3
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    assert not [r for r in records if r["event"] == "rejected"]
    accuracy = [r["tasks"]["validate_global"]["accuracy"] for r in round_summaries(records)]
    assert accuracy[-1] > accuracy[0] + 0.3  # digits: from chance to a trained model


def test_a_malformed_compressed_update_is_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    workspace = plain_workspace(
        tmp_path, collaborators=3, rounds=1, plan_changes={"compression": TOPK_8BIT}
    )

    def client(aggregator: Aggregator, name: str) -> InProcessClient:
        cls = TamperingClient if name == "site-2" else InProcessClient
        return cls(aggregator, name)

    InProcessFederation(workspace, client_factory=client).run()
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    rejected = [r for r in records if r["event"] == "rejected"]
    assert [r["collaborator"] for r in rejected] == ["site-2"]
    assert "indices out of range" in rejected[0]["reason"]
    first = next(r for r in records if r["event"] == "round" and r["round"] == 1)
    assert first["accepted"] == 2


def test_decode_refuses_a_payload_of_another_pipeline() -> None:
    global_weights = {"w": np.zeros(10, dtype=np.float32)}
    payload = UpdateEncoder(_spec({"stages": [{"stage": "float16"}]})).encode(
        {"w": np.ones(10, dtype=np.float32)}, global_weights, 1
    )
    with pytest.raises(UpdateRejected, match="does not match pipeline"):
        decode_update(build_pipeline(_spec(TOPK_8BIT)), payload, global_weights, 1)
