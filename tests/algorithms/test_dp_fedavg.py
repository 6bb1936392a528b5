"""DP-FedAvg: clipping, the fixed-denominator estimate, the noise it adds, adaptive clipping."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.algorithms.dp_fedavg import DPFedAvg
from bastion.errors import BastionError, UpdateRejected
from bastion.privacy.dp import AdaptiveClipping, FixedClipping
from bastion.privacy.dp.clipping import clip_by_global_norm, global_norm
from bastion.privacy.dp.noise import SecureGaussianNoise, SeededGaussianNoise


class NoNoise:
    """A noise source that adds nothing, to check the deterministic arithmetic exactly."""

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return np.zeros(shape)


def _model(size: int = 4) -> dict[str, np.ndarray]:
    return {"w": np.zeros((size,), dtype=np.float64), "b": np.zeros(2, dtype=np.float64)}


def test_clip_by_global_norm_scales_all_tensors_together() -> None:
    tensors = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    clipped, norm = clip_by_global_norm(tensors, 1.0)
    assert norm == pytest.approx(5.0)
    assert global_norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    unchanged, _ = clip_by_global_norm(tensors, 10.0)
    np.testing.assert_array_equal(unchanged["b"], [4.0])


def test_average_is_clipped_sum_over_the_expected_client_count() -> None:
    strategy = DPFedAvg(1.0, expected_clients=10, clipping=FixedClipping(1.0), noise=NoNoise())
    start = {"w": np.ones(4), "b": np.zeros(2)}
    strategy.begin_round(start, 1)
    big = {"w": np.ones(4) + np.array([30.0, 40.0, 0, 0]), "b": np.zeros(2)}  # delta norm 50
    small = {"w": np.ones(4) + np.array([0.1, 0, 0, 0]), "b": np.array([0.0, 0.2])}
    strategy.accumulate("a", big, weight=100)
    strategy.accumulate("b", small, weight=1)
    new = strategy.finalize()
    # Only 2 of the expected 10 arrived: the denominator stays 10; weights are ignored.
    expected_w = 1 + (np.array([0.6, 0.8, 0, 0]) + np.array([0.1, 0, 0, 0])) / 10
    np.testing.assert_allclose(new["w"], expected_w)
    np.testing.assert_allclose(new["b"], [0.0, 0.02])
    assert strategy.accepted == 2


@pytest.mark.parametrize("source", ["seeded", "secure"])
def test_noise_std_matches_z_times_s_over_m(source: str) -> None:
    z, s, m = 1.3, 0.7, 10.0
    noise = SeededGaussianNoise(4) if source == "seeded" else SecureGaussianNoise()
    strategy = DPFedAvg(z, expected_clients=m, clipping=FixedClipping(s), noise=noise)
    start = {"w": np.zeros(400_000)}
    strategy.begin_round(start, 1)
    strategy.accumulate("a", start, weight=1.0)
    drawn = strategy.finalize()["w"]
    assert strategy.noise_std == pytest.approx(z * s / m)
    # With 400k draws the sample std is within 0.5% of the truth with overwhelming odds.
    assert np.std(drawn) == pytest.approx(z * s / m, rel=0.005)
    assert abs(np.mean(drawn)) < 5 * (z * s / m) / np.sqrt(drawn.size)


def test_adaptive_noise_split_keeps_the_overall_multiplier() -> None:
    z, sigma_b, s, m = 1.0, 2.0, 0.5, 20.0
    clipping = AdaptiveClipping(initial_clip_norm=s, count_noise_std=sigma_b)
    z_delta = clipping.update_noise_multiplier(z)
    assert (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    strategy = DPFedAvg(z, m, clipping, noise=SeededGaussianNoise(1))
    start = {"w": np.zeros(400_000)}
    strategy.begin_round(start, 1)
    strategy.accumulate("a", start, weight=1.0)
    assert np.std(strategy.finalize()["w"]) == pytest.approx(z_delta * s / m, rel=0.005)


def test_count_noise_too_small_for_the_multiplier_is_refused() -> None:
    with pytest.raises(BastionError, match="must exceed 0.5"):
        DPFedAvg(1.0, 10, AdaptiveClipping(1.0, count_noise_std=0.5))


def test_adaptive_clip_norm_moves_geometrically_toward_the_quantile() -> None:
    clipping = AdaptiveClipping(initial_clip_norm=1.0, target_quantile=0.5, learning_rate=0.2)
    strategy = DPFedAvg(1.0, expected_clients=4, clipping=clipping, noise=NoNoise())
    start = _model()
    strategy.begin_round(start, 1)
    for _ in range(4):  # all four deltas (norm 0.1) fall under the clip norm
        strategy.accumulate("x", {"w": np.full(4, 0.05), "b": np.zeros(2)}, 1.0)
    strategy.finalize()
    assert strategy.clip_norm == pytest.approx(np.exp(-0.2 * (1.0 - 0.5)))


def test_adaptive_clip_norm_tracks_the_median_update_norm() -> None:
    rng = np.random.default_rng(0)
    clipping = AdaptiveClipping(
        initial_clip_norm=0.1, target_quantile=0.5, learning_rate=0.2, count_noise_std=50 / 20
    )
    strategy = DPFedAvg(1.0, expected_clients=50, clipping=clipping, noise=SeededGaussianNoise(3))
    start = {"w": np.zeros(1)}
    for round_number in range(150):
        strategy.begin_round(start, round_number)
        for norm in rng.uniform(0.0, 4.0, size=50):  # median update norm 2.0
            strategy.accumulate("c", {"w": np.array([norm])}, 1.0)
        strategy.finalize()
    assert 1.6 < strategy.clip_norm < 2.4


def test_clip_norm_is_checkpointed() -> None:
    strategy = DPFedAvg(1.0, 4, AdaptiveClipping(1.0), noise=NoNoise())
    strategy.clip_norm = 0.37
    restored = DPFedAvg(1.0, 4, AdaptiveClipping(1.0), noise=NoNoise())
    restored.load_state_dict(strategy.state_dict())
    assert restored.clip_norm == 0.37
    with pytest.raises(BastionError):
        restored.load_state_dict({"other": np.array([1.0])})
    fresh = DPFedAvg(1.0, 4, AdaptiveClipping(0.8), noise=NoNoise())
    fresh.load_state_dict({})  # the initial checkpoint holds no strategy state yet
    assert fresh.clip_norm == 0.8


def test_non_finite_updates_are_rejected() -> None:
    strategy = DPFedAvg(1.0, 4, FixedClipping(1.0), noise=NoNoise())
    strategy.begin_round(_model(), 1)
    with pytest.raises(UpdateRejected, match="not finite"):
        strategy.accumulate("x", {"w": np.array([np.nan, 0, 0, 0]), "b": np.zeros(2)}, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "expected_clients": 4, "clipping": FixedClipping(1.0)},
        {"noise_multiplier": 1.0, "expected_clients": 0, "clipping": FixedClipping(1.0)},
    ],
)
def test_settings_without_privacy_are_refused(kwargs: dict) -> None:
    with pytest.raises(BastionError):
        DPFedAvg(**kwargs)


def test_float32_models_stay_float32() -> None:
    strategy = DPFedAvg(1.0, 4, FixedClipping(1.0), seed=0)
    start = {"w": np.zeros(3, dtype=np.float32)}
    strategy.begin_round(start, 1)
    strategy.accumulate("x", {"w": np.ones(3, dtype=np.float32)}, 1.0)
    assert strategy.finalize()["w"].dtype == np.float32


def test_plan_arguments_build_the_strategy() -> None:
    from bastion.spec.differential_privacy import DPFedAvgArgs

    args = DPFedAvgArgs.model_validate(
        {"noise_multiplier": 1.0, "expected_clients": 100.0, "clip_norm": 0.5, "adaptive": True}
    )
    strategy = DPFedAvg.from_args(args)
    assert isinstance(strategy.clipping, AdaptiveClipping)
    assert strategy.clipping.count_noise_std == 5.0
    assert strategy.clip_norm == 0.5
    fixed = DPFedAvg.from_args(DPFedAvgArgs(noise_multiplier=1.0, expected_clients=10, clip_norm=1))
    assert fixed.noise_std == pytest.approx(0.1)


def test_noise_variance_passes_a_chi_square_test_on_many_samples() -> None:
    """(n-1) s^2 / sigma^2 ~ chi2(n-1) for sigma = z S / m, from the default CSPRNG source."""
    from scipy.stats import chi2

    z, s, m, n = 0.9, 2.5, 7.0, 200_000
    strategy = DPFedAvg(z, expected_clients=m, clipping=FixedClipping(s))  # no seed: CSPRNG
    assert isinstance(strategy._noise, SecureGaussianNoise)
    start = {"w": np.zeros(n)}
    strategy.begin_round(start, 1)
    strategy.accumulate("a", start, weight=1.0)  # a zero delta: the output is the noise
    drawn = strategy.finalize()["w"]
    sigma = z * s / m
    statistic = (n - 1) * np.var(drawn, ddof=1) / sigma**2
    # Two-sided, one in a million: a wrong sigma (even by 1%) lands far outside.
    low, high = chi2.ppf(5e-7, n - 1), chi2.ppf(1 - 5e-7, n - 1)
    assert low < statistic < high
    # Sharp enough to see a 1% error in sigma: the statistic such an error gives on
    # average lies outside the interval (checked on expectations: a check on this draw's
    # statistic would fail whenever the draw sits 1.4 standard deviations low).
    assert not low < (n - 1) * 1.01**2 < high
    assert not low < (n - 1) / 1.01**2 < high


class RecordingNoise:
    """Adds nothing but remembers the std of every draw."""

    def __init__(self) -> None:
        self.stds: list[float] = []

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        self.stds.append(std)
        return np.zeros(shape)


def test_adaptive_count_uses_centred_bits_whose_sensitivity_is_one_half() -> None:
    """Andrew et al. charge the count (2 sigma_b)^-2 of the budget: bits must be b - 1/2."""
    m = 10.0

    def estimate(norms: list[float]) -> float:
        noise = RecordingNoise()
        clipping = AdaptiveClipping(initial_clip_norm=1.0, count_noise_std=3.0)
        strategy = DPFedAvg(1.0, expected_clients=m, clipping=clipping, noise=noise)
        strategy.begin_round({"w": np.zeros(1)}, 1)
        for norm in norms:
            strategy.accumulate("c", {"w": np.array([norm])}, 1.0)
        strategy.finalize()
        assert noise.stds[-1] == 3.0  # the count's noise is sigma_b
        return strategy.clip_norm

    base = [0.5, 0.5, 2.0, 2.0]
    # One client more, whether under (0.5) or over (2.0) the clip norm, moves the centred
    # sum by exactly +-1/2, i.e. the estimate by +-1/(2m).
    for extra in (0.5, 2.0):
        before, after = estimate(base), estimate([*base, extra])
        moved = np.log(before / after) / 0.2  # C' = C exp(-eta (b - gamma)), eta = 0.2
        assert abs(moved) == pytest.approx(0.5 / m)


def test_adaptive_estimate_is_clamped_to_a_fraction() -> None:
    clipping = AdaptiveClipping(initial_clip_norm=1.0, learning_rate=0.2, count_noise_std=1.0)
    strategy = DPFedAvg(1.0, expected_clients=2, clipping=clipping, noise=NoNoise())
    strategy.begin_round({"w": np.zeros(1)}, 1)
    for _ in range(6):  # 6 arrived where 2 were expected: the raw estimate would be 2.0
        strategy.accumulate("c", {"w": np.array([0.1])}, 1.0)
    strategy.finalize()
    assert strategy.clip_norm == pytest.approx(np.exp(-0.2 * (1.0 - 0.5)))
