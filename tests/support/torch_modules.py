"""Helpers for the torch-based adapters' tests (PyTorch, Lightning, Transformers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from bastion.data.types import DataShard

#: Every floating dtype a CPU torch keeps parameters in; bfloat16 and the float8 formats
#: (storage only: quantized checkpoints) travel widened to float32.
TORCH_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    *(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)),
]

#: The devices the tests run on here: always the CPU, and CUDA where it exists.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def randomize(module: nn.Module, seed: int) -> None:
    """Every state-dict entry (parameters and buffers) set to seeded values of its own dtype."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.dtype.is_floating_point:
                values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                tensor.copy_(values.to(tensor.dtype))
            else:
                tensor.add_(seed + 1)


def native_bytes(module: nn.Module) -> dict[str, tuple[torch.dtype, bytes]]:
    """The module's state as the framework holds it: dtype and raw bytes per tensor."""
    return {
        name: (tensor.dtype, tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        for name, tensor in module.state_dict().items()
    }


def tiny_bert_config(num_labels: int = 2) -> object:
    """Two BERT layers of 32 units with MiniLM's vocabulary; no dropout, so training repeats."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def text_shard() -> DataShard:
    """Thirteen short texts of three classes, for the text adapters' tests."""
    import numpy as np

    from bastion.data.types import DataShard

    texts = np.array(
        ["the iris flowers", "wine from italy", "handwritten digits"] * 4 + ["iris petals"]
    )
    labels = np.array([0, 1, 2] * 4 + [0])
    return DataShard(texts, labels, texts, labels, num_classes=3)
