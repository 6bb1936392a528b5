"""FedCurv's tensors on one site (Shoham et al. 2019; see ``bastion.algorithms.fedcurv``).

With FedCurv the model carries ``fedcurv/u/*`` and ``fedcurv/v/*`` tensors: zeros in the
initial model, then after each training the site's diagonal Fisher information u = F of
its training data and v = F ⊙ w. The global model brings their sums over the sites (U, V);
the penalty needs the other sites' part, so the site subtracts its own terms when they
went into those sums: when the aggregator accepted its update of the previous round.
A model without FedCurv carries no such tensors and this object stays empty.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bastion.algorithms.fedcurv import fedcurv_tensors, split_fedcurv
from bastion.errors import BastionError
from bastion.runners.torch_fisher import curvature_dtype
from bastion.tensors import Weights

FisherTerms = tuple[Weights, Weights]


class FedCurvTerms:
    """The fedcurv/* tensors a site's model carries, the global sums, and its own terms."""

    def __init__(self, model: nn.Module, federated: list[str], enabled: bool) -> None:
        self.curved = [
            name
            for name, p in model.named_parameters()
            if p.requires_grad and p.dtype.is_floating_point and name in federated
        ]
        self.slots: Weights = {}
        if enabled:
            params = self.parameter_arrays(model)
            self.slots = fedcurv_tensors(params, {n: np.zeros_like(a) for n, a in params.items()})
        self.global_sums: FisherTerms | None = None
        self.own: FisherTerms | None = None  # what this site sent after its last training
        self.accepted_round: int | None = None
        self.current_round: int | None = None

    def carried(self) -> Weights:
        """Copies of the fedcurv/* tensors, to travel with the model's weights."""
        return {name: array.copy() for name, array in self.slots.items()}

    def load(self, weights: Weights) -> None:
        """Take the global model's fedcurv/* tensors: the sums U and V over the sites."""
        if not self.slots:
            return
        for name, slot in self.slots.items():
            if tuple(np.shape(weights[name])) != slot.shape:
                raise BastionError(
                    f"tensor {name!r}: shape {np.shape(weights[name])}, model has {slot.shape}"
                )
        self.slots = {
            name: np.array(weights[name], dtype=slot.dtype, copy=True)
            for name, slot in self.slots.items()
        }
        _, u_sum, v_sum = split_fedcurv(self.slots)
        self.global_sums = (u_sum, v_sum)

    def learn(self, model: nn.Module, fisher: dict[str, np.ndarray]) -> None:
        """After a training: this site's terms u = F, v = F ⊙ w become what the model carries."""
        self.slots = fedcurv_tensors(self.parameter_arrays(model), fisher)
        _, own_u, own_v = split_fedcurv(self.slots)
        self.own = (own_u, own_v)

    def parameter_arrays(self, model: nn.Module) -> Weights:
        """The curved parameters in their curvature dtype (see :func:`curvature_dtype`)."""
        state = model.state_dict()
        return {
            name: state[name].detach().to(curvature_dtype(state[name].dtype)).cpu().numpy()
            for name in self.curved
        }

    def others(
        self, parameters: dict[str, nn.Parameter], device: torch.device
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(U − u_s, V − v_s) per parameter: the other sites' summed Fisher terms."""
        if self.global_sums is None:
            zeros = {n: np.zeros(tuple(parameters[n].shape)) for n in self.curved}
            u_sum, v_sum = zeros, zeros
        else:
            u_sum, v_sum = self.global_sums
        own = self._own_in_sums()
        others_u: dict[str, torch.Tensor] = {}
        others_v: dict[str, torch.Tensor] = {}
        for name in self.curved:
            u = np.asarray(u_sum[name], dtype=np.float64)
            v = np.asarray(v_sum[name], dtype=np.float64)
            if own is not None:
                u = u - own[0][name]
                v = v - own[1][name]
            dtype = curvature_dtype(parameters[name].dtype)
            others_u[name] = torch.from_numpy(u).to(device, dtype)
            others_v[name] = torch.from_numpy(v).to(device, dtype)
        return others_u, others_v

    def _own_in_sums(self) -> FisherTerms | None:
        """What this site sent in the round behind the current global model, if it did."""
        if self.own is None:
            return None
        if self.current_round is None:  # no round bookkeeping: assume consecutive rounds
            return self.own
        if self.accepted_round == self.current_round - 1:
            return self.own
        return None
