"""Differential privacy: DP-FedAvg on the server, DP-SGD on collaborators, and accounting."""

from bastion.privacy.dp.accountant import PrivacyAccountant, PrivacyBudget
from bastion.privacy.dp.central import DPFedAvg
from bastion.privacy.dp.clipping import AdaptiveClipping, FixedClipping
from bastion.privacy.dp.noise import SecureGaussianNoise, SeededGaussianNoise

__all__ = [
    "AdaptiveClipping",
    "DPFedAvg",
    "FixedClipping",
    "PrivacyAccountant",
    "PrivacyBudget",
    "SecureGaussianNoise",
    "SeededGaussianNoise",
]
