"""A new global model's digest, norm and finiteness, from one pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bastion.aggregator.influence import l2_norm
from bastion.aggregator.model_facts import checked_norm, model_facts
from bastion.tensors import weights_digest


def test_the_facts_are_the_separate_passes_results() -> None:
    rng = np.random.default_rng(3)
    model = {
        "w": rng.standard_normal((300, 700)).astype(np.float32),
        "steps": np.arange(10, dtype=np.int64),  # not in the norm, in the digest
        "b": rng.standard_normal(5),
    }
    facts = model_facts(model)
    assert facts.digest == weights_digest(model)
    assert facts.norm is not None and math.isclose(facts.norm, l2_norm(model), rel_tol=1e-12)


def test_a_model_with_a_nan_or_an_infinity_has_no_norm() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        model = {"w": np.ones(100_000, np.float32), "v": np.ones(3, np.float64)}
        model["v"][1] = bad
        assert checked_norm(model) is None
        assert model_facts(model).digest == weights_digest(model)


@pytest.mark.filterwarnings("ignore:overflow encountered in square")
def test_finite_values_whose_squares_overflow_are_finite_with_an_infinite_norm() -> None:
    model = {"w": np.full(4, 1e200)}
    assert checked_norm(model) == math.inf
    assert checked_norm({"i": np.arange(3)}) == 0.0
