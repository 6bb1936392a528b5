"""The pinned trust anchor: Intel's SGX Root CA, which signs every genuine PCK chain.

Published by Intel at https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_
Certification_RootCA.pem (subject CN=Intel SGX Root CA, O=Intel Corporation, valid 2018-05-21 to
2049-12-31).  The SHA-256 fingerprint below is checked on load so that an edited copy fails loudly.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from bastion.tee.attestation.errors import CertificateChainError

INTEL_SGX_ROOT_CA_SHA256 = bytes.fromhex(
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)

INTEL_SGX_ROOT_CA_PEM = b"""-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""


@functools.lru_cache(maxsize=1)
def intel_sgx_root_ca() -> x509.Certificate:
    """The embedded Intel SGX Root CA, after checking its fingerprint."""
    certificate = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)
    if certificate.fingerprint(hashes.SHA256()) != INTEL_SGX_ROOT_CA_SHA256:
        raise CertificateChainError(
            "the embedded Intel SGX Root CA does not match its pinned SHA-256 fingerprint: "
            "the installed bastion package is corrupted; reinstall it"
        )
    return certificate
