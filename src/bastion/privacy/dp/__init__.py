"""Differential privacy: clipping, noise, accounting and DP-SGD; the DP-FedAvg strategy built
from them is ``bastion.algorithms.dp_fedavg``."""

from bastion.privacy.dp.accountant import PrivacyAccountant, PrivacyBudget
from bastion.privacy.dp.clipping import AdaptiveClipping, FixedClipping
from bastion.privacy.dp.noise import SecureGaussianNoise, SeededGaussianNoise

__all__ = [
    "AdaptiveClipping",
    "FixedClipping",
    "PrivacyAccountant",
    "PrivacyBudget",
    "SecureGaussianNoise",
    "SeededGaussianNoise",
]
