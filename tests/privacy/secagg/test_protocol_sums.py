"""With secure aggregation on, the server recovers the plain sum despite dropouts at any stage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.privacy.errors import SecAggAborted
from bastion.privacy.secagg.protocol import SecAggConfig, Stage
from bastion.privacy.secagg.quantize import FixedPointQuantizer

from .driver import make_federation, new_round, play, run_round

STAGES = list(Stage)
VECTOR = 24


@st.composite
def rounds_with_dropouts(draw: st.DrawFn, secagg_plus: bool, too_many: bool) -> dict:
    n = draw(st.integers(6 if secagg_plus else 3, 12))
    degree = draw(st.sampled_from(range(2, n - 2, 2))) if secagg_plus else None
    holders = n if degree is None else degree + 1
    threshold = draw(st.integers(holders // 2 + 1, holders))
    tolerated = holders - threshold
    # Only drawn for the complete graph: more than n - t dropouts must abort.
    count = draw(st.integers(tolerated + 1, n) if too_many else st.integers(0, tolerated))
    seed = draw(st.integers(0, 2**32 - 1))
    return {"n": n, "degree": degree, "threshold": threshold, "dropouts": count, "seed": seed}


def _scripted(params: dict) -> tuple:
    rng = np.random.default_rng(params["seed"])
    federation = make_federation(params["n"])
    config = federation.config(params["threshold"], VECTOR, neighbours=params["degree"])
    quantizer = FixedPointQuantizer(clip=2.0, bits=16, modulus_bits=32)
    floats = {name: rng.uniform(-2.5, 2.5, VECTOR) for name in federation.names}
    inputs = {name: quantizer.quantize(x) for name, x in floats.items()}
    dropped = rng.choice(federation.names, size=params["dropouts"], replace=False)
    drop_before: dict[Stage, set[str]] = {}
    for name in dropped:
        drop_before.setdefault(STAGES[int(rng.integers(len(STAGES)))], set()).add(str(name))
    return federation, config, quantizer, floats, inputs, drop_before


def _check_sum(params: dict) -> None:
    federation, config, quantizer, floats, inputs, drop_before = _scripted(params)
    state = run_round(federation, config, inputs, drop_before)
    assert state.result is not None
    contributors = state.result.contributors
    assert list(contributors) == state.senders[Stage.MASKED_INPUT]
    recovered = quantizer.dequantize_sum(state.result.total, len(contributors))
    plain = sum(np.clip(floats[name], -2.0, 2.0) for name in contributors)
    assert np.max(np.abs(recovered - plain)) <= quantizer.error_bound(len(contributors)) + 1e-9


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds_with_dropouts(secagg_plus=False, too_many=False))
def test_complete_graph_recovers_plain_sum_with_up_to_n_minus_t_dropouts(params: dict) -> None:
    _check_sum(params)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds_with_dropouts(secagg_plus=True, too_many=False))
def test_secagg_plus_recovers_plain_sum_with_tolerated_dropouts(params: dict) -> None:
    _check_sum(params)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds_with_dropouts(secagg_plus=False, too_many=True))
def test_more_than_n_minus_t_dropouts_abort_without_unmasking(params: dict) -> None:
    federation, config, _, _, inputs, drop_before = _scripted(params)
    state = new_round(federation, config)
    with pytest.raises(SecAggAborted):
        play(state, inputs, drop_before)
    held = state.server.held_secrets().values()
    assert not any(h.self_mask_recovered or h.key_recovered for h in held)
    assert all(h.self_mask_shares == 0 and h.key_shares == 0 for h in held)


def test_abort_leaves_no_secret_reconstructed() -> None:
    federation = make_federation(7)
    config = federation.config(threshold=5, vector_length=VECTOR)
    inputs = {n: np.zeros(VECTOR, dtype=np.uint32) for n in federation.names}
    # Everyone sends masked input; only 4 < t answer the unmasking request.
    drop = {Stage.UNMASKING: set(federation.names[:3])}
    with pytest.raises(SecAggAborted, match="nothing was unmasked"):
        run_round(federation, config, inputs, drop)


def test_exactly_n_minus_t_dropouts_after_masking_still_finish() -> None:
    federation = make_federation(9)
    config = federation.config(threshold=5, vector_length=VECTOR)
    rng = np.random.default_rng(3)
    inputs = {n: rng.integers(0, 1000, VECTOR).astype(np.uint32) for n in federation.names}
    drop = {
        Stage.MASKED_INPUT: set(federation.names[:2]),
        Stage.UNMASKING: set(federation.names[2:4]),
    }
    state = run_round(federation, config, inputs, drop)
    assert state.result is not None
    expected = sum(inputs[n].astype(np.int64) for n in federation.names[2:])
    assert np.array_equal(state.result.total.astype(np.int64), expected)


def test_sum_wraps_modulo_two_to_the_k() -> None:
    federation = make_federation(3)
    config = SecAggConfig(tuple(federation.names), 2, 4, b"s" * 16, 0, modulus_bits=64)
    big = np.full(4, 2**63 + 5, dtype=np.uint64)
    state = run_round(federation, config, {n: big for n in federation.names})
    assert state.result is not None
    assert np.array_equal(state.result.total, big * np.uint64(3))
