"""A bad result is refused with a logged reason, and the round completes with the others."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support.chunks import assemble, to_chunk
from support.servers import served_aggregator
from support.workspaces import make_workspace

from bastion.framing import Frame, iter_frames
from bastion.metrics.log import read_metrics, round_summaries
from bastion.tensors import Weights
from bastion.transport import bastion_pb2 as pb

TRAIN_ONLY = {"tasks": [{"name": "train", "kind": "train"}]}


def _result_messages(round_number: int, weights: Weights, count: int = 100) -> list[pb.ResultChunk]:
    header = pb.ResultHeader(
        round=round_number, task="train", example_count=count, metrics={"loss": 1.0}
    )
    return [pb.ResultChunk(header=header)] + [
        pb.ResultChunk(tensor=to_chunk(f)) for f in iter_frames(weights, chunk_bytes=4096)
    ]


def _raw_frames_messages(frames: list[Frame]) -> list[pb.ResultChunk]:
    header = pb.ResultHeader(round=1, task="train", example_count=100, metrics={})
    return [pb.ResultChunk(header=header)] + [pb.ResultChunk(tensor=to_chunk(f)) for f in frames]


BAD_UPDATES: dict[str, Callable[[Weights], Weights]] = {
    "wrong names": lambda w: {"weights": w["w"], "b": w["b"]},
    "missing tensor": lambda w: {"w": w["w"]},
    "wrong shape": lambda w: {"w": w["w"][:, :5].copy(), "b": w["b"]},
    "wrong dtype": lambda w: {"w": w["w"].astype(np.float64), "b": w["b"]},
    "NaN": lambda w: {
        "w": np.where(np.arange(w["w"].size).reshape(w["w"].shape) == 7, np.nan, w["w"]).astype(
            np.float32
        ),
        "b": w["b"],
    },
    "infinity": lambda w: {"w": w["w"], "b": np.full_like(w["b"], np.inf)},
}

EXPECTED_REASON = {
    "wrong names": "missing tensors ['w']",
    "missing tensor": "missing tensors ['b']",
    "wrong shape": "has shape (64, 5), expected (64, 10)",
    "wrong dtype": "has dtype float64, expected float32",
    "NaN": "NaN or infinite",
    "infinity": "NaN or infinite",
}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, collaborators=3, rounds=1, plan_changes=TRAIN_ONLY)


@pytest.mark.parametrize("kind", sorted(BAD_UPDATES))
def test_bad_update_is_refused_and_round_completes(kind: str, workspace: Path) -> None:
    with served_aggregator(workspace) as served:
        stubs = {name: served.stub(name) for name in ("site-1", "site-2", "site-3")}
        global_model = assemble(
            stubs["site-1"][1].GetModel(pb.ModelRequest(round=1), timeout=10), 1 << 30
        )
        bad = BAD_UPDATES[kind](global_model)
        ack = stubs["site-1"][1].SendResult(iter(_result_messages(1, bad)), timeout=10)
        assert not ack.accepted
        assert EXPECTED_REASON[kind] in ack.reason
        honest = {n: v + 1.0 for n, v in global_model.items()}
        for name in ("site-2", "site-3"):
            assert stubs[name][1].SendResult(iter(_result_messages(1, honest)), timeout=10).accepted
        assert served.aggregator.finished.wait(10)
        for channel, _ in stubs.values():
            channel.close()
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    rejected = [r for r in records if r["event"] == "rejected"]
    assert [(r["collaborator"], r["round"]) for r in rejected] == [("site-1", 1)]
    assert EXPECTED_REASON[kind] in rejected[0]["reason"]
    round_one = round_summaries(records)[0]
    assert round_one["accepted"] == 2 and "site-1" in round_one["rejected"]
    # Only the honest updates were averaged.
    final = served.aggregator.model
    np.testing.assert_allclose(final["w"], global_model["w"] + 1.0, rtol=1e-6)


def test_malformed_frames_are_refused_without_allocating(workspace: Path) -> None:
    huge = Frame("w", "float32", (1 << 20, 1 << 20), 0, b"\x00" * 16)  # claims 4 TiB
    wrong_offset = [Frame("w", "float32", (64, 10), 8, b"\x00" * 8)]
    with served_aggregator(workspace) as served:
        channel, stub = served.stub("site-1")
        ack = stub.SendResult(iter(_raw_frames_messages([huge])), timeout=10)
        assert not ack.accepted and "larger than the limit" in ack.reason
        channel.close()
        channel, stub = served.stub("site-2")
        ack = stub.SendResult(iter(_raw_frames_messages(wrong_offset)), timeout=10)
        assert not ack.accepted and "offset 8, expected 0" in ack.reason
        channel.close()
        assert served.aggregator.current_round == 1  # the round waits for site-3
