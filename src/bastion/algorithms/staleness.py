"""Staleness weights s(τ) for buffered asynchronous aggregation.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation" (FedBuff),
weight an update that started τ server steps ago by s(τ), with the functions of Xie et
al. 2019 ("Asynchronous Federated Optimization"):

    constant:    s(τ) = 1
    polynomial:  s(τ) = (1 + τ)^-a                      (FedBuff's default: a = 0.5)
    hinge:       s(τ) = 1 if τ <= b, else 1 / (a (τ - b) + 1)
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.spec.asynchronous import StalenessSpec

#: s(τ): the weight of an update τ >= 0 versions stale.
StalenessFunction = Callable[[int], float]


def constant(tau: int) -> float:
    """s(τ) = 1: every update counts fully, however old."""
    _check(tau)
    return 1.0


def polynomial(a: float) -> StalenessFunction:
    """s(τ) = (1 + τ)^-a."""

    def weight(tau: int) -> float:
        _check(tau)
        return float((1.0 + tau) ** -a)

    return weight


def hinge(a: float, b: int) -> StalenessFunction:
    """s(τ) = 1 for τ <= b, else 1 / (a (τ - b) + 1)."""

    def weight(tau: int) -> float:
        _check(tau)
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)

    return weight


def staleness_function(spec: StalenessSpec) -> StalenessFunction:
    """The plan's ``asynchronous.staleness`` as a function of τ."""
    if spec.function == "constant":
        return constant
    if spec.function == "polynomial":
        return polynomial(spec.a)
    return hinge(spec.a, spec.b)


def _check(tau: int) -> None:
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
