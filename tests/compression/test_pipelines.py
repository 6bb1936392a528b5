"""Which pipelines compose, error feedback, and compression in front of secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.compression import (
    BFloat16,
    ErrorFeedback,
    Float16,
    IncompatibleCompression,
    Pipeline,
    Quantize8,
    RandomK,
    TopK,
    check_secure_aggregation,
    compression_ratio,
)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([TopK(0.1), RandomK(0.5)], "sparsifies twice"),
        ([Float16(), Quantize8()], "codes values twice"),
        ([Quantize8(), TopK(0.1)], "codes values before sparsifying"),
        (["gzip"], "not a compression stage"),
    ],
)
def test_pipelines_that_cannot_compose_are_refused(stages: list, message: str) -> None:
    with pytest.raises(IncompatibleCompression, match=message):
        Pipeline(stages)


def test_topk_with_secure_aggregation_is_refused() -> None:
    with pytest.raises(IncompatibleCompression, match="different coordinates at each client"):
        check_secure_aggregation(Pipeline([TopK(0.1), Float16()]))
    with pytest.raises(IncompatibleCompression):
        Pipeline([TopK(0.1)]).secure_aggregation_payload({"w": np.ones(4)}, 0)


@pytest.mark.parametrize(
    "stages",
    [[], [Float16()], [BFloat16()], [Quantize8()], [RandomK(0.3)], [RandomK(0.3), Float16()]],
)
def test_secure_aggregation_compatible_pipelines_sum_like_their_decodes(stages: list) -> None:
    """Summing payloads then decoding once equals decoding each client and summing."""
    check_secure_aggregation(Pipeline(stages))
    pipeline = Pipeline(stages)
    rng = np.random.default_rng(1)
    like = {"w": np.zeros((6, 5), dtype=np.float32)}
    deltas = [{"w": rng.normal(size=(6, 5)).astype(np.float32)} for _ in range(4)]
    payloads = [pipeline.secure_aggregation_payload(d, 3) for d in deltas]
    shapes = {n: a.shape for n, a in pipeline.secure_aggregation_like(like).items()}
    assert all({n: a.shape for n, a in p.items()} == shapes for p in payloads)
    summed = {"w": np.sum([p["w"] for p in payloads], axis=0)}
    once = pipeline.decode_secure_sum(summed, like, 3)["w"]
    each = sum(pipeline.decode_secure_sum(p, like, 3)["w"] for p in payloads)
    np.testing.assert_allclose(once, each, atol=1e-12)
    if not stages:
        np.testing.assert_allclose(once, sum(d["w"] for d in deltas), atol=1e-5)


def test_randomk_shortens_the_secure_aggregation_vector() -> None:
    like = {"w": np.zeros(1000, dtype=np.float32)}
    assert Pipeline([RandomK(0.05)]).secure_aggregation_like(like)["w"].size == 50


def test_error_feedback_carries_what_topk_dropped() -> None:
    compressor = ErrorFeedback(Pipeline([TopK(0.25)]))
    delta = {"w": np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float32)}
    like = delta
    sent = []
    for round_number in range(4):
        payload = compressor.encode(delta, round_number)
        sent.append(compressor.pipeline.decode(payload, like, round_number)["w"])
    # Round 0 sends the 4; the dropped 3, 2, 1 accumulate and go out in later rounds.
    np.testing.assert_allclose(sent[0], [4, 0, 0, 0])
    np.testing.assert_allclose(sent[1], [0, 6, 0, 0])
    total_sent = np.sum(sent, axis=0)
    total_true = 4 * delta["w"]
    np.testing.assert_allclose(total_sent + compressor.residual["w"], total_true)
    assert payload["w::values"].dtype == np.float32


def test_error_feedback_beats_plain_topk_on_a_constant_signal() -> None:
    rng = np.random.default_rng(2)
    delta = {"w": rng.normal(size=200)}
    with_memory, without = ErrorFeedback(Pipeline([TopK(0.05)])), Pipeline([TopK(0.05)])
    sum_memory = np.zeros(200)
    sum_plain = np.zeros(200)
    for round_number in range(200):
        payload = with_memory.encode(delta, round_number)
        sum_memory += with_memory.pipeline.decode(payload, delta, round_number)["w"]
        sum_plain += without.decode(without.encode(delta, round_number), delta, round_number)["w"]
    target = 200 * delta["w"]
    # Without memory 95% of the signal is lost every round; with it, only the bounded residual.
    np.testing.assert_allclose(sum_memory + with_memory.residual["w"], target)
    assert np.linalg.norm(sum_memory - target) < 0.1 * np.linalg.norm(sum_plain - target)


def test_error_feedback_on_the_secure_aggregation_path_and_checkpoint() -> None:
    compressor = ErrorFeedback(Pipeline([RandomK(0.5, seed=9)]))
    delta = {"w": np.arange(10, dtype=np.float64)}
    payload = compressor.secure_aggregation_payload(delta, 0)
    sent = compressor.pipeline.decode_secure_sum(payload, delta, 0)["w"]
    np.testing.assert_allclose(sent + compressor.residual["w"], delta["w"])
    restored = ErrorFeedback(compressor.pipeline)
    restored.load_state_dict(compressor.state_dict())
    np.testing.assert_array_equal(restored.residual["w"], compressor.residual["w"])
    with pytest.raises(Exception, match="call reset"):
        restored.encode({"w": np.zeros(3)}, 1)


def test_compression_ratio_reports_the_wire_saving() -> None:
    tensors = {"w": np.zeros(1000, dtype=np.float32)}
    payload = Pipeline([Float16()]).encode(tensors, 0)
    assert compression_ratio(payload, tensors) == pytest.approx(2.0)
