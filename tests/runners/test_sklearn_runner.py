"""The scikit-learn adapter: coef_ and intercept_ round trip exactly; schedule policy; learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire

from bastion.data import load_dataset, make_shard
from bastion.errors import BastionError
from bastion.runners.sklearn import SklearnRunner
from bastion.tensors import Weights

CLASSES = list(range(10))


def runner(dtype: str = "float64", **options: object) -> SklearnRunner:
    model = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
    return SklearnRunner(model, classes=CLASSES, num_features=64, dtype=dtype, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_dtype_round_trips_through_wire_and_checkpoint(dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    source = runner(dtype)
    source.model.coef_ = rng.standard_normal((10, 64)).astype(dtype)
    source.model.intercept_ = rng.standard_normal(10).astype(dtype)
    sent = source.get_weights()
    assert list(sent) == ["coef_", "intercept_"]
    target = runner(dtype)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert target.model.coef_.dtype == np.dtype(dtype)
    assert target.model.coef_.tobytes() == source.model.coef_.tobytes()
    assert target.model.intercept_.tobytes() == source.model.intercept_.tobytes()
    assert_same_weights(target.get_weights(), sent)


def test_every_site_starts_from_the_same_zeros() -> None:
    assert_same_weights(runner().get_weights(), runner().get_weights())
    assert not runner().get_weights()["coef_"].any()


def _one_pass_twice(optimizer_state: str) -> tuple[Weights, Weights]:
    site = runner(optimizer_state=optimizer_state)
    shard = make_shard(load_dataset("digits"), index=0, count=4)
    start = site.get_weights()
    site.train(shard)
    first = site.get_weights()
    site.set_weights(start)
    site.train(shard)
    return first, site.get_weights()


def test_optimizer_state_reset_restarts_the_step_size_schedule() -> None:
    first, second = _one_pass_twice("reset")
    assert_same_weights(second, first)  # same seed, same schedule: the same pass exactly
    first, second = _one_pass_twice("keep")
    assert not np.allclose(first["coef_"], second["coef_"])


def test_partial_fit_learns_digits() -> None:
    site = runner()
    shard = make_shard(load_dataset("digits"), index=0, count=2)
    before = site.validate(shard).metrics["accuracy"]
    site.train(shard, epochs=3)
    assert before < 0.2 < 0.85 < site.validate(shard).metrics["accuracy"]


def test_a_model_without_partial_fit_is_a_clear_error() -> None:
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(BastionError, match="partial_fit"):
        SklearnRunner(LogisticRegression(), classes=CLASSES, num_features=64)
