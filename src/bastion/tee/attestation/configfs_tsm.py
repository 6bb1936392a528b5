"""Real CVM evidence from inside the guest: Linux configfs-tsm, or the SEV guest ioctl.

configfs-tsm (Linux >= 6.7, ``Documentation/ABI/testing/configfs-tsm``): create a directory under
``/sys/kernel/config/tsm/report``, write the 64-byte report data to ``inblob``, read the quote
or report from ``outblob``, the producer from ``provider`` (``tdx_guest`` or ``sev_guest``) and,
for SNP, the certificate table from ``auxblob``; ``generation`` must have advanced by exactly one
between the write and the read, or another writer raced us.

Fallbacks: ``/dev/sev-guest`` answers ``SNP_GET_REPORT`` (``include/uapi/linux/sev-guest.h``)
with a bare report (the verifier then needs the VCEK from AMD's KDS).  ``/dev/tdx_guest`` only
yields a TDREPORT, which is MAC'd for the local quoting enclave, not a remotely verifiable
quote, so TDX needs configfs-tsm (or the platform's quote generation service behind it).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from bastion.tee.attestation.errors import EvidenceUnavailable
from bastion.tee.attestation.providers import Evidence, EvidenceKind
from bastion.tee.attestation.snp import REPORT_SIZE

logger = logging.getLogger(__name__)

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")
TDX_GUEST_DEVICE = Path("/dev/tdx_guest")
CvmKind = Literal["tdx", "snp"]
_PROVIDERS: dict[str, CvmKind] = {"tdx_guest": "tdx", "sev_guest": "snp"}
MAX_OUTBLOB = 128 * 1024


class ConfigfsTsmProvider:
    """Asks the kernel's configfs-tsm interface for a TDX quote or an SNP report (+ certs)."""

    def __init__(self, kind: CvmKind, root: Path = TSM_REPORT_DIR) -> None:
        self.kind = kind
        self.root = Path(root)

    def available(self) -> bool:
        return self.root.is_dir()

    def quote(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise EvidenceUnavailable(
                f"report data must be 64 bytes, got {len(report_data)}", reason="binding"
            )
        if not self.available():
            raise EvidenceUnavailable(
                f"{self.root} does not exist: this is not a confidential VM with configfs-tsm "
                "(Linux >= 6.7 with the tdx_guest or sev_guest driver loaded, configfs mounted)"
            )
        entry = self.root / f"bastion-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._create(entry)
        except OSError as exc:
            raise EvidenceUnavailable(f"cannot create {entry} ({exc}): run as root") from exc
        try:
            before = _read_int(entry / "generation")
            self._write_inblob(entry, report_data)
            outblob = _read(entry / "outblob")
            provider = _read(entry / "provider").decode("ascii", "replace").strip()
            auxblob = b""
            if self.kind == "snp" and (entry / "auxblob").exists():
                auxblob = _read(entry / "auxblob")
            after = _read_int(entry / "generation")
        except OSError as exc:
            raise EvidenceUnavailable(f"configfs-tsm at {entry} failed: {exc}") from exc
        finally:
            try:
                self._remove(entry)
            except OSError as exc:
                logger.warning("could not remove %s: %s", entry, exc)
        if after != before + 1:
            raise EvidenceUnavailable(
                f"configfs-tsm generation went from {before} to {after}: another process wrote "
                "the report request at the same time; retry"
            )
        produced = _PROVIDERS.get(provider)
        if produced != self.kind:
            raise EvidenceUnavailable(
                f"configfs-tsm provider is {provider!r}, but the plan says this party is "
                f"{self.kind}: fix attestation.provider"
            )
        if not outblob:
            raise EvidenceUnavailable("configfs-tsm returned empty evidence")
        kind: EvidenceKind = self.kind
        return Evidence(kind=kind, quote=outblob + auxblob if self.kind == "snp" else outblob)

    def _create(self, entry: Path) -> None:
        """mkdir in configfs: the kernel populates the report's attributes."""
        entry.mkdir()

    def _write_inblob(self, entry: Path, report_data: bytes) -> None:
        """Writing ``inblob`` makes the kernel produce ``outblob`` on the next read."""
        (entry / "inblob").write_bytes(report_data)

    def _remove(self, entry: Path) -> None:
        """rmdir in configfs drops the report with its attributes."""
        entry.rmdir()


# --- /dev/sev-guest ------------------------------------------------------------------------


class _SnpReportReq(ctypes.Structure):
    _fields_ = [
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class _SnpReportResp(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class _SnpGuestRequestIoctl(ctypes.Structure):
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


def _iowr(kind: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | number


SNP_GET_REPORT = _iowr(ord("S"), 0x0, ctypes.sizeof(_SnpGuestRequestIoctl))
IoctlFunction = Callable[[int, int, ctypes.Structure], int]


class SevGuestProvider:
    """SNP_GET_REPORT on ``/dev/sev-guest``: a bare report at VMPL ``vmpl`` (no certificates)."""

    def __init__(
        self,
        device: Path = SEV_GUEST_DEVICE,
        *,
        vmpl: int = 0,
        ioctl: IoctlFunction | None = None,
    ) -> None:
        self.device = Path(device)
        self.vmpl = vmpl
        self._ioctl: IoctlFunction = ioctl or fcntl.ioctl

    def quote(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise EvidenceUnavailable(f"report data must be 64 bytes, got {len(report_data)}")
        request = _SnpReportReq()
        ctypes.memmove(request.user_data, report_data, 64)
        request.vmpl = self.vmpl
        response = _SnpReportResp()
        call = _SnpGuestRequestIoctl(
            msg_version=1,
            req_data=ctypes.addressof(request),
            resp_data=ctypes.addressof(response),
        )
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise EvidenceUnavailable(
                f"cannot open {self.device} ({exc.strerror}): not an SEV-SNP guest, or the "
                "sev-guest module is not loaded (modprobe sev-guest)"
            ) from exc
        try:
            self._ioctl(fd, SNP_GET_REPORT, call)
        except OSError as exc:
            raise EvidenceUnavailable(
                f"SNP_GET_REPORT failed: {errno.errorcode.get(exc.errno or 0, exc.errno)} "
                f"(firmware/VMM error {call.exitinfo2:#x})"
            ) from exc
        finally:
            os.close(fd)
        raw = bytes(response.data)
        status = int.from_bytes(raw[0:4], "little")
        size = int.from_bytes(raw[4:8], "little")
        if status != 0 or size != REPORT_SIZE:
            raise EvidenceUnavailable(
                f"the SEV firmware answered status {status:#x} with a {size}-byte report"
            )
        return Evidence(kind="snp", quote=raw[32 : 32 + REPORT_SIZE])


def cvm_provider(kind: CvmKind) -> ConfigfsTsmProvider | SevGuestProvider:
    """The best available provider for ``kind`` here, or a one-line reason why there is none."""
    tsm = ConfigfsTsmProvider(kind)
    if tsm.available():
        return tsm
    if kind == "snp" and SEV_GUEST_DEVICE.exists():
        return SevGuestProvider()
    if kind == "tdx" and TDX_GUEST_DEVICE.exists():
        raise EvidenceUnavailable(
            f"{TDX_GUEST_DEVICE} exists but {TSM_REPORT_DIR} does not: a TDX quote needs "
            "configfs-tsm (Linux >= 6.7, mount -t configfs none /sys/kernel/config)"
        )
    device = SEV_GUEST_DEVICE if kind == "snp" else TDX_GUEST_DEVICE
    raise EvidenceUnavailable(
        f"no {kind.upper()} evidence source here: neither {TSM_REPORT_DIR} nor {device} exists "
        "(not a confidential VM); use a simulated provider for development"
    )


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_OUTBLOB + 1)
    if len(data) > MAX_OUTBLOB:
        raise EvidenceUnavailable(f"{path} returned over {MAX_OUTBLOB} bytes")
    return data


def _read_int(path: Path) -> int:
    text = _read(path).decode("ascii", "replace").strip()
    try:
        return int(text)
    except ValueError as exc:
        raise EvidenceUnavailable(f"{path} holds {text!r}, not a number") from exc
