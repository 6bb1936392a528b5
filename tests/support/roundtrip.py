"""What every adapter's round-trip test does: weights through the wire and a checkpoint and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bastion.framing import FrameAssembler, iter_frames
from bastion.storage.checkpoints import load_checkpoint, save_checkpoint
from bastion.tensors import Weights, total_bytes


def through_wire(weights: Weights, chunk_bytes: int = 1000) -> Weights:
    """``weights`` framed as a collaborator sends them and reassembled as the aggregator does."""
    assembler = FrameAssembler(max_total_bytes=total_bytes(weights) + 1)
    for frame in iter_frames(weights, chunk_bytes=chunk_bytes):
        assembler.add(frame)
    return assembler.result()


def through_checkpoint(weights: Weights, folder: Path) -> Weights:
    """``weights`` saved as the aggregator's safetensors checkpoint and loaded back."""
    save_checkpoint(folder / "model.safetensors", weights)
    loaded, _ = load_checkpoint(folder / "model.safetensors")
    return loaded


def assert_same_weights(got: Weights, expected: Weights) -> None:
    """Same names in the same order, same dtypes and shapes, identical bits."""
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


def perturbed(weights: Weights, seed: int = 1) -> Weights:
    """Different values of the same names, shapes and dtypes (integers shift by one)."""
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for name, array in weights.items():
        if np.issubdtype(array.dtype, np.floating):
            out[name] = rng.standard_normal(array.shape).astype(array.dtype)
        else:
            out[name] = (array + 1).astype(array.dtype)
    return out
