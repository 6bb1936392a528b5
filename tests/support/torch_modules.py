"""Helpers for the torch-based adapters' tests (PyTorch, Lightning, Transformers)."""

from __future__ import annotations

import torch
from torch import nn

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
