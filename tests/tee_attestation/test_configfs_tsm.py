"""Evidence providers inside a CVM: configfs-tsm (emulated here as the kernel documents it) and
the SNP_GET_REPORT ioctl (with the kernel's reply written by a stand-in ioctl)."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest

from bastion.tee.attestation import EvidenceUnavailable
from bastion.tee.attestation.configfs_tsm import (
    SNP_GET_REPORT,
    ConfigfsTsmProvider,
    SevGuestProvider,
    _SnpGuestRequestIoctl,
    _SnpReportReq,
)

REPORT_DATA = bytes(range(64))


class FakeKernel(ConfigfsTsmProvider):
    """configfs-tsm as Documentation/ABI/testing/configfs-tsm describes it: mkdir creates the
    attributes, a write to inblob bumps generation and makes outblob the evidence for it."""

    def __init__(self, root: Path, provider: str, *, racing: bool = False) -> None:
        super().__init__("snp" if provider == "sev_guest" else "tdx", root)
        self.provider = provider
        self.racing = racing
        self.entries: list[Path] = []

    def _create(self, entry: Path) -> None:
        entry.mkdir()
        self.entries.append(entry)
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(self.provider + "\n")
        if self.provider == "sev_guest":
            (entry / "auxblob").write_bytes(b"CERTIFICATE-TABLE")

    def _remove(self, entry: Path) -> None:
        shutil.rmtree(entry)  # configfs' rmdir drops the attributes too

    def _write_inblob(self, entry: Path, report_data: bytes) -> None:
        (entry / "inblob").write_bytes(report_data)
        (entry / "outblob").write_bytes(b"EVIDENCE:" + report_data)
        (entry / "generation").write_text("2\n" if self.racing else "1\n")


def test_a_tdx_quote_comes_from_outblob(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, "tdx_guest")
    evidence = kernel.quote(REPORT_DATA)
    assert evidence.kind == "tdx" and evidence.quote == b"EVIDENCE:" + REPORT_DATA
    assert not kernel.entries[0].exists()  # the request directory is removed afterwards


def test_snp_evidence_is_the_report_followed_by_the_auxblob_certificates(tmp_path: Path) -> None:
    evidence = FakeKernel(tmp_path, "sev_guest").quote(REPORT_DATA)
    assert evidence.kind == "snp"
    assert evidence.quote == b"EVIDENCE:" + REPORT_DATA + b"CERTIFICATE-TABLE"


def test_a_racing_writer_is_detected_by_generation(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="generation went from 0 to 2"):
        FakeKernel(tmp_path, "tdx_guest", racing=True).quote(REPORT_DATA)


def test_the_wrong_provider_is_refused(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, "sev_guest")
    kernel.kind = "tdx"
    with pytest.raises(EvidenceUnavailable, match="provider is 'sev_guest'"):
        kernel.quote(REPORT_DATA)


def test_without_configfs_tsm_the_message_says_why(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="not a confidential VM"):
        ConfigfsTsmProvider("tdx", tmp_path / "missing").quote(REPORT_DATA)


def test_report_data_must_be_64_bytes(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable):
        FakeKernel(tmp_path, "tdx_guest").quote(b"short")


def test_snp_get_report_ioctl_number_and_layout() -> None:
    # _IOWR('S', 0x0, struct snp_guest_request_ioctl) from include/uapi/linux/sev-guest.h
    assert SNP_GET_REPORT == 0xC0205300
    assert ctypes.sizeof(_SnpGuestRequestIoctl) == 32 and ctypes.sizeof(_SnpReportReq) == 96


def test_sev_guest_reads_the_report_from_the_firmware_reply(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    report = bytes([2, 0, 0, 0]) + bytes(1180)
    seen: dict[str, object] = {}

    def ioctl(fd: int, request: int, call: _SnpGuestRequestIoctl) -> int:
        seen["request"] = request
        sent = _SnpReportReq.from_address(call.req_data)
        seen["user_data"] = bytes(sent.user_data)
        reply = (0).to_bytes(4, "little") + len(report).to_bytes(4, "little") + bytes(24) + report
        ctypes.memmove(call.resp_data, reply, len(reply))
        return 0

    evidence = SevGuestProvider(device, ioctl=ioctl).quote(REPORT_DATA)
    assert seen == {"request": SNP_GET_REPORT, "user_data": REPORT_DATA}
    assert evidence.kind == "snp" and evidence.quote == report


def test_sev_guest_firmware_errors_are_evidence_unavailable(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")

    def failing(fd: int, request: int, call: _SnpGuestRequestIoctl) -> int:
        call.exitinfo2 = 0x16
        raise OSError(5, "I/O error")

    with pytest.raises(EvidenceUnavailable, match="SNP_GET_REPORT failed"):
        SevGuestProvider(device, ioctl=failing).quote(REPORT_DATA)
    with pytest.raises(EvidenceUnavailable, match="not an SEV-SNP guest"):
        SevGuestProvider(tmp_path / "absent").quote(REPORT_DATA)
