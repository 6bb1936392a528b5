"""Where each PKI file lives, and the files a TLS endpoint needs.

One layout serves the CA operator's machine and every participant's machine, so the
same ``tls_files_for(pki_dir, name)`` works wherever the files were produced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import PKIError
from bastion.pki.identity import Identity, identity_of, verify_issued_by
from bastion.pki.names import validate_name
from bastion.pki.pem import key_matches, load_certificate, load_private_key, private_key_pem

DEFAULT_PKI_DIR = Path("pki")


@dataclass(frozen=True)
class PkiLayout:
    """File names inside one PKI directory."""

    root: Path

    @classmethod
    def of(cls, pki_dir: str | os.PathLike[str]) -> PkiLayout:
        return cls(Path(pki_dir))

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def registry(self) -> Path:
        return self.root / "issued.json"

    def key(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}.key"

    def csr(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}.csr"

    def cert(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}.crt"

    def ensure(self) -> None:
        """Create the directory, private to its owner, if it does not exist yet."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise PKIError(f"cannot create PKI directory {self.root}: {exc.strerror}") from None
        if not self.root.is_dir():
            raise PKIError(f"PKI directory {self.root} exists but is not a directory")


@dataclass(frozen=True)
class TLSFiles:
    """The three PEM files of a mutual-TLS endpoint: trust anchor, own certificate, own key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate, private key) PEM bytes, as gRPC credentials take them.

        The key is loaded through :func:`bastion.pki.load_private_key`, so a key that
        others can read is refused here too.
        """
        key = load_private_key(self.key)
        pem = private_key_pem(key)
        return self.ca.read_bytes(), self.cert.read_bytes(), pem

    def check(self) -> Identity:
        """Verify the set before a server or client starts, instead of failing the handshake.

        The certificate must be issued by the CA and currently valid, and the key must
        be the certificate's key. Returns the identity the certificate carries.
        """
        ca = load_certificate(self.ca)
        cert = load_certificate(self.cert)
        verify_issued_by(self.cert, ca, ca_label=str(self.ca))
        key = load_private_key(self.key)
        if not key_matches(key, cert):
            raise PKIError(f"private key {self.key} does not belong to certificate {self.cert}")
        return identity_of(cert)


def tls_files_for(pki_dir: str | os.PathLike[str], name: str) -> TLSFiles:
    """The TLS files of identity ``name`` in ``pki_dir``; a missing one names its command."""
    layout = PkiLayout.of(pki_dir)
    files = TLSFiles(ca=layout.ca_cert, cert=layout.cert(name), key=layout.key(name))
    where = f"--pki-dir {layout.root}"
    if not files.ca.is_file():
        raise PKIError(
            f"CA certificate {files.ca} is missing: on the CA machine run `bastion pki init "
            f"{where}`; elsewhere copy the federation's ca.crt there"
        )
    if not files.key.is_file():
        raise PKIError(
            f"private key {files.key} is missing: run `bastion pki request {name} {where}` "
            f"on this machine (or `bastion pki issue {name} --role ... {where}` at the CA)"
        )
    if not files.cert.is_file():
        raise PKIError(
            f"certificate {files.cert} is missing: send {layout.csr(name)} to the CA, which "
            f"runs `bastion pki sign {name}.csr --role ...`, and copy {name}.crt back here"
        )
    return files
