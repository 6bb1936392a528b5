"""The legacy MXNet template federates over mTLS: 2 collaborators, real processes, real data.

MXNet 1.9.1 imports only with NumPy below 1.24, so this file runs in ``.venv-mxnet``
(``make test`` does that), which holds Bastion's core, mxnet and pytest and nothing
else: it also proves the core works on NumPy 1.23. The main venv skips it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mxnet", reason="MXNet runs in .venv-mxnet: `make test` runs this file there")

from support.federations import run_template_federation  # noqa: E402


def test_this_venv_is_the_legacy_one() -> None:
    """The point of the separate venv: the core on NumPy 1.23, as mxnet==1.9.1 requires."""
    assert np.lib.NumpyVersion(np.__version__) < "1.24.0"
    for framework in ("torch", "tensorflow", "jax", "transformers", "keras"):
        with pytest.raises(ImportError):
            __import__(framework)


@pytest.mark.slow
def test_mxnet_template_federation_improves(tmp_path: Path) -> None:
    run = run_template_federation(
        tmp_path, "mxnet_mlp_digits", "bastion.runners.mxnet", "mxnet", rounds=3
    )
    assert len(run.accuracy) == 4
    assert run.accuracy[-1] >= 0.85 > run.accuracy[0]
