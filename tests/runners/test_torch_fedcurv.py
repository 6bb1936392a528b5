"""FedCurv in the PyTorch runner (Shoham et al. 2019): the Fisher diagonal each site sends,
the penalty it trains with, and the bookkeeping that removes its own terms from the sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.torch_modules import DEVICES
from torch import nn

from bastion.algorithms.fedcurv import U_PREFIX, V_PREFIX, split_fedcurv
from bastion.data.types import DataShard
from bastion.runners.torch import TorchRunner


def tiny_shard(seed: int = 0, count: int = 40, dtype: type = np.float64) -> DataShard:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 5)).astype(dtype)
    y = rng.integers(0, 3, size=count)
    return DataShard(x, y, x, y, num_classes=3)


def tiny_model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)


def reference_fisher(model: nn.Module, shard: DataShard) -> dict[str, np.ndarray]:
    """Mean over examples of each squared per-example gradient, one example at a time."""
    sums = {n: np.zeros(tuple(p.shape)) for n, p in model.named_parameters()}
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    for xi, yi in zip(shard.x_train, shard.y_train, strict=True):
        model.zero_grad()
        first = next(model.parameters())
        x = torch.from_numpy(xi[None]).to(first.device, first.dtype)
        loss_fn(model(x), torch.tensor([int(yi)], device=first.device)).backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            sums[n] += p.grad.detach().double().cpu().numpy() ** 2
    return {n: s / len(shard.y_train) for n, s in sums.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_fisher_diagonal_is_the_mean_of_squared_per_example_gradients(device: str) -> None:
    runner = TorchRunner(tiny_model(), fedcurv_lambda=0.1, device=device)
    shard = tiny_shard()
    fisher = runner.fisher_diagonal(shard.x_train, shard.y_train)
    expected = reference_fisher(runner.model, shard)
    assert set(fisher) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(fisher[name], value, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_initial_model_carries_zero_fisher_tensors_for_every_parameter(device: str) -> None:
    runner = TorchRunner(tiny_model(), fedcurv_lambda=0.1, device=device)
    weights = runner.get_weights()
    params, u, v = split_fedcurv(weights)
    assert set(u) == set(v) == {n for n, _ in runner.model.named_parameters()}
    assert all(not array.any() for array in [*u.values(), *v.values()])
    assert all(u[n].shape == params[n].shape for n in u)


@pytest.mark.parametrize("device", DEVICES)
def test_training_sends_u_equal_fisher_and_v_equal_fisher_times_weights(device: str) -> None:
    runner = TorchRunner(tiny_model(), fedcurv_lambda=0.1, lr=0.05, device=device)
    shard = tiny_shard()
    runner.train(shard, epochs=1, batch_size=8)
    expected = reference_fisher(runner.model, shard)
    weights = runner.get_weights()
    for name, fisher in expected.items():
        theta = weights[name].astype(np.float64)
        np.testing.assert_allclose(weights[U_PREFIX + name], fisher, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(weights[V_PREFIX + name], fisher * theta, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_penalty_and_its_gradient_match_the_papers_formula_without_own_terms(device: str) -> None:
    """λ Σ [θ²(U − u_s) − 2θ(V − v_s)], with u_s, v_s this site's terms of the previous round."""
    lam = 0.7
    runner = TorchRunner(tiny_model(), fedcurv_lambda=lam, device=device)
    runner.begin_round(1)
    runner.train(tiny_shard(seed=1), epochs=1, batch_size=8)
    runner.update_accepted(1)
    _, own_u, own_v = split_fedcurv(runner.get_weights())

    rng = np.random.default_rng(3)
    global_weights = runner.get_weights()
    params, _, _ = split_fedcurv(global_weights)
    for name in params:  # sums over all sites, this site's terms included
        global_weights[U_PREFIX + name] = own_u[name] + rng.uniform(0, 2, own_u[name].shape)
        global_weights[V_PREFIX + name] = own_v[name] + rng.normal(size=own_v[name].shape)
        global_weights[name] = rng.normal(size=params[name].shape)
    runner.begin_round(2)
    runner.set_weights(global_weights)
    runner.prepare_penalty(fedcurv_lambda=lam)

    runner.model.zero_grad(set_to_none=True)  # training left its last step's gradients
    value = runner.penalty()
    value.backward()
    expected_value = 0.0
    for name, p in runner.model.named_parameters():
        theta = global_weights[name]
        others_u = global_weights[U_PREFIX + name] - own_u[name]
        others_v = global_weights[V_PREFIX + name] - own_v[name]
        expected_value += lam * float(np.sum(theta**2 * others_u - 2 * theta * others_v))
        expected_grad = 2 * lam * (theta * others_u - others_v)
        assert p.grad is not None
        np.testing.assert_allclose(p.grad.cpu().numpy(), expected_grad, rtol=1e-10, atol=1e-12)
    assert float(value.detach()) == pytest.approx(expected_value, rel=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_own_terms_stay_in_the_sums_when_the_previous_update_was_not_accepted(device: str) -> None:
    lam = 0.5
    runner = TorchRunner(tiny_model(), fedcurv_lambda=lam, device=device)
    runner.begin_round(1)
    runner.train(tiny_shard(), epochs=1, batch_size=8)  # never accepted
    global_weights = runner.get_weights()
    runner.begin_round(2)
    runner.set_weights(global_weights)
    runner.prepare_penalty(fedcurv_lambda=lam)
    runner.model.zero_grad(set_to_none=True)
    runner.penalty().backward()
    for name, p in runner.model.named_parameters():
        theta = global_weights[name]
        expected = (
            2 * lam * (theta * global_weights[U_PREFIX + name] - global_weights[V_PREFIX + name])
        )
        assert p.grad is not None
        np.testing.assert_allclose(p.grad.cpu().numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_a_strong_penalty_holds_the_weights_at_the_other_sites_optimum(device: str) -> None:
    """With a large λ the minimiser of the penalty, θ* = (V − v_s)/(U − u_s), dominates."""
    runner = TorchRunner(
        tiny_model(), fedcurv_lambda=50.0, lr=0.002, optimizer="sgd", device=device
    )
    weights = runner.get_weights()
    params, _, _ = split_fedcurv(weights)
    rng = np.random.default_rng(5)
    target = {n: rng.normal(size=a.shape) for n, a in params.items()}
    for name in params:
        weights[U_PREFIX + name] = np.ones_like(params[name])
        weights[V_PREFIX + name] = target[name]
    runner.set_weights(weights)
    runner.train(tiny_shard(), epochs=30, batch_size=40)
    after = runner.get_weights()
    for name in params:
        np.testing.assert_allclose(after[name], target[name], atol=0.02)


class CastingModel(nn.Module):
    """A low-precision model that casts its float32 input, as mixed-precision users write it."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.body = tiny_model(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.to(self.dtype)).float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_models_keep_fisher_terms_in_float32(dtype: torch.dtype, device: str) -> None:
    runner = TorchRunner(CastingModel(dtype), fedcurv_lambda=0.1, lr=0.05, device=device)
    _, u, v = split_fedcurv(runner.get_weights())
    assert {a.dtype for a in [*u.values(), *v.values()]} == {np.dtype(np.float32)}

    runner.begin_round(1)
    runner.train(tiny_shard(dtype=np.float32), epochs=1, batch_size=8)
    trained = runner.get_weights()
    _, u, v = split_fedcurv(trained)
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in [*u.values(), *v.values()])
    assert any(a.any() for a in u.values())

    runner.update_accepted(1)
    runner.begin_round(2)
    runner.set_weights(trained)  # the next round's penalty is built and summed in float32
    runner.prepare_penalty(fedcurv_lambda=0.1)
    penalty = runner.penalty()
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)
    runner.train(tiny_shard(seed=2, dtype=np.float32), epochs=1, batch_size=8)
    assert all(p.dtype == dtype for p in runner.model.parameters())
