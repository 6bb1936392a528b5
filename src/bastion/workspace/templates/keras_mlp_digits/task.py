"""A Keras 3 multilayer perceptron for digits: the model this workspace federates."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: no TensorFlow

import keras  # noqa: E402

from bastion.runners.keras import KerasRunner  # noqa: E402


def build_model(lr: float) -> keras.Model:
    """64 - 64 (BatchNormalization, ReLU) - 10 softmax, SGD with momentum."""
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(64),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_runner(
    seed: int = 0,
    threads: int | None = None,
    lr: float = 0.05,
    local_buffers: bool = False,
    optimizer_state: str = "reset",
) -> KerasRunner:
    keras.utils.set_random_seed(seed)
    return KerasRunner(
        build_model(lr),
        threads=threads,
        local_buffers=local_buffers,
        optimizer_state=optimizer_state,
    )
