"""The NumPy adapter: the model's arrays round trip exactly in every wire dtype, copied at the edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire

from bastion.runners.base import TaskRunner
from bastion.runners.numpy import NumpyRunner
from bastion.tensors import WIRE_DTYPES, Weights


class ArrayModel:
    """Holds whatever arrays it is given; fit and evaluate report their count."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights

    def get_weights(self) -> Weights:
        return self.weights

    def set_weights(self, weights: Weights) -> None:
        self.weights = weights

    def fit(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {"count": float(len(y))}

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {"count": float(len(y))}


def arrays(dtype: str, seed: int) -> Weights:
    values = np.random.default_rng(seed).standard_normal((3, 4)) * 50
    if np.dtype(dtype).kind == "u":
        values = np.abs(values)
    return {
        "w": values.astype(dtype),
        "b": values[0].astype(dtype),
        "scalar": np.asarray(values[0, 0]).astype(dtype),
    }


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_every_wire_dtype_round_trips_through_wire_and_checkpoint(
    dtype: str, tmp_path: Path
) -> None:
    source = NumpyRunner(ArrayModel(arrays(dtype, 1)))
    assert isinstance(source, TaskRunner)
    sent = source.get_weights()
    target = NumpyRunner(ArrayModel(arrays(dtype, 2)))
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert_same_weights(target.model.get_weights(), source.model.get_weights())


def test_weights_are_copied_at_the_boundary() -> None:
    model = ArrayModel(arrays("float32", 1))
    runner = NumpyRunner(model)
    sent = runner.get_weights()
    sent["w"][0, 0] = 1e6
    assert model.weights["w"][0, 0] != 1e6
    incoming = arrays("float32", 2)
    runner.set_weights(incoming)
    incoming["w"][0, 0] = 1e6
    assert model.weights["w"][0, 0] != 1e6


def test_lent_weights_are_read_only_views_of_the_model() -> None:
    model = ArrayModel(arrays("float32", 0))
    runner = NumpyRunner(model)
    lent = runner.lend_weights()
    assert set(lent) == set(model.weights)
    for name, view in lent.items():
        assert np.shares_memory(view, model.weights[name])
        assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        lent["w"][0, 0] = 1.0
    assert model.weights["w"].flags.writeable  # the model's own arrays stay writable
