"""Local DP-SGD through Opacus on a tiny torch model, and the message when Opacus is missing."""

from __future__ import annotations

import sys

import pytest

from bastion.errors import BastionError, MissingDependency
from bastion.privacy.dp.local import make_private


def test_missing_opacus_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(MissingDependency, match=r"bastion-fl\[opacus\]"):
        make_private(None, None, None, noise_multiplier=1.0, max_grad_norm=1.0)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_dp_sgd_trains_and_accounts() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    torch.manual_seed(0)
    features = torch.randn(64, 5)
    labels = (features[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=16
    )
    model = torch.nn.Linear(5, 2)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    private = make_private(model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=0.5)
    for x, y in private.data_loader:
        if len(y) == 0:  # Poisson sampling can draw an empty batch
            continue
        private.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(private.model(x), y).backward()
        private.optimizer.step()
    assert not torch.equal(before, model.weight.detach())
    assert private.optimizer.noise_multiplier == 1.0
    assert private.optimizer.max_grad_norm == 0.5
    assert 0 < private.epsilon(1e-5) < float("inf")


def test_dp_sgd_without_noise_is_refused() -> None:
    pytest.importorskip("opacus")
    with pytest.raises(BastionError, match="noise_multiplier must be positive"):
        make_private(None, None, None, noise_multiplier=0.0, max_grad_norm=1.0)


def test_secure_mode_without_torchcsprng_says_what_to_install() -> None:
    pytest.importorskip("opacus")
    if "torchcsprng" in sys.modules or _installed("torchcsprng"):
        pytest.skip("torchcsprng is installed")
    with pytest.raises(BastionError, match="torchcsprng"):
        make_private(None, None, None, noise_multiplier=1.0, max_grad_norm=1.0, secure_mode=True)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
