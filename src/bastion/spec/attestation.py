"""Which enclaves a federation accepts: the `attestation:` section of `plan.yaml`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.spec.snp_policy import SnpPolicy
from bastion.spec.strict import Strict
from bastion.spec.tdx_policy import TdxPolicy

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
_MEASUREMENT_HEX_LENGTH = 64


class AttestationPolicy(BaseModel):
    """Pins enclave identity (MRENCLAVE and/or MRSIGNER + product + minimum SVN) and collateral.

    When both `mrenclave` and `mrsigner` are set, a quote must satisfy both.  `collateral: none`
    skips TCB and revocation checks (offline federations); results then say so explicitly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool = False
    mrenclave: list[str] = Field(default_factory=list)
    mrsigner: str | None = None
    isv_prod_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    min_isv_svn: int = Field(default=0, ge=0, le=0xFFFF)
    allow_debug: bool = False
    allow_simulated: bool = False
    collateral: Literal["none", "pccs"] = "pccs"
    pccs_url: str = INTEL_PCS_URL
    allowed_tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])
    nonce_ttl_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Confidential VMs: a section present means that evidence kind is accepted.
    tdx: TdxPolicy | None = None
    snp: SnpPolicy | None = None

    @field_validator("mrenclave")
    @classmethod
    def _mrenclave_hex(cls, values: list[str]) -> list[str]:
        return [_measurement("mrenclave", value) for value in values]

    @field_validator("mrsigner")
    @classmethod
    def _mrsigner_hex(cls, value: str | None) -> str | None:
        return None if value is None else _measurement("mrsigner", value)

    @field_validator("pccs_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"pccs_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("allowed_tcb_statuses")
    @classmethod
    def _statuses(cls, values: list[str]) -> list[str]:
        unknown = sorted(set(values) - set(TCB_STATUSES))
        if unknown:
            raise ValueError(
                f"allowed_tcb_statuses has unknown status(es) {unknown}; "
                f"choose from {list(TCB_STATUSES)} (Revoked is never accepted)"
            )
        if not values:
            raise ValueError("allowed_tcb_statuses must name at least one status (e.g. UpToDate)")
        return values

    @model_validator(mode="after")
    def _pins_identity(self) -> AttestationPolicy:
        if self.mrsigner is not None and self.isv_prod_id is None:
            raise ValueError(
                "mrsigner is set without isv_prod_id: that would accept every enclave the "
                "signer ever built; set isv_prod_id (and min_isv_svn)"
            )
        if self.isv_prod_id is not None and self.mrsigner is None:
            raise ValueError("isv_prod_id only means something together with mrsigner")
        if self.required and not self.pins_identity:
            raise ValueError(
                "attestation is required but the policy pins no enclave: set mrenclave, "
                "or mrsigner with isv_prod_id (SGX), or a tdx or snp section"
            )
        return self

    @property
    def pins_identity(self) -> bool:
        """True when the policy names at least one acceptable enclave or CVM identity."""
        return self.pins_sgx or self.tdx is not None or self.snp is not None

    @property
    def pins_sgx(self) -> bool:
        """True when SGX enclaves are accepted (an MRENCLAVE or MRSIGNER is pinned)."""
        return bool(self.mrenclave) or self.mrsigner is not None


def _measurement(field: str, value: str) -> str:
    text = value.strip().lower()
    if len(text) != _MEASUREMENT_HEX_LENGTH or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(
            f"{field} must be {_MEASUREMENT_HEX_LENGTH} hex characters (a SHA-256 measurement, "
            f"as printed by `gramine-sgx-sigstruct-view`), got {value!r}"
        )
    return text


class AttestationSpec(Strict):
    """Remote attestation: what this federation accepts, and how each party proves itself."""

    policy: AttestationPolicy
    provider: Literal["sgx-dcap", "simulated", "tdx", "snp", "simulated-tdx", "simulated-snp"] = (
        Field(default="sgx-dcap", description="evidence source of the party running this plan")
    )
    simulated_dir: str | None = Field(
        default=None, description="simulated key hierarchy (development only; policy must allow it)"
    )

    @model_validator(mode="after")
    def _simulated_needs_keys(self) -> AttestationSpec:
        if self.provider.startswith("simulated") and not self.simulated_dir:
            raise ValueError(
                f"attestation.provider '{self.provider}' needs attestation.simulated_dir"
            )
        return self
