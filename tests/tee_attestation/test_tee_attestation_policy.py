"""The plan's `attestation:` section: strict, named errors, and no policy that accepts anything."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from bastion.tee.attestation import AttestationPolicy


def test_defaults_are_strict() -> None:
    policy = AttestationPolicy()
    assert policy.required is False
    assert policy.allow_debug is False and policy.allow_simulated is False
    assert policy.collateral == "pccs"
    assert policy.allowed_tcb_statuses == ["UpToDate"]
    assert policy.nonce_ttl_seconds == 60


def test_loads_from_plan_yaml_and_normalises_hex() -> None:
    text = f"""
    required: true
    mrenclave: ["{"AB" * 32}"]
    mrsigner: "{"cd" * 32}"
    isv_prod_id: 1
    min_isv_svn: 2
    collateral: none
    """
    policy = AttestationPolicy.model_validate(yaml.safe_load(text))
    assert policy.mrenclave == ["ab" * 32]
    assert policy.mrsigner == "cd" * 32
    assert policy.pins_identity


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"mrenclave": ["abc"]}, "mrenclave"),
        ({"mrenclave": ["zz" * 32]}, "mrenclave"),
        ({"mrsigner": "ab" * 31, "isv_prod_id": 1}, "mrsigner"),
    ],
)
def test_bad_hex_names_the_field(fields: dict, field_name: str) -> None:
    with pytest.raises(ValidationError) as info:
        AttestationPolicy(**fields)
    assert field_name in str(info.value)
    assert "64 hex characters" in str(info.value)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="mr_enclave"):
        AttestationPolicy.model_validate({"mr_enclave": ["ab" * 32]})


def test_required_policy_must_pin_an_enclave() -> None:
    with pytest.raises(ValidationError, match="pins no enclave"):
        AttestationPolicy(required=True)


def test_mrsigner_needs_a_product_id() -> None:
    with pytest.raises(ValidationError, match="isv_prod_id"):
        AttestationPolicy(mrsigner="ab" * 32)
    with pytest.raises(ValidationError, match="mrsigner"):
        AttestationPolicy(mrenclave=["ab" * 32], isv_prod_id=3)


@pytest.mark.parametrize(
    "fields",
    [
        {"allowed_tcb_statuses": ["Revoked"]},
        {"allowed_tcb_statuses": []},
        {"collateral": "intel"},
        {"pccs_url": "ftp://pccs.local"},
        {"nonce_ttl_seconds": 0},
        {"min_isv_svn": 70000},
    ],
)
def test_invalid_settings_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        AttestationPolicy(mrenclave=["ab" * 32], **fields)
