"""``bastion pki``: each command through typer's runner, as a user would type it.

Errors surface as BastionError subclasses; ``bastion.cli.main.main`` turns them into one
line and exit code 2, so here they are asserted on the exception the sub-app raised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bastion.cli.console import console
from bastion.cli.pki import app
from bastion.errors import BastionError
from bastion.pki import PKIError, Role, csr_fingerprint, identity_of, list_issued

runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def ok(*args: str | Path) -> str:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def fails(*args: str | Path) -> BastionError:
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


@pytest.fixture()
def ca(tmp_path: Path) -> Path:
    ok("init", "--pki-dir", tmp_path / "pki")
    return tmp_path / "pki"


def test_init_creates_the_ca_and_prints_its_fingerprint(tmp_path: Path) -> None:
    output = ok("init", "--pki-dir", tmp_path / "pki", "--common-name", "Test CA")
    assert (tmp_path / "pki" / "ca.key").is_file()
    document = json.loads((tmp_path / "pki" / "issued.json").read_text())
    assert document["ca_sha256"] in output  # verbatim, on one line


def test_init_refuses_to_replace_a_ca_unless_forced(ca: Path) -> None:
    error = fails("init", "--pki-dir", ca)
    assert isinstance(error, PKIError) and "--force" in str(error)
    ok("init", "--pki-dir", ca, "--force")


def test_issue_writes_a_certificate_and_lists_it(ca: Path) -> None:
    output = ok(
        "issue",
        "agg",
        "--role",
        "aggregator",
        "--host",
        "127.0.0.1",
        "--host",
        "agg.local",
        "--pki-dir",
        ca,
    )
    entry = list_issued(ca)[0]
    assert entry.fingerprint in output
    assert "127.0.0.1, agg.local" in output
    assert identity_of(ca / "agg.crt").role is Role.AGGREGATOR

    ok("issue", "hospital-a", "--role", "collaborator", "--pki-dir", ca)
    table = ok("list", "--pki-dir", ca)
    assert re.search(r"agg\s.*aggregator", table)
    assert re.search(r"hospital-a\s.*collaborator", table)
    assert entry.fingerprint[:23] in table
    assert entry.serial_hex[:16] in table
    assert "valid" in table


def test_list_of_a_fresh_ca_says_nothing_was_issued(ca: Path) -> None:
    assert "No certificates issued yet" in ok("list", "--pki-dir", ca)


def test_request_then_sign_shows_the_same_fingerprint_on_both_sides(
    ca: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    requested = ok("request", "hospital-a", "--pki-dir", site)
    fingerprint = csr_fingerprint(site / "hospital-a.csr")
    assert fingerprint in requested
    assert not (site / "hospital-a.crt").exists()

    signed = ok(
        "sign",
        site / "hospital-a.csr",
        "--role",
        "collaborator",
        "--pki-dir",
        ca,
        "--expect-fingerprint",
        fingerprint,
    )
    assert fingerprint in signed
    assert identity_of(ca / "hospital-a.crt").name == "hospital-a"


def test_sign_with_a_wrong_expected_fingerprint_is_refused(ca: Path, tmp_path: Path) -> None:
    ok("request", "hospital-a", "--pki-dir", tmp_path / "site")
    error = fails(
        "sign",
        tmp_path / "site" / "hospital-a.csr",
        "--role",
        "collaborator",
        "--pki-dir",
        ca,
        "--expect-fingerprint",
        "AB" * 32,
    )
    assert "Do not sign it" in str(error)
    assert not (ca / "hospital-a.crt").exists()


def test_sign_refuses_a_role_other_than_requested(ca: Path, tmp_path: Path) -> None:
    ok("request", "hospital-a", "--pki-dir", tmp_path / "site")
    error = fails(
        "sign", tmp_path / "site" / "hospital-a.csr", "--role", "model-owner", "--pki-dir", ca
    )
    assert "asks for role 'collaborator' but is being signed as 'model-owner'" in str(error)


def test_sign_requires_a_role(ca: Path, tmp_path: Path) -> None:
    ok("request", "hospital-a", "--pki-dir", tmp_path / "site")
    result = run("sign", tmp_path / "site" / "hospital-a.csr", "--pki-dir", ca)
    assert result.exit_code == 2
    assert "--role" in result.output


def test_unknown_role_is_a_usage_error_listing_the_choices(ca: Path) -> None:
    result = run("issue", "x", "--role", "admin", "--pki-dir", ca)
    assert result.exit_code == 2
    assert "collaborator" in result.output and "model-owner" in result.output


def test_bad_name_gives_the_naming_rule(ca: Path) -> None:
    error = fails("issue", "bad name!", "--role", "collaborator", "--pki-dir", ca)
    assert "invalid identity name 'bad name!'" in str(error)


def test_aggregator_without_host_suggests_one(ca: Path) -> None:
    error = fails("issue", "agg", "--role", "aggregator", "--pki-dir", ca)
    assert "--host 127.0.0.1" in str(error)


def test_missing_ca_says_to_run_init(tmp_path: Path) -> None:
    for args in (
        ("issue", "alice", "--role", "collaborator"),
        ("list",),
    ):
        error = fails(*args, "--pki-dir", tmp_path / "empty")
        assert isinstance(error, PKIError)
        assert "bastion pki init" in str(error)


def test_missing_csr_names_the_file(ca: Path, tmp_path: Path) -> None:
    error = fails("sign", tmp_path / "nope.csr", "--role", "collaborator", "--pki-dir", ca)
    assert "nope.csr does not exist" in str(error)


@pytest.mark.parametrize("command", ["init", "request", "sign", "issue", "list"])
def test_every_command_has_help_with_the_pki_dir_option(command: str) -> None:
    output = ok(command, "--help")
    assert "--pki-dir" in output
