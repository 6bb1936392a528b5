"""Which AMD SEV-SNP guests a federation accepts: ``attestation.policy.snp`` in plan.yaml.

``measurement`` is the launch digest (SHA-384) the AMD secure processor computed over the
guest's initial memory and VMSAs (``bastion tee expected-measurement snp`` computes it with
``sev-snp-measure``).  The guest policy bits (SEV-SNP ABI specification, ``GUEST_POLICY``)
refuse debug and the migration agent unless allowed; ``min_tcb`` bounds REPORTED_TCB.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SNP_MEASUREMENT_HEX = 96


class MinimumTcb(BaseModel):
    """Lowest security patch levels accepted, per firmware component (0..255 each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootloader: int = Field(default=0, ge=0, le=255)
    tee: int = Field(default=0, ge=0, le=255)
    snp: int = Field(default=0, ge=0, le=255)
    microcode: int = Field(default=0, ge=0, le=255)
    fmc: int = Field(default=0, ge=0, le=255)


class SnpPolicy(BaseModel):
    """Pins an SNP guest's launch measurement, host data, key digests, policy bits and TCB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measurement: list[str]
    host_data: list[str] | None = None
    id_key_digest: list[str] | None = None
    author_key_digest: list[str] | None = None
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    min_guest_svn: int = Field(default=0, ge=0, le=0xFFFFFFFF)
    min_tcb: MinimumTcb = Field(default_factory=MinimumTcb)
    vmpl: list[int] = Field(default_factory=lambda: [0])

    @field_validator("measurement", "id_key_digest", "author_key_digest")
    @classmethod
    def _sha384s(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else [_hex(v, SNP_MEASUREMENT_HEX) for v in values]

    @field_validator("host_data")
    @classmethod
    def _host_data(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else [_hex(v, 64) for v in values]

    @field_validator("vmpl")
    @classmethod
    def _vmpls(cls, values: list[int]) -> list[int]:
        if not values or any(not 0 <= v <= 3 for v in values):
            raise ValueError(f"vmpl lists the allowed VMPLs, each 0..3, got {values}")
        return values

    @model_validator(mode="after")
    def _pins_measurement(self) -> SnpPolicy:
        if not self.measurement:
            raise ValueError(
                "the snp policy pins no launch measurement: list allowed values "
                "(`bastion tee expected-measurement snp` computes them)"
            )
        return self


def _hex(value: str, length: int) -> str:
    text = value.strip().lower()
    if len(text) != length or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"expected {length} hex characters, got {value!r}")
    return text
