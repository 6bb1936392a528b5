"""Quantized messages both ways: plans that cannot compose are refused in one line, the model
sent to the sites is coded for training rounds only, and the aggregator decodes updates
chunk by chunk without a float64 copy of the model."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.simulation import plain_workspace
from support.workspaces import edit_plan

from bastion.aggregator.engine import Aggregator
from bastion.compression import blockwise as bw
from bastion.compression.downstream import Downlink, ModelCodec
from bastion.compression.pipeline import build_pipeline
from bastion.compression.stages import Blockwise8, NormalFloat4
from bastion.compression.wire import UpdateEncoder, decode_update
from bastion.errors import ProtocolError
from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.inprocess import InProcessClient, InProcessFederation
from bastion.spec.compression import CompressionSpec
from bastion.tensors import Weights, total_bytes
from bastion.workspace.checks import validate_workspace_plan

BOTH_WAYS = {"stages": [{"stage": "blockwise4"}], "downstream": {"stage": "nf4"}}


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {
                "secure_aggregation": {"enabled": True},
                "compression": {"stages": [{"stage": "nf4"}]},
            },
            "'nf4' scales each block of each client's update by its own factor",
        ),
        (
            {
                "compression": {
                    "stages": [{"stage": "blockwise8"}],
                    "downstream": {"stage": "topk", "fraction": 0.1},
                }
            },
            "'topk' would zero most of the model's weights",
        ),
        (
            {"compression": {"stages": [{"stage": "float16", "block_size": 64}]}},
            "stage 'float16' takes no 'block_size'",
        ),
        (
            {"compression": {"stages": [{"stage": "nf4", "block_size": 4}]}},
            "block_size",
        ),
        (
            {"compression": {"stages": [{"stage": "nf4"}, {"stage": "blockwise8"}]}},
            "codes values twice",
        ),
    ],
)
def test_plan_validation_refuses_what_cannot_compose(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    workspace = plain_workspace(tmp_path, initialize=False)
    edit_plan(workspace, changes)
    plan, problems = validate_workspace_plan(workspace)
    assert plan is None
    assert len(problems) == 1 and message in problems[0], problems
    assert "\n" not in problems[0].split("compression", 1)[-1].strip()


def test_downstream_quantization_composes_with_secure_aggregation_in_a_plan(
    tmp_path: Path,
) -> None:
    workspace = plain_workspace(tmp_path, initialize=False)
    edit_plan(
        workspace,
        {
            "secure_aggregation": {"enabled": True},
            "compression": {"stages": [{"stage": "float16"}], "downstream": {"stage": "nf4"}},
        },
    )
    plan, problems = validate_workspace_plan(workspace)
    assert problems == [] and plan is not None


def _model() -> Weights:
    rng = np.random.default_rng(0)
    return {
        "conv": rng.normal(size=(8, 3, 5, 5)).astype(np.float32),
        "half": rng.normal(size=(33,)).astype(np.float16),
        "steps": np.array([12], dtype=np.int64),
    }


@pytest.mark.parametrize("stage", [Blockwise8(), NormalFloat4(block_size=16)])
def test_the_coded_model_describes_itself_and_decodes_within_the_bound(stage) -> None:
    model = _model()
    codec = ModelCodec(stage)
    payload = codec.encode(model, round_number=3)
    assert total_bytes(payload) < total_bytes(model) / 3
    decoded = codec.decode(payload, round_number=3)
    assert list(decoded) == list(model)
    for name, array in model.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
    assert decoded["steps"].tolist() == [12]
    exact = model["conv"].astype(np.float64).reshape(-1)
    bound = bw.worst_error(exact, stage.codebook, stage.block_size)
    # float32 rounding of the decoded value adds at most half an ulp of it.
    slack = np.abs(exact) * 2.0**-24 + bound * 2.0**-23
    error = np.abs(decoded["conv"].astype(np.float64).reshape(-1) - exact)
    assert np.all(error <= bound + slack)


def test_a_malformed_coded_model_is_a_protocol_error() -> None:
    codec = ModelCodec(Blockwise8())
    payload = codec.encode(_model(), 1)
    with pytest.raises(ProtocolError, match="bad layout for 'conv'"):
        codec.decode({**payload, "conv::layout": np.zeros((1, 2), np.float32)}, 1)
    with pytest.raises(ProtocolError, match="the model from the aggregator"):
        codec.decode({k: v for k, v in payload.items() if k != "conv::scales"}, 1)


def test_the_downlink_codes_training_rounds_once_and_sends_evaluation_rounds_exact() -> None:
    downlink = Downlink.for_spec(CompressionSpec.model_validate(BOTH_WAYS))
    model = _model()
    first = downlink.payload(model, 1, ["validate", "train"])
    assert downlink.payload(model, 1, ["train"]) is first  # one coding for every site
    assert downlink.payload(model, 4, ["validate"]) is model  # the final evaluation
    assert downlink.receive(dict(model), 4, ["validate"]) == model
    assert set(downlink.receive(dict(first), 1, ["train"])) == set(model)
    assert Downlink.for_spec(None).payload(model, 1, ["train"]) is model


def test_the_aggregator_decodes_without_a_float64_copy_of_the_model() -> None:
    size = 2_000_000
    global_weights = {"w": np.zeros(size, dtype=np.float32)}
    local = {"w": np.random.default_rng(5).normal(size=size).astype(np.float32)}
    spec = CompressionSpec.model_validate({"stages": [{"stage": "blockwise8"}]})
    pipeline = build_pipeline(spec)
    payload = UpdateEncoder(spec).encode(local, global_weights, 1)
    tracemalloc.start()
    try:
        model = decode_update(pipeline, payload, global_weights, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    beyond_the_update = peak - model["w"].nbytes
    assert beyond_the_update < size * 8 / 4, beyond_the_update  # a float64 copy: 16 MB
    bound = bw.worst_error(local["w"], bw.UNIFORM8, bw.DEFAULT_BLOCK_SIZE)
    assert np.all(np.abs(model["w"] - local["w"]) <= bound * (1 + 1e-6) + 1e-7)


class ModelWatcher(InProcessClient):
    """Remembers the names of what each round's download carried."""

    seen: dict[int, set[str]] = {}

    def get_model(self, round_number: int) -> Weights:
        payload = super().get_model(round_number)
        ModelWatcher.seen[round_number] = set(payload)
        return payload


def test_a_federation_learns_with_4_bit_messages_both_ways(tmp_path: Path) -> None:
    workspace = plain_workspace(
        tmp_path, collaborators=3, rounds=3, plan_changes={"compression": BOTH_WAYS}
    )
    ModelWatcher.seen = {}

    def client(aggregator: Aggregator, name: str) -> InProcessClient:
        return ModelWatcher(aggregator, name)

    federation = InProcessFederation(workspace, client_factory=client)
    federation.run()
    model = federation.aggregator.model
    assert all(f"{n}::scales" in ModelWatcher.seen[r] for r in (1, 2, 3) for n in model)
    assert ModelWatcher.seen[4] == set(model)  # the final evaluation: the exact model
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    assert not [r for r in records if r["event"] == "rejected"]
    accuracy = [r["tasks"]["validate_global"]["accuracy"] for r in round_summaries(records)]
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy
