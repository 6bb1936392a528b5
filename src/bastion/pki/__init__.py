"""The federation's own PKI: a CA, member certificates, and the checks that trust them.

Identities are X.509 certificates (``cryptography``, ECDSA keys): CN = the member's
name, OU = its :class:`Role`, and an extended key usage that matches the role:

==============  ===========================  ==============================================
role            extended key usage           why
==============  ===========================  ==============================================
aggregator      serverAuth, clientAuth       gRPC server for collaborators; may dial out too
collaborator    clientAuth                   only dials out; cannot pose as a server
model-owner     codeSigning                  signs workspace manifests; never speaks TLS
==============  ===========================  ==============================================

A PKI directory (default ``pki/`` inside a workspace) holds::

    ca.crt          CA certificate (ECDSA P-384, self-signed, path_length=0)   0644
    ca.key          CA private key, only on the CA machine                     0600
    issued.json     every certificate the CA signed: name, role, serial,       0644
                    validity, SHA-256 fingerprint
    <name>.key      a member's private key, made where it is used              0600
    <name>.csr      its signing request (CN=name, OU=role, SAN=hosts)          0644
    <name>.crt      its certificate, written by the CA                         0644

Across machines: a member runs ``bastion pki request NAME`` and sends ``NAME.csr`` to
the operator, who runs ``bastion pki sign NAME.csr --role ...`` after comparing the
request's fingerprint with the member's over a second channel, and sends back
``NAME.crt`` and ``ca.crt``. On one machine, ``bastion pki issue`` does both steps.
"""

from bastion.errors import PKIError
from bastion.pki.ca import CertificateAuthority, init_ca, load_ca
from bastion.pki.identity import (
    Identity,
    identity_of,
    subject_alternative_names,
    verify_identity,
    verify_issued_by,
)
from bastion.pki.layout import DEFAULT_PKI_DIR, PkiLayout, TLSFiles, tls_files_for
from bastion.pki.names import validate_name
from bastion.pki.pem import (
    certificate_fingerprint,
    load_certificate,
    load_csr,
    load_private_key,
    parse_certificate,
)
from bastion.pki.requests import create_request, csr_fingerprint
from bastion.pki.roles import Role
from bastion.pki.signing import issue, sign_request
from bastion.pki.store import IssuedCert, list_issued

__all__ = [
    "DEFAULT_PKI_DIR",
    "CertificateAuthority",
    "Identity",
    "IssuedCert",
    "PKIError",
    "PkiLayout",
    "Role",
    "TLSFiles",
    "certificate_fingerprint",
    "create_request",
    "csr_fingerprint",
    "identity_of",
    "init_ca",
    "issue",
    "list_issued",
    "load_ca",
    "load_certificate",
    "load_csr",
    "load_private_key",
    "parse_certificate",
    "sign_request",
    "subject_alternative_names",
    "tls_files_for",
    "validate_name",
    "verify_identity",
    "verify_issued_by",
]
