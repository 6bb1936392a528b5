"""A MiniLM sentence classifier: the model this workspace federates, in part."""

from __future__ import annotations

from collections.abc import Sequence

from transformers.utils import logging as transformers_logging

from bastion.data.descriptions import load_descriptions
from bastion.runners.transformers import TransformersRunner, packaged_minilm

# The new classification head is reported as "newly initialized" at every load; it is meant to be.
transformers_logging.set_verbosity_error()


def build_runner(
    federate: Sequence[str] = ("classifier.*",),
    train_local: bool = False,
    lr: float = 5e-4,
    max_length: int = 64,
    optimizer_state: str = "reset",
    device: str = "auto",
    threads: int | None = None,
    seed: int = 0,
) -> TransformersRunner:
    return TransformersRunner.from_pretrained(
        packaged_minilm(),
        num_labels=load_descriptions().num_classes,
        federate=federate,
        train_local=train_local,
        lr=lr,
        max_length=max_length,
        optimizer_state=optimizer_state,
        device=device,
        threads=threads,
        seed=seed,
    )
