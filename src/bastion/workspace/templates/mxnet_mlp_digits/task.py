"""An MXNet Gluon multilayer perceptron for digits: the model this workspace federates (legacy).

The same network in Keras 3 is the keras_mlp_digits template: ``nn.Dense(64)`` is
``keras.layers.Dense(64)``, ``nn.BatchNorm()`` is ``keras.layers.BatchNormalization()``.
"""

from __future__ import annotations

import mxnet as mx
from mxnet.gluon import nn

from bastion.runners.mxnet import MxnetRunner

NUM_FEATURES = 64


def build_model() -> nn.HybridSequential:
    """64 - 64 (BatchNorm, ReLU) - 10."""
    model = nn.HybridSequential()
    model.add(nn.Dense(64), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(10))
    model.initialize(mx.init.Xavier())
    return model


def build_runner(
    seed: int = 0,
    lr: float = 0.05,
    local_buffers: bool = False,
    optimizer_state: str = "reset",
    device: str = "auto",
) -> MxnetRunner:
    mx.random.seed(seed)
    return MxnetRunner(
        build_model(),
        input_shape=(1, NUM_FEATURES),
        optimizer="sgd",
        optimizer_args={"learning_rate": lr, "momentum": 0.9},
        local_buffers=local_buffers,
        optimizer_state=optimizer_state,
        device=device,
        seed=seed,
    )
