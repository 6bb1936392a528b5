"""``bastion tee``: keygen, inspect, manifest and sign as a user would type them.

Errors surface as BastionError subclasses; ``bastion.cli.main.main`` turns them into one line
and exit code 2 (checked once end to end in a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.workspaces import make_workspace
from typer.testing import CliRunner, Result

from bastion.cli.console import console
from bastion.cli.tee import app
from bastion.errors import BastionError
from bastion.tee.gramine_build import GramineNotInstalled
from bastion.tee.signing_key import EnclaveKeyError
from bastion.tee.sigstruct import SigstructError

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

runner = CliRunner()
PackSigstruct = Callable[..., bytes]


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def ok(*args: str | Path) -> str:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def fails(*args: str | Path) -> BaseException:
    result = run(*args)
    assert result.exit_code != 0
    assert isinstance(result.exception, BastionError), (result.output, result.exception)
    return result.exception


@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    """Tables as on a wide terminal, so assertions do not depend on where rich folds."""
    width = console.width
    console.width = 200
    yield
    console.width = width


@pytest.fixture
def signed(tmp_path: Path, enclave_key: rsa.RSAPrivateKey, packed_sigstruct: PackSigstruct) -> Path:
    path = tmp_path / "bastion.sig"
    path.write_bytes(
        packed_sigstruct(
            enclave_key, mrenclave=hashlib.sha256(b"m").digest(), isv_prod_id=12, isv_svn=5
        )
    )
    return path


def test_keygen_prints_mrsigner_and_writes_enclave_json(tmp_path: Path) -> None:
    key_path = tmp_path / "enclave-key.pem"
    output = ok("keygen", "--out", key_path)

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.public_key().public_numbers().n
    expected = hashlib.sha256(n.to_bytes(384, "little")).hexdigest()
    assert f"MRSIGNER {expected}" in output
    info = json.loads((tmp_path / "enclave.json").read_text())
    assert info["mrsigner"] == expected and info["key_path"] == str(key_path.resolve())

    assert isinstance(fails("keygen", "--out", key_path), EnclaveKeyError)


def test_keygen_with_a_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path = tmp_path / "k.pem"
    assert "unset or empty" in str(fails("keygen", "--out", key_path, "--passphrase-env", "NOPE"))
    monkeypatch.setenv("BASTION_TEST_PASS", "s3cret")
    ok("keygen", "--out", key_path, "--passphrase-env", "BASTION_TEST_PASS")
    assert b"ENCRYPTED" in key_path.read_bytes()


def test_inspect_shows_the_identity(signed: Path, enclave_key: rsa.RSAPrivateKey) -> None:
    output = ok("inspect", signed)
    n = enclave_key.public_key().public_numbers().n
    assert hashlib.sha256(b"m").hexdigest() in output
    assert hashlib.sha256(n.to_bytes(384, "little")).hexdigest() in output
    assert re.search(r"ISV product id\s+│\s+12\b", output)
    assert re.search(r"ISV SVN\s+│\s+5\b", output)
    assert re.search(r"debug\s+│\s+no\b", output)
    assert re.search(r"signature\s+│\s+valid", output)


def test_inspect_json_for_machines(signed: Path, enclave_key: rsa.RSAPrivateKey) -> None:
    data = json.loads(ok("inspect", signed, "--json"))
    n = enclave_key.public_key().public_numbers().n
    assert data["mrenclave"] == hashlib.sha256(b"m").hexdigest()
    assert data["mrsigner"] == hashlib.sha256(n.to_bytes(384, "little")).hexdigest()
    assert (data["isv_prod_id"], data["isv_svn"], data["debug"]) == (12, 5, False)
    assert data["signature_verified"] is True


def test_inspect_flags_a_debug_enclave(
    tmp_path: Path, enclave_key: rsa.RSAPrivateKey, packed_sigstruct: PackSigstruct
) -> None:
    path = tmp_path / "debug.sig"
    path.write_bytes(packed_sigstruct(enclave_key, flags=0x6))
    assert "yes (the host can read this enclave)" in ok("inspect", path)
    assert json.loads(ok("inspect", path, "--json"))["debug"] is True


def test_inspect_refuses_bad_files(tmp_path: Path, signed: Path) -> None:
    short = tmp_path / "short.sig"
    short.write_bytes(signed.read_bytes()[:100])
    error = fails("inspect", short)
    assert isinstance(error, SigstructError)
    assert "expected 1808 bytes" in str(error) and "got 100" in str(error)

    tampered = tmp_path / "tampered.sig"
    data = bytearray(signed.read_bytes())
    data[1024] ^= 0xFF  # ISVPRODID, inside the signed region
    tampered.write_bytes(bytes(data))
    assert "does not verify" in str(fails("inspect", tampered))
    assert re.search(r"signature\s+│\s+not checked", ok("inspect", tampered, "--no-verify"))


def test_manifest_writes_the_template_and_prints_the_build(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    out = tmp_path / "enclave"
    output = ok("manifest", workspace, "--name", "site-1", "--out", out, "--isv-svn", "4")

    template = (out / "bastion.manifest.template").read_text()
    assert "{{ gramine.libos }}" in template and "site-1.key" not in template
    assert "left out" in output and "key or certificate directory" in output
    assert "gramine-manifest bastion.manifest.template bastion.manifest" in output
    assert "gramine-sgx-sign --manifest bastion.manifest" in output

    ok("manifest", workspace, "--role", "aggregator", "--out", out, "--explicit", "--debug")
    manifest = tomllib.loads((out / "bastion.manifest").read_text())
    assert manifest["sgx"]["debug"] is True
    assert manifest["loader"]["argv"][-2:] == ["aggregator", "start"]
    assert "role must be" in str(fails("manifest", workspace, "--role", "observer"))


@pytest.mark.skipif(shutil.which("gramine-sgx-sign") is not None, reason="Gramine is installed")
def test_sign_without_gramine_says_what_to_install(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    out = tmp_path / "enclave"
    ok("manifest", workspace, "--role", "aggregator", "--out", out)
    key = tmp_path / "enclave-key.pem"
    ok("keygen", "--out", key)
    error = fails("sign", out, "--key", key)
    assert isinstance(error, GramineNotInstalled)
    assert "gramine-sgx-sign" in str(error) and "installation" in str(error)
    assert "run `bastion tee keygen` first" in str(fails("sign", out, "--key", tmp_path / "no.pem"))


def test_bastion_tee_exits_2_with_one_line_on_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.sig"
    bad.write_bytes(b"not a sigstruct")
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "tee", "inspect", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "expected 1808 bytes" in result.stderr and "got 15" in result.stderr
