"""Which Intel TDX trust domains a federation accepts: ``attestation.policy.tdx`` in plan.yaml.

Every measurement key takes a list of allowed values (hex, 48 bytes) or the word ``any``.  MRTD
is the TD's initial image (firmware, as loaded by the host); RTMR0..3 are extended at boot
(RTMR0: firmware configuration, RTMR1: kernel, RTMR2: kernel command line and initrd, RTMR3:
free for the workload).  A policy must pin MRTD or at least one RTMR.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TD_MEASUREMENT_HEX = 96
Pinned = list[str] | Literal["any"]


class MaskedBits(BaseModel):
    """A 64-bit field that must equal ``value`` in the bits set in ``mask``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: str
    mask: str = "ffffffffffffffff"

    @field_validator("value", "mask")
    @classmethod
    def _hex64(cls, text: str) -> str:
        cleaned = text.strip().lower().removeprefix("0x")
        if not 1 <= len(cleaned) <= 16 or any(c not in "0123456789abcdef" for c in cleaned):
            raise ValueError(f"must be a 64-bit hexadecimal number, got {text!r}")
        return cleaned.rjust(16, "0")

    def accepts(self, actual: int) -> bool:
        mask = int(self.mask, 16)
        return actual & mask == int(self.value, 16) & mask


class TdxPolicy(BaseModel):
    """Pins a TD's measurements, the TDX module, debug, XFAM/TD attributes and TCB statuses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mrtd: Pinned = "any"
    rtmr0: Pinned = "any"
    rtmr1: Pinned = "any"
    rtmr2: Pinned = "any"
    rtmr3: Pinned = "any"
    mrconfigid: Pinned = "any"
    mrowner: Pinned = "any"
    mrownerconfig: Pinned = "any"
    mrseam: Pinned = "any"
    mrsignerseam: Pinned = "any"
    # TD 1.5: a bound service TD (e.g. a migration TD) can export the TD's state; none by default.
    mrservicetd: Pinned = Field(default_factory=lambda: ["00" * 48])
    allow_debug: bool = False
    xfam: MaskedBits | None = None
    td_attributes: MaskedBits | None = None
    allowed_tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])

    @field_validator(
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "mrseam",
        "mrsignerseam",
        "mrservicetd",
    )
    @classmethod
    def _measurements(cls, value: Pinned) -> Pinned:
        if value == "any":
            return value
        if not value:
            raise ValueError("an empty list accepts nothing; list values or write `any`")
        return [_td_measurement(item) for item in value]

    @field_validator("allowed_tcb_statuses")
    @classmethod
    def _statuses(cls, values: list[str]) -> list[str]:
        from bastion.spec.attestation import TCB_STATUSES

        unknown = sorted(set(values) - set(TCB_STATUSES))
        if unknown or not values:
            raise ValueError(
                f"allowed_tcb_statuses must name statuses from {list(TCB_STATUSES)}, got {values}"
            )
        return values

    @model_validator(mode="after")
    def _pins_something(self) -> TdxPolicy:
        if all(
            getattr(self, name) == "any" for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
        ):
            raise ValueError(
                "the tdx policy pins no measurement: list allowed mrtd values (and RTMRs); "
                "`bastion tee expected-measurement` computes them"
            )
        return self


def allowed(pinned: Pinned, actual: bytes) -> bool:
    """True when ``actual`` is one of the pinned values, or the policy says ``any``."""
    return pinned == "any" or actual.hex() in pinned


def _td_measurement(value: str) -> str:
    text = value.strip().lower()
    if len(text) != TD_MEASUREMENT_HEX or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(
            f"a TDX measurement is {TD_MEASUREMENT_HEX} hex characters (SHA-384), got {value!r}"
        )
    return text
