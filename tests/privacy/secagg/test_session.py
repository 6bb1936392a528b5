"""What both sides derive for a session, the update codec, and a collaborator's own checks of
the session the aggregator announces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from support.simulation import plain_workspace

from bastion.collaborator.secure_update import SecureAggregation, SecureUpdate
from bastion.errors import ProtocolError
from bastion.plan import load_plan
from bastion.privacy.dp.clipping import clip_by_global_norm, global_norm
from bastion.privacy.errors import QuantizationOverflow, SecAggError
from bastion.privacy.secagg.config import session_id_for
from bastion.privacy.secagg.identity import simulated_identities
from bastion.privacy.secagg.session import (
    SessionInfo,
    Step,
    neighbours_for,
    quantizer_for,
    session_config,
    threshold_for,
)
from bastion.privacy.secagg.update import UpdateCodec
from bastion.protocol import StageReply
from bastion.spec.secure_aggregation import SecureAggregationSpec


def test_session_info_round_trips_and_refuses_garbage() -> None:
    info = SessionInfo(3, 1, ("a", "b", "c"), 0.25)
    assert SessionInfo.from_bytes(info.to_bytes()) == info
    with pytest.raises(ProtocolError):
        SessionInfo.from_bytes(info.to_bytes()[:-3])
    with pytest.raises(ProtocolError):
        SessionInfo.from_bytes(SessionInfo(3, 1, ("a",), math.nan).to_bytes())


@pytest.mark.parametrize("holders", range(2, 40))
@pytest.mark.parametrize("fraction", [0.5, 0.66, 0.9])
def test_threshold_is_always_a_strict_majority(holders: int, fraction: float) -> None:
    t = threshold_for(SecureAggregationSpec(threshold_fraction=fraction), holders)
    assert holders < 2 * t <= 2 * holders


def test_secagg_plus_degree_falls_back_to_every_pair_in_small_rounds() -> None:
    spec = SecureAggregationSpec(neighbours=4)
    assert neighbours_for(spec, 5) is None
    assert neighbours_for(spec, 6) == 4
    config = session_config(spec, [f"c{i}" for i in range(10)], 2, 0, 8, "fed")
    assert config.holder_count == 5 and config.threshold == 3


def test_sessions_are_separated_by_attempt_and_too_small_ones_refused() -> None:
    assert session_id_for("fed", 4, 0) != session_id_for("fed", 4, 1)
    with pytest.raises(Exception, match="min_clients"):
        session_config(SecureAggregationSpec(min_clients=4), ["a", "b", "c"], 1, 0, 8, "fed")


@pytest.mark.parametrize("modulus_bits", [32, 64])
@pytest.mark.parametrize("n", [2, 3, 17, 1000])
def test_default_precision_is_the_most_the_ring_holds(n: int, modulus_bits: int) -> None:
    spec = SecureAggregationSpec(modulus_bits=modulus_bits)  # type: ignore[arg-type]
    quantizer = quantizer_for(spec, n, 1.0)
    assert quantizer.capacity >= n
    # One more bit overflows the ring for n inputs (or is not a valid width at all).
    with pytest.raises((QuantizationOverflow, SecAggError, ValueError)):
        quantizer_for(
            SecureAggregationSpec(modulus_bits=modulus_bits, bits=quantizer.bits + 1),  # type: ignore[arg-type]
            n,
            1.0,
        )


def test_weighted_codec_sums_weights_and_updates_within_the_bound() -> None:
    rng = np.random.default_rng(0)
    like = {"w": np.zeros((5, 3), np.float32), "b": np.zeros(3, np.float32)}
    spec = SecureAggregationSpec(max_weight=1000)
    codec = UpdateCodec(like, quantizer_for(spec, 4, 0.5), "examples", spec.max_weight)
    deltas = [{k: rng.normal(0, 0.3, v.shape) for k, v in like.items()} for _ in range(4)]
    weights = [10, 250, 999, 40]
    total = np.zeros(codec.vector_length, codec.quantizer.dtype)
    clipped = 0
    for delta, weight in zip(deltas, weights, strict=True):
        vector, count = codec.encode(delta, weight)
        total += vector
        clipped += count
    result = codec.decode(total, 4)
    assert result.total_weight == sum(weights)
    for key in like:
        scaled = [
            np.clip(w / 1000 * d[key], -0.5, 0.5) * 1000
            for d, w in zip(deltas, weights, strict=True)
        ]
        assert np.max(np.abs(result.delta_sum[key] - sum(scaled))) <= result.error_bound + 1e-9
    assert clipped == sum(
        int(np.count_nonzero(np.abs(w / 1000 * d[k]) > 0.5))
        for d, w in zip(deltas, weights, strict=True)
        for k in like
    )


def test_unit_codec_counts_unclipped_updates_and_keeps_norms_within_the_clip() -> None:
    rng = np.random.default_rng(1)
    like = {"w": np.zeros(2000, np.float32)}
    spec = SecureAggregationSpec(bits=12)  # coarse on purpose: rounding matters here
    codec = UpdateCodec(like, quantizer_for(spec, 3, 1.0), "unit", spec.max_weight)
    clip = 0.5
    total = np.zeros(codec.vector_length, codec.quantizer.dtype)
    for scale, within in [(0.001, True), (1.0, False), (0.002, True)]:
        delta = {"w": rng.normal(0, scale, 2000)}
        clipped_delta, norm = clip_by_global_norm(delta, clip - codec.norm_slack())
        assert (norm <= clip) is within
        vector, _ = codec.encode(clipped_delta, 123.0, within)
        alone = codec.decode(vector, 1)
        assert global_norm(alone.delta_sum) <= clip  # rounding cannot push it past the clip
        total += vector
    result = codec.decode(total, 3)
    assert result.total_weight == 3 and result.unclipped == 2


# ---------------------------------------------------------------- collaborator-side checks


class _Announcer:
    """A transport whose aggregator announces ``info`` and accepts whatever is sent."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.sent: list[tuple[Step, bytes]] = []

    def secagg_fetch(self, round_number: int, attempt: int, step: Step) -> StageReply:
        return StageReply("ready", self.info.to_bytes())

    def secagg_send(self, round_number, attempt, step, payload, metrics):  # noqa: ANN001, ANN201
        self.sent.append((step, payload))
        return True, ""


@pytest.fixture(scope="module")
def secure_plan(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("plan")
    changes = {"secure_aggregation": {"min_clients": 3}}
    return load_plan(plain_workspace(Path(root), collaborators=4, plan_changes=changes))


@pytest.mark.parametrize(
    ("participants", "attempt", "message"),
    [
        (("site-1", "site-2", "mallory"), 0, "not on the plan's roster"),
        (("site-2", "site-3", "site-4"), 0, "not among the session's participants"),
        (("site-1", "site-2"), 0, "min_clients"),
        (("site-1", "site-2", "site-3"), 0, "already joined"),
    ],
)
def test_a_collaborator_checks_the_announced_session_and_says_why_it_leaves(
    secure_plan, participants: tuple[str, ...], attempt: int, message: str
) -> None:
    identities, _ = simulated_identities(secure_plan.collaborator_names())
    setup = SecureAggregation(secure_plan, identities["site-1"])
    if message == "already joined":
        setup.attempts[1] = 0
    transport = _Announcer(SessionInfo(1, attempt, participants))
    model = {"w": np.zeros(4, np.float32)}
    update = SecureUpdate("site-1", setup, transport, 1, model, model, 10, {})
    assert update.step() is None
    assert update.error is not None and message in update.error
    assert [step for step, _ in transport.sent] == [Step.ABORT]
    assert message in transport.sent[0][1].decode()


def test_masked_input_size_is_counted_without_serializing() -> None:
    from bastion.privacy.secagg.messages import MaskedInput

    message = MaskedInput("site-é", np.arange(1000, dtype=np.uint32))
    assert message.encoded_size() == len(message.to_bytes())
