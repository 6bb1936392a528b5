"""The Keras 3 adapter (torch backend): exact round trips in every dtype, names, buffers, optimizer."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire  # noqa: E402

from bastion.data import load_dataset, make_shard  # noqa: E402
from bastion.errors import BastionError  # noqa: E402
from bastion.runners.keras import KerasRunner  # noqa: E402
from bastion.tensors import Weights  # noqa: E402

KERAS_DTYPES = ["float16", "bfloat16", "float32", "float64"]


def build_model(dtype: str = "float32", seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(16, dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.Activation("relu", dtype=dtype),
            keras.layers.Dense(10, activation="softmax", dtype=dtype),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def randomize(model: keras.Model, seed: int) -> None:
    """Every variable, trainable or not, set to seeded values of its own dtype."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        dtype = ml_dtypes.bfloat16 if variable.dtype == "bfloat16" else np.dtype(variable.dtype)
        variable.assign(rng.standard_normal(tuple(variable.shape)).astype(dtype))


def native_bytes(model: keras.Model) -> list[tuple[str, bytes]]:
    return [
        (str(v.dtype), np.asarray(keras.ops.convert_to_numpy(v.value)).tobytes())
        for v in model.weights
    ]


@pytest.mark.parametrize("dtype", KERAS_DTYPES)
def test_every_dtype_round_trips_through_wire_and_checkpoint(dtype: str, tmp_path: Path) -> None:
    source = KerasRunner(build_model(dtype, seed=1))
    randomize(source.model, seed=1)
    sent = source.get_weights()
    target = KerasRunner(build_model(dtype, seed=2))
    randomize(target.model, seed=2)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert native_bytes(target.model) == native_bytes(source.model)
    assert_same_weights(target.get_weights(), sent)


def test_names_are_structural_and_stable_across_models() -> None:
    """Keras's own names carry per-process counters (dense_7); the federation's must not."""
    first, second = KerasRunner(build_model()), KerasRunner(build_model())
    assert list(first.get_weights()) == list(second.get_weights())
    assert list(first.get_weights())[:2] == ["0.dense.kernel", "0.dense.bias"]


def test_moving_statistics_are_the_buffers_local_buffers_keeps() -> None:
    shared = KerasRunner(build_model()).get_weights()
    assert "1.batch_normalization.moving_mean" in shared
    local = KerasRunner(build_model(), local_buffers=True).get_weights()
    assert not any("moving_" in name for name in local)
    assert "1.batch_normalization.gamma" in local


def _one_step_twice(optimizer_state: str) -> tuple[Weights, Weights]:
    runner = KerasRunner(build_model(), optimizer_state=optimizer_state)
    shard = make_shard(load_dataset("digits"), index=0, count=20)
    start = runner.get_weights()
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    first = runner.get_weights()
    runner.set_weights(start)
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    return first, runner.get_weights()


def test_optimizer_state_reset_and_keep() -> None:
    first, second = _one_step_twice("reset")
    assert all(np.allclose(first[n], second[n], rtol=1e-5, atol=1e-6) for n in first)
    first, second = _one_step_twice("keep")
    assert not np.allclose(first["3.dense.kernel"], second["3.dense.kernel"], rtol=1e-3, atol=1e-4)


def test_an_uncompiled_model_is_a_clear_error() -> None:
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)])
    with pytest.raises(BastionError, match="compile"):
        KerasRunner(model)
