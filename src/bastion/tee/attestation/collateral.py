"""Verification collateral (TCB info, QE identity, CRLs) and a provider that fetches it over HTTP.

Endpoints follow Intel's "Provisioning Certification Service for ECDSA Attestation" API v4, which
a PCCS (Provisioning Certificate Caching Service) mirrors under the same paths.  Everything
fetched is signed by Intel; `bastion.tee.attestation.tcb` checks those signatures, so the
transport only needs to deliver bytes.
"""

from __future__ import annotations

import binascii
import contextlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography import x509

from bastion.spec.attestation import INTEL_PCS_URL
from bastion.tee.attestation.errors import CollateralError, QuoteFormatError
from bastion.tee.attestation.pck import load_pem_chain

INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
MAX_RESPONSE_BYTES = 1024 * 1024
PckCa = Literal["processor", "platform"]
HttpGet = Callable[[str], tuple[bytes, Mapping[str, str]]]


@dataclass(frozen=True)
class Collateral:
    """Everything needed to judge a platform's TCB level and revocation state."""

    tcb_info: bytes
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity: bytes
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl: x509.CertificateRevocationList
    root_ca_crl: x509.CertificateRevocationList


class CollateralProvider(Protocol):
    """Source of collateral for one platform family (FMSPC) and PCK issuing CA."""

    def fetch(self, fmspc: bytes, pck_ca: PckCa) -> Collateral:
        """Return current collateral, or raise `CollateralError`."""
        ...


class PcsCollateralProvider:
    """Fetches collateral from Intel PCS or a PCCS at `base_url` (API v4 paths)."""

    def __init__(
        self,
        base_url: str = INTEL_PCS_URL,
        *,
        root_ca_crl_url: str | None = None,
        timeout_seconds: float = 10.0,
        http_get: HttpGet | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if root_ca_crl_url is None:
            is_intel = self.base_url == INTEL_PCS_URL
            root_ca_crl_url = (
                INTEL_ROOT_CA_CRL_URL
                if is_intel
                else f"{self.base_url}/sgx/certification/v4/rootcacrl"
            )
        self.root_ca_crl_url = root_ca_crl_url
        self._timeout = timeout_seconds
        self._get: HttpGet = http_get or self._urllib_get

    def fetch(self, fmspc: bytes, pck_ca: PckCa) -> Collateral:
        """Download TCB info for `fmspc`, the QE identity, the PCK CRL and the root CA CRL."""
        api = f"{self.base_url}/sgx/certification/v4"
        tcb_body, tcb_headers = self._get(f"{api}/tcb?fmspc={fmspc.hex().upper()}")
        qe_body, qe_headers = self._get(f"{api}/qe/identity")
        pck_crl_body, _ = self._get(f"{api}/pckcrl?ca={pck_ca}&encoding=der")
        root_crl_body, _ = self._get(self.root_ca_crl_url)
        return Collateral(
            tcb_info=tcb_body,
            tcb_info_issuer_chain=_issuer_chain(tcb_headers, "TCB-Info-Issuer-Chain"),
            qe_identity=qe_body,
            qe_identity_issuer_chain=_issuer_chain(qe_headers, "SGX-Enclave-Identity-Issuer-Chain"),
            pck_crl=parse_crl(pck_crl_body, "PCK CRL"),
            root_ca_crl=parse_crl(root_crl_body, "root CA CRL"),
        )

    def _urllib_get(self, url: str) -> tuple[bytes, Mapping[str, str]]:
        request = urllib.request.Request(url, headers={"Accept": "*/*"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body: bytes = response.read(MAX_RESPONSE_BYTES + 1)
                headers = {key.lower(): value for key, value in response.headers.items()}
        except urllib.error.HTTPError as exc:
            raise CollateralError(
                f"collateral request {url} failed with HTTP {exc.code} {exc.reason}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise CollateralError(
                f"cannot reach {url} for attestation collateral ({exc}); check pccs_url, or "
                "set `collateral: none` in the policy for an offline federation"
            ) from exc
        if len(body) > MAX_RESPONSE_BYTES:
            raise CollateralError(f"collateral response from {url} exceeds 1 MiB")
        return body, headers


def parse_crl(body: bytes, what: str) -> x509.CertificateRevocationList:
    """A CRL sent as DER, PEM, or hex-encoded DER (PCCS versions differ)."""
    candidates = [body]
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(binascii.unhexlify(body.strip()))
    for candidate in candidates:
        try:
            return x509.load_der_x509_crl(candidate)
        except ValueError:
            pass
    try:
        return x509.load_pem_x509_crl(body)
    except ValueError as exc:
        raise CollateralError(f"the {what} is neither DER, PEM nor hex-encoded DER") from exc


def _issuer_chain(headers: Mapping[str, str], name: str) -> tuple[x509.Certificate, ...]:
    lowered = {key.lower(): value for key, value in headers.items()}
    value = lowered.get(name.lower())
    if not value:
        raise CollateralError(f"collateral response lacks the {name} header")
    try:
        return tuple(load_pem_chain(urllib.parse.unquote(value).encode(), name))
    except QuoteFormatError as exc:
        raise CollateralError(str(exc)) from exc
