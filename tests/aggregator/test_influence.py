"""One site cannot take over FedAvg or the metrics (issue 15, M2), over real mTLS."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from support.chunks import to_chunk
from support.servers import served_aggregator
from support.workspaces import make_workspace

from bastion.framing import iter_frames
from bastion.metrics.log import read_metrics, round_summaries
from bastion.tensors import Weights, all_finite
from bastion.transport import bastion_pb2 as pb

TRAIN_ONLY = {"tasks": [{"name": "train", "kind": "train"}]}
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _messages(weights: Weights, count: int, metrics: dict[str, float]) -> list[pb.ResultChunk]:
    header = pb.ResultHeader(round=1, task="train", example_count=count, metrics=metrics)
    return [pb.ResultChunk(header=header)] + [
        pb.ResultChunk(tensor=to_chunk(f)) for f in iter_frames(weights, 4096)
    ]


@pytest.mark.parametrize(
    ("attack", "count", "metrics", "reason"),
    [
        ("10^12 examples, float32 max", 10**12, {"loss": 0.1}, "exceeds the plan's cap"),
        ("float32 max within the count cap", 1000, {"loss": 0.1}, "from the global model"),
        ("accuracy 1e30", 1000, {"accuracy": 1e30}, "outside [0, 1]"),
    ],
)
def test_one_site_cannot_take_over_the_model_or_metrics(
    tmp_path: Path, attack: str, count: int, metrics: dict[str, float], reason: str
) -> None:
    workspace = make_workspace(tmp_path, collaborators=3, rounds=1, plan_changes=TRAIN_ONLY)
    with served_aggregator(workspace) as served:
        model = dict(served.aggregator.model)
        stubs = {name: served.stub(name) for name in ("site-1", "site-2", "site-3")}
        for _, stub in stubs.values():
            stub.GetTasks(pb.TasksRequest(plan_hash=served.plan.canonical_hash()), timeout=10)
        hostile = {k: np.full_like(v, FLOAT32_MAX) for k, v in model.items()}
        if "accuracy" in metrics:
            hostile = {k: v + 0.5 for k, v in model.items()}
        ack = stubs["site-1"][1].SendResult(iter(_messages(hostile, count, metrics)), timeout=10)
        assert not ack.accepted and reason in ack.reason, ack.reason
        honest = {k: v + 1.0 for k, v in model.items()}
        for name in ("site-2", "site-3"):
            good = _messages(honest, 100, {"accuracy": 0.5})
            assert stubs[name][1].SendResult(iter(good), timeout=10).accepted
        assert served.aggregator.finished.wait(10)
        final = served.aggregator.model
        for channel, _ in stubs.values():
            channel.close()
    assert all(all_finite(a) for a in final.values())
    np.testing.assert_allclose(final["w"], model["w"] + 1.0, rtol=1e-6)
    summary = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))[0]
    assert "site-1" in summary["rejected"]
    assert all(math.isfinite(v) for task in summary["tasks"].values() for v in task.values())
    print(f"\n{attack}: refused ({ack.reason}); global model max {float(final['w'].max()):.3f}")


def test_clip_bounds_the_update_instead(tmp_path: Path) -> None:
    changes = {**TRAIN_ONLY, "aggregation": {"max_update_norm": 1.0, "norm_bound": "clip"}}
    workspace = make_workspace(tmp_path, collaborators=1, rounds=1, plan_changes=changes)
    with served_aggregator(workspace) as served:
        model = dict(served.aggregator.model)
        channel, stub = served.stub("site-1")
        stub.GetTasks(pb.TasksRequest(plan_hash=served.plan.canonical_hash()), timeout=10)
        hostile = {k: np.full_like(v, 1e30) for k, v in model.items()}
        assert stub.SendResult(iter(_messages(hostile, 100, {})), timeout=10).accepted
        assert served.aggregator.finished.wait(10)
        final = served.aggregator.model
        channel.close()
    moved = math.sqrt(
        sum(float(((final[k] - model[k]).astype(np.float64) ** 2).sum()) for k in model)
    )
    assert moved == pytest.approx(1.0, rel=1e-3)
