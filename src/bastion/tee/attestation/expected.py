"""Expected CVM measurements from files Bastion can hash, for the plan's `tdx` and `snp` policy.

* TDX RTMRs: ``TDG.MR.RTMR.EXTEND`` sets ``RTMR = SHA-384(RTMR || SHA-384(event))`` from an all-zero
  start (Intel TDX Module ABI specification).  Given the events a workload extends, in order (for
  RTMR3: what the container's launcher measures), `replay_rtmr` computes the value to pin.
  RTMR0..2 hold the firmware's own measurements of configuration, kernel, command line and initrd;
  their values depend on the firmware's event log format, so pin them from a reference boot
  (the quote's values, or the CCEL event log) rather than from these files.
* SNP launch digest: computed by AMD's reference implementation as packaged by virtee's
  ``sev-snp-measure`` (optional extra ``bastion-fl[cvm]``) from OVMF, kernel, initrd, command line,
  vCPU count and type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from bastion.errors import BastionError

RTMR_SIZE = 48


def replay_rtmr(events: Iterable[bytes], initial: bytes = bytes(RTMR_SIZE)) -> bytes:
    """The RTMR after extending the SHA-384 digest of each event, in order."""
    if len(initial) != RTMR_SIZE:
        raise BastionError(f"an RTMR is {RTMR_SIZE} bytes, got {len(initial)}")
    value = initial
    for event in events:
        value = hashlib.sha384(value + hashlib.sha384(event).digest()).digest()
    return value


def rtmr_of_files(paths: Iterable[Path]) -> bytes:
    """`replay_rtmr` over the contents of ``paths`` (each file is one event)."""
    contents = []
    for path in paths:
        try:
            contents.append(Path(path).read_bytes())
        except OSError as exc:
            raise BastionError(f"cannot read {path}: {exc.strerror or exc}") from None
    return replay_rtmr(contents)


def snp_launch_digest(
    *,
    ovmf: Path,
    vcpus: int,
    vcpu_type: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    guest_features: int = 0x1,
) -> bytes:
    """SEV-SNP MEASUREMENT of a QEMU guest, via sev-snp-measure (needs ``bastion-fl[cvm]``)."""
    try:
        from sevsnpmeasure import guest, vcpu_types
        from sevsnpmeasure.sev_mode import SevMode
        from sevsnpmeasure.vmm_types import VMMType
    except ImportError:
        raise BastionError(
            "computing an SNP launch digest needs sev-snp-measure: pip install 'bastion-fl[cvm]'"
        ) from None
    signatures = vcpu_types.CPU_SIGS
    if vcpu_type not in signatures:
        raise BastionError(
            f"unknown vCPU type {vcpu_type!r}; choose from {', '.join(sorted(signatures))}"
        )
    for path in (ovmf, kernel, initrd):
        if path is not None and not Path(path).is_file():
            raise BastionError(f"{path} not found")
    if vcpus < 1:
        raise BastionError("--vcpus must be at least 1")
    try:
        digest: bytes = guest.calc_launch_digest(
            SevMode.SEV_SNP,
            vcpus,
            signatures[vcpu_type],
            str(ovmf),
            str(kernel) if kernel else None,
            str(initrd) if initrd else None,
            append,
            guest_features,
            vmm_type=VMMType.QEMU,
        )
    except (ValueError, RuntimeError, AssertionError, OSError, KeyError) as exc:
        raise BastionError(f"sev-snp-measure could not measure {ovmf}: {exc}") from None
    return digest
