"""Where evidence comes from: Gramine's DCAP pseudo-files inside an enclave, or the simulator."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from bastion.tee.attestation.errors import AttestationError, EvidenceUnavailable
from bastion.tee.attestation.quote import DEBUG_FLAG, MAX_QUOTE_SIZE, REPORT_DATA_SIZE, ReportBody
from bastion.tee.attestation.simulated import SimulatedHierarchy

logger = logging.getLogger(__name__)

EvidenceKind = Literal[
    "sgx-dcap", "simulated-sgx-dcap", "tdx", "simulated-tdx", "snp", "simulated-snp"
]
GRAMINE_ATTESTATION_DIR = Path("/dev/attestation")
_NOT_IN_ENCLAVE = "not running inside a Gramine SGX enclave with DCAP"


@dataclass(frozen=True)
class Evidence:
    """A quote and what produced it.  `kind` is a label for logs; the verifier trusts only
    signatures (simulated evidence chains to the simulated root, never to Intel's)."""

    kind: EvidenceKind
    quote: bytes


class EvidenceProvider(Protocol):
    """Produces a quote whose REPORTDATA is `report_data` (64 bytes, see `report_data_for`)."""

    def quote(self, report_data: bytes) -> Evidence:
        """Return evidence, or raise `EvidenceUnavailable`."""
        ...


class GramineDcapProvider:
    """Asks Gramine's `/dev/attestation` pseudo-files for a DCAP quote (Gramine >= 1.0)."""

    def __init__(self, attestation_dir: Path = GRAMINE_ATTESTATION_DIR) -> None:
        self.attestation_dir = Path(attestation_dir)

    def quote(self, report_data: bytes) -> Evidence:
        """Write REPORTDATA to `user_report_data`, then read the quote Gramine produced."""
        _check_report_data(report_data)
        self._require_dcap()
        try:
            (self.attestation_dir / "user_report_data").write_bytes(report_data)
            with (self.attestation_dir / "quote").open("rb") as handle:
                quote = handle.read(MAX_QUOTE_SIZE + 1)
        except OSError as exc:
            raise EvidenceUnavailable(
                f"Gramine could not produce a DCAP quote via {self.attestation_dir} ({exc}); "
                "check that the platform's DCAP quote provider (PCCS) is configured"
            ) from exc
        if not quote or len(quote) > MAX_QUOTE_SIZE:
            raise EvidenceUnavailable(
                f"Gramine returned a {len(quote)}-byte quote from {self.attestation_dir / 'quote'}"
            )
        return Evidence(kind="sgx-dcap", quote=quote)

    def _require_dcap(self) -> None:
        type_file = self.attestation_dir / "attestation_type"
        try:
            attestation_type = type_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise EvidenceUnavailable(
                f"{_NOT_IN_ENCLAVE}: {type_file} cannot be read. Run the role under "
                '`gramine-sgx` with `sgx.remote_attestation = "dcap"` in the manifest, or use '
                "simulated attestation for testing"
            ) from exc
        if attestation_type != "dcap":
            raise EvidenceUnavailable(
                f"{_NOT_IN_ENCLAVE}: Gramine reports attestation type {attestation_type!r}; set "
                '`sgx.remote_attestation = "dcap"` in the Gramine manifest'
            )


class SimulatedProvider:
    """Produces DCAP-layout quotes signed by a local hierarchy, for tests and demos only."""

    def __init__(
        self,
        hierarchy: SimulatedHierarchy,
        *,
        mr_enclave: bytes | str,
        mr_signer: bytes | str,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
    ) -> None:
        self.hierarchy = hierarchy
        self._identity = ReportBody(
            mr_enclave=_measurement(mr_enclave, "mr_enclave"),
            mr_signer=_measurement(mr_signer, "mr_signer"),
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            flags=0x5 | (DEBUG_FLAG if debug else 0),  # INIT | MODE64BIT (| DEBUG)
            xfrm=0x7,
        )

    def quote(self, report_data: bytes) -> Evidence:
        """A simulated quote over this provider's enclave identity and `report_data`."""
        _check_report_data(report_data)
        body = dataclasses.replace(self._identity, report_data=bytes(report_data))
        logger.warning(
            "SIMULATED attestation: producing a quote for mrenclave=%s without SGX hardware",
            body.mr_enclave.hex(),
        )
        return Evidence(kind="simulated-sgx-dcap", quote=self.hierarchy.sign_quote(body))


def _check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise EvidenceUnavailable(
            f"report data must be {REPORT_DATA_SIZE} bytes (see report_data_for), "
            f"got {len(report_data)}",
            reason="binding",
        )


def _measurement(value: bytes | str, name: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    except ValueError as exc:
        raise AttestationError(f"{name} is not hex: {value!r}", reason="config") from exc
    if len(raw) != 32:
        raise AttestationError(
            f"{name} must be 32 bytes (64 hex characters), got {len(raw)} bytes", reason="config"
        )
    return raw
