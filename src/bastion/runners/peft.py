"""The PEFT adapter: federating LoRA adapters on top of a frozen, pinned base model.

Each site loads the pretrained base from its own disk, checks it against the digests the
signed plan pins (``bastion.runners.pinned_base``) and wraps it with LoRA (Hu et al. 2021,
"LoRA: Low-Rank Adaptation of Large Language Models") through the ``peft`` library. Only
the adapter's tensors travel, are aggregated and are checkpointed: the LoRA matrices and
what PEFT calls modules to save (a classifier head). The final artifact is a plain PEFT
adapter folder plus the base's digest (``export``), loadable with ``PeftModel.from_pretrained``.

Sequence classifiers and causal language models go through the same runner; the base
comes from a local folder, or from the Hugging Face Hub cache for a repository id (with
``HF_HUB_OFFLINE=0`` set by the user, a site may download it first).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency, PlanError
from bastion.runners.base import TaskResult
from bastion.runners.pinned_base import PINNED_PATTERNS, base_digest, check_pins, verify_base

# Sets HF_HUB_OFFLINE=1 unless the user chose otherwise, before huggingface_hub is imported.
from bastion.runners.transformers import TransformersRunner

try:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as transformers_logging
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without peft
    raise MissingDependency(exc.name or "peft", "peft", "the PEFT task runner") from exc

log = logging.getLogger("bastion.runners")

#: ``task`` values: what head the base model gets and how it trains.
SEQUENCE_CLASSIFICATION = "sequence_classification"
CAUSAL_LM = "causal_lm"
TASKS = (SEQUENCE_CLASSIFICATION, CAUSAL_LM)
_PEFT_TASK_TYPES = {SEQUENCE_CLASSIFICATION: "SEQ_CLS", CAUSAL_LM: "CAUSAL_LM"}

#: Written next to the adapter by ``export``: which base it belongs on.
BASE_MODEL_FILE = "base_model.json"


def lora_config(
    task: str,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> LoraConfig:
    """The plan's ``task_runner.args.lora``; unset target modules take PEFT's per-architecture
    defaults (``query``/``value`` for BERT), and a classifier's head is saved whole."""
    if task not in TASKS:
        raise PlanError(f"key 'task_runner.args.task': {task!r} is not one of {', '.join(TASKS)}")
    if int(r) < 1:
        raise PlanError(f"key 'task_runner.args.lora.r': the rank must be at least 1, got {r!r}")
    return LoraConfig(
        task_type=_PEFT_TASK_TYPES[task],
        r=int(r),
        lora_alpha=int(alpha),
        lora_dropout=float(dropout),
        target_modules=list(target_modules) if target_modules else None,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )


def resolve_base(base: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repository id, found in the local Hub cache
    (or downloaded when the user allowed the network with ``HF_HUB_OFFLINE=0``)."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download  # a transformers dependency

    try:
        return Path(
            snapshot_download(
                repo_id=str(base), revision=revision, allow_patterns=list(PINNED_PATTERNS)
            )
        )
    except Exception as exc:
        raise BastionError(
            f"base model {str(base)!r} (task_runner.args.base) is neither a local folder nor in "
            f"this machine's Hugging Face cache ({type(exc).__name__}: {exc}). Put the model in "
            "a folder and point task_runner.args.base at it, or allow the download with "
            "HF_HUB_OFFLINE=0 on a machine with a network"
        ) from None


@dataclass(frozen=True)
class TransferSizes:
    """What one model transfer carries: the adapter, against the whole model (full fine-tuning)."""

    adapter_bytes: int
    full_bytes: int


def transfer_sizes(model: PeftModel) -> TransferSizes:
    """Bytes of the trainable (adapter) tensors, and of the model without LoRA's additions
    (the base plus one copy of each saved module: what full fine-tuning would send)."""
    adapter = full = 0
    for name, parameter in model.named_parameters():
        size = parameter.numel() * parameter.element_size()
        if parameter.requires_grad:
            adapter += size
        if ".lora_" not in name and ".modules_to_save." not in name:
            full += size
    return TransferSizes(adapter, full)


class PeftRunner(TransformersRunner):
    """A ``TaskRunner`` over a ``PeftModel`` classifier: only adapter tensors federate and train.

    ``base_sha256`` is the plan's pin of the base (kept for ``export``); the training loop
    and batching are the Transformers runner's.
    """

    task = SEQUENCE_CLASSIFICATION

    def __init__(
        self,
        model: PeftModel,
        tokenizer: Any,
        *,
        base_sha256: dict[str, str] | None = None,
        base_name: str = "",
        **options: Any,
    ) -> None:
        adapter = [name for name, p in model.named_parameters() if p.requires_grad]
        if not adapter:
            raise PlanError(
                "key 'task_runner.args.lora': the adapter has no trainable tensors; "
                "check lora.target_modules against the model's module names"
            )
        super().__init__(model, tokenizer, federate=adapter, **options)
        self.peft_model = model
        self.base_sha256 = base_sha256
        self.base_name = base_name
        self.sizes = transfer_sizes(model)
        log.info(
            "PEFT: %d adapter tensors, %s bytes each way per round; full fine-tuning of this "
            "model would send %s (%.0fx more)",
            len(adapter),
            f"{self.sizes.adapter_bytes:,}",
            f"{self.sizes.full_bytes:,}",
            self.sizes.full_bytes / max(self.sizes.adapter_bytes, 1),
        )

    @classmethod
    def from_base(
        cls,
        base: str | Path,
        base_sha256: dict[str, str] | None,
        *,
        task: str = SEQUENCE_CLASSIFICATION,
        num_labels: int | None = None,
        lora: dict[str, Any] | None = None,
        revision: str | None = None,
        seed: int = 0,
        **options: Any,
    ) -> PeftRunner:
        """Check the local base against the plan's pins, load it frozen, add LoRA.

        The check comes first: a site with another base is refused before any model is built.
        """
        folder = resolve_base(base, revision)
        verify_base(folder, base_sha256)
        if options.get("threads"):  # loading the base is already work: it obeys the plan too
            torch.set_num_threads(int(options["threads"]))
        config = lora_config(task, **(lora or {}))
        transformers_logging.disable_progress_bar()  # a collaborator's log is not a terminal
        torch.manual_seed(seed)  # the new head and LoRA's A matrices start seeded
        if task == SEQUENCE_CLASSIFICATION:
            if not num_labels:
                raise PlanError("a sequence classifier needs num_labels (the dataset's classes)")
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=int(num_labels), local_files_only=True
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        peft_model = get_peft_model(model, config)
        runner_type = PeftCausalLMRunner if task == CAUSAL_LM else PeftRunner
        return runner_type(
            peft_model,
            tokenizer,
            base_sha256=check_pins(base_sha256),
            base_name=str(base),
            seed=seed,
            **options,
        )

    # ------------------------------------------------------------------ the artifact

    def export(self, folder: Path) -> Path:
        """Save the adapter as PEFT does, plus ``base_model.json`` (the base's digest and files)."""
        folder = Path(folder)
        self.peft_model.save_pretrained(str(folder))
        record: dict[str, Any] = {"task": self.task, "base": self.base_name}
        if self.base_sha256:
            record.update(digest=base_digest(self.base_sha256), sha256=self.base_sha256)
        (folder / BASE_MODEL_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return folder


class PeftCausalLMRunner(PeftRunner):
    """LoRA on a causal language model: next-token loss on text shards (labels unused).

    Validation reports ``loss``, ``perplexity`` and ``accuracy`` (top-1 next token).
    """

    task = CAUSAL_LM

    def __init__(self, model: PeftModel, tokenizer: Any, **options: Any) -> None:
        if tokenizer.pad_token is None:  # GPT-style tokenizers have none; padding is masked
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(model, tokenizer, **options)

    def train(self, data: DataShard, epochs: int = 1, batch_size: int = 16, **_: Any) -> TaskResult:
        """Local epochs of AdamW on the adapter, causal LM loss."""
        self.model.train()
        optimizer = self._optimizer_for_round()
        total = _Tally()
        for _epoch in range(int(epochs)):
            order = self._rng.permutation(data.train_count)
            for start in range(0, len(order), int(batch_size)):
                inputs = self._tokens(data.x_train[order[start : start + int(batch_size)]])
                optimizer.zero_grad(set_to_none=True)
                output = self.model(**inputs)
                output.loss.backward()
                optimizer.step()
                total.add(output.logits.detach(), inputs["labels"], float(output.loss.detach()))
        if total.tokens and not math.isfinite(total.loss_sum):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        return TaskResult(data.train_count, total.metrics())

    @torch.no_grad()
    def validate(self, data: DataShard, batch_size: int = 64, **_: Any) -> TaskResult:
        self.model.eval()
        total = _Tally()
        for start in range(0, data.valid_count, int(batch_size)):
            inputs = self._tokens(data.x_valid[start : start + int(batch_size)])
            output = self.model(**inputs)
            total.add(output.logits, inputs["labels"], float(output.loss))
        return TaskResult(data.valid_count, total.metrics())

    def _tokens(self, texts: np.ndarray) -> dict[str, Any]:
        inputs = self._encode(texts)
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100  # padding is not predicted
        inputs["labels"] = labels
        return inputs


class _Tally:
    """Token-weighted loss and next-token accuracy over batches."""

    def __init__(self) -> None:
        self.loss_sum, self.tokens, self.correct = 0.0, 0, 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: float) -> None:
        targets = labels[:, 1:]
        predicted = logits[:, :-1].argmax(dim=-1)
        counted = targets != -100
        count = int(counted.sum())
        self.loss_sum += loss * count
        self.tokens += count
        self.correct += int(((predicted == targets) & counted).sum())

    def metrics(self) -> dict[str, float]:
        loss = self.loss_sum / max(self.tokens, 1)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": self.correct / max(self.tokens, 1),
        }
