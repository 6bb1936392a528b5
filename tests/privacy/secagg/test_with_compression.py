"""Compression in front of secure aggregation: RandomK payloads, weighted, summed under masks."""

from __future__ import annotations

import numpy as np

from bastion.compression import ErrorFeedback, Float16, Pipeline, RandomK
from bastion.privacy.secagg import FixedPointQuantizer, WeightedUpdateEncoder
from bastion.privacy.secagg.protocol import Stage

from .driver import make_federation, run_round


def test_randomk_payloads_sum_under_masks_and_decode_once() -> None:
    rng = np.random.default_rng(5)
    like = {"w": np.zeros((20, 10), dtype=np.float32), "b": np.zeros(10, dtype=np.float32)}
    pipeline = Pipeline([RandomK(0.25, seed=1), Float16()])
    federation = make_federation(6)
    round_number = 7
    compressors = {n: ErrorFeedback(pipeline) for n in federation.names}
    deltas = {
        n: {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in like.items()}
        for n in federation.names
    }
    weights = {n: float(rng.integers(10, 100)) for n in federation.names}
    payloads = {
        n: compressors[n].secure_aggregation_payload(deltas[n], round_number)
        for n in federation.names
    }
    encoder = WeightedUpdateEncoder(
        pipeline.secure_aggregation_like(like), FixedPointQuantizer(clip=1.0, bits=24), 100.0
    )
    assert encoder.vector_length == 50 + 3 + 1  # a quarter of the coordinates, plus the weight
    inputs = {n: encoder.encode(payloads[n], weights[n]) for n in federation.names}
    config = federation.config(4, encoder.vector_length)
    state = run_round(federation, config, inputs, {Stage.UNMASKING: {federation.names[0]}})
    assert state.result is not None
    summed = encoder.decode(state.result.total, len(state.result.contributors))
    average = pipeline.decode_secure_sum(summed.average(), like, round_number)
    sent = {
        n: pipeline.decode_secure_sum(payloads[n], like, round_number) for n in federation.names
    }
    total_weight = sum(weights.values())
    for name in like:
        expected = sum(weights[n] * sent[n][name] for n in federation.names) / total_weight
        np.testing.assert_allclose(average[name], expected, atol=1e-5)
