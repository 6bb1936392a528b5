"""A ``torch.nn.Module``'s state dict as named NumPy arrays, for the torch-based adapters.

The Lightning and Transformers adapters share it: names and order are the module's
``state_dict()``, buffers are told apart from parameters so a plan can keep them local,
and bfloat16/float8 tensors travel as float32 (see ``bastion.runners.wire_dtypes``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bastion.errors import MissingDependency
from bastion.runners.checks import check_incoming
from bastion.runners.options import TensorSelection
from bastion.runners.wire_dtypes import to_wire
from bastion.tensors import Weights

try:
    import torch
    from torch import nn
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependency("torch", "torch", "the PyTorch-based task runners") from exc


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else is torch's own name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ModuleState:
    """Reads and writes the federated part of a module's state dict."""

    def __init__(self, module: nn.Module, selection: TensorSelection) -> None:
        self.module = module
        state = module.state_dict()
        buffers = {name for name, _ in module.named_buffers()}
        self.names = selection.choose(list(state), buffers)
        self.shapes = {name: tuple(state[name].shape) for name in self.names}

    def read(self) -> Weights:
        state = self.module.state_dict()
        return {name: tensor_to_numpy(name, state[name]) for name in self.names}

    def write(self, weights: Weights) -> None:
        check_incoming(weights, self.shapes)
        state = self.module.state_dict()
        with torch.no_grad():
            for name in self.names:
                target = state[name]
                value = torch.from_numpy(np.array(weights[name], copy=True))  # 0-d stays 0-d
                target.copy_(value.to(dtype=target.dtype))

    def parameters(self, names: Iterable[str]) -> list[nn.Parameter]:
        """The module's parameters among ``names`` (buffers are not trained)."""
        wanted = set(names)
        return [p for name, p in self.module.named_parameters() if name in wanted]


def tensor_to_numpy(name: str, tensor: torch.Tensor) -> np.ndarray:
    """A copy on the CPU in a dtype the wire carries (bfloat16/float8 widened to float32)."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, *_FLOAT8):
        tensor = tensor.float()  # exact: every bfloat16/float8 value is a float32 value
    return to_wire(name, tensor.cpu().numpy().copy())


_FLOAT8 = tuple(
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
    if hasattr(torch, name)
)
