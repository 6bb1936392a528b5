"""FedCurv (Shoham et al. 2019): server sums of Fisher terms and the client penalty reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.algorithms.errors import AggregationError
from bastion.algorithms.fedcurv import (
    U_PREFIX,
    V_PREFIX,
    FedCurv,
    fedcurv_penalty,
    fedcurv_tensors,
    split_fedcurv,
)

SHAPES = {"fc.weight": (3, 2), "fc.bias": (2,)}


def client_update(rng, params_shape=SHAPES):
    theta = {n: rng.normal(size=s) for n, s in params_shape.items()}
    fisher = {n: rng.uniform(0, 2, size=s) for n, s in params_shape.items()}
    return theta, fisher, {**theta, **fedcurv_tensors(theta, fisher)}


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(1, 6))
def test_parameters_are_averaged_and_fisher_terms_summed(seed, clients):
    rng = np.random.default_rng(seed)
    initial = {n: np.zeros(s) for n, s in SHAPES.items()}
    initial |= fedcurv_tensors(initial, {n: np.zeros(s) for n, s in SHAPES.items()})
    sent = [client_update(rng) for _ in range(clients)]
    weights = [float(w) for w in rng.integers(1, 100, clients)]
    strategy = FedCurv()
    strategy.begin_round(initial, 1)
    for i, ((_, _, update), weight) in enumerate(zip(sent, weights, strict=True)):
        strategy.accumulate(f"site-{i}", update, weight)
    new = strategy.finalize()

    assert list(new) == list(initial)
    for name in SHAPES:
        average = sum(w * theta[name] for (theta, _, _), w in zip(sent, weights, strict=True))
        np.testing.assert_allclose(new[name], average / sum(weights), rtol=1e-12)
        u_sum = sum(fisher[name] for _, fisher, _ in sent)
        v_sum = sum(fisher[name] * theta[name] for theta, fisher, _ in sent)
        np.testing.assert_allclose(new[U_PREFIX + name], u_sum, rtol=1e-12)
        np.testing.assert_allclose(new[V_PREFIX + name], v_sum, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(2, 5),
    lam=st.floats(1e-3, 10.0),
    took_part=st.booleans(),
)
def test_penalty_is_the_paper_quadratic_over_the_other_clients(seed, clients, lam, took_part):
    rng = np.random.default_rng(seed)
    thetas = [rng.normal(size=5) for _ in range(clients)]
    fishers = [rng.uniform(0, 2, size=5) for _ in range(clients)]
    if not took_part:  # this client sent nothing last round: every sum term is someone else's
        own_u = own_v = None
        others = range(clients)
    else:
        own_u, own_v = fishers[0], fishers[0] * thetas[0]
        others = range(1, clients)
    u_sum = sum(fishers)
    v_sum = sum(f * t for f, t in zip(fishers, thetas, strict=True))
    theta = rng.normal(size=5)

    value, gradient = fedcurv_penalty(theta, u_sum, v_sum, own_u, own_v, lam)

    # Shoham et al. Eq. (6): λ Σ_{j≠s} (θ − θ_j)ᵀ diag(F_j) (θ − θ_j), minus its θ-free part.
    quadratic = lam * sum(np.sum(fishers[j] * (theta - thetas[j]) ** 2) for j in others)
    constant = lam * sum(np.sum(fishers[j] * thetas[j] ** 2) for j in others)
    assert value == pytest.approx(quadratic - constant, rel=1e-9, abs=1e-9)
    expected_gradient = 2 * lam * sum(fishers[j] * (theta - thetas[j]) for j in others)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-9, atol=1e-12)


def test_dtypes_follow_the_model_and_split_recovers_the_parts():
    theta = {"w": np.ones(3, np.float32), "steps": np.array(2, np.int64)}
    extra = fedcurv_tensors(theta, {"w": np.full(3, 0.5)})
    assert extra[U_PREFIX + "w"].dtype == np.float32 and extra[V_PREFIX + "w"].tolist() == [0.5] * 3
    params, u, v = split_fedcurv({**theta, **extra})
    assert list(params) == ["w", "steps"] and list(u) == ["w"] and list(v) == ["w"]


def test_fisher_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        fedcurv_tensors({"w": np.zeros(3)}, {"w": np.zeros(4)})


def test_a_model_without_fisher_tensors_is_refused():
    with pytest.raises(AggregationError, match="no fedcurv/u/"):
        FedCurv().begin_round({"w": np.zeros(2)}, 1)


def test_unpaired_or_misshapen_fisher_tensors_are_refused():
    with pytest.raises(AggregationError, match="only one of"):
        FedCurv().begin_round({"w": np.zeros(2), U_PREFIX + "w": np.zeros(2)}, 1)
    with pytest.raises(AggregationError, match="same shape"):
        FedCurv().begin_round(
            {"w": np.zeros(2), U_PREFIX + "w": np.zeros(3), V_PREFIX + "w": np.zeros(3)}, 1
        )
