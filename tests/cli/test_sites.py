"""Real sites: addresses that mean what they say, one aggregator per workspace, and failed
dials explained in one line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.workspaces import edit_plan, make_workspace

from bastion.errors import BastionError
from bastion.pki import Role, issue
from bastion.sim.processes import LocalFederation
from bastion.transport.server import start_server


def bastion(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "300"},
    )


def _one_line(result: subprocess.CompletedProcess[str], expected: str) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    return errors[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("sites"), collaborators=2, rounds=1)


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_an_aggregator_port_outside_1_to_65535_is_refused(
    workspace: Path, tmp_path: Path, port: str
) -> None:
    result = bastion("aggregator", "start", "-w", str(workspace), "--port", port, cwd=tmp_path)
    _one_line(result, f"--port {port} is not a TCP port")


def test_a_plan_port_of_0_is_refused_at_validate(workspace: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy)
    edit_plan(copy, {"network": {"port": 0}})
    _one_line(bastion("plan", "validate", "-w", str(copy), cwd=tmp_path), "key 'network.port'")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("https://127.0.0.1:50051", "has a scheme (https://)"),
        ("127.0.0.1:0", "is not a TCP port"),
        ("127.0.0.1:70000", "is not a TCP port"),
        ("a host", "is not a host name"),
    ],
)
def test_bad_aggregator_addresses_are_refused(
    workspace: Path, tmp_path: Path, address: str, expected: str
) -> None:
    result = bastion(
        "collaborator", "start", "site-1", "-w", str(workspace), "--aggregator", address,
        cwd=tmp_path,
    )  # fmt: skip
    _one_line(result, expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"aggregation": {"strategy": "fedmagic"}}, "unknown strategy 'fedmagic'"),
        ({"data": {"loader": "no_such_set"}}, "unknown dataset 'no_such_set'"),
        ({"data": {"loader": "nowhere:load"}}, "no module 'nowhere'"),
        (
            {"task_runner": {"args": {"epoch": 150}}},
            "task:build_runner takes no argument 'epoch'; it takes: seed",
        ),
    ],
)
def test_plan_validate_catches_what_initialize_and_sites_would(
    workspace: Path, tmp_path: Path, change: dict, expected: str
) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy)
    edit_plan(copy, change)
    _one_line(bastion("plan", "validate", "-w", str(copy), cwd=tmp_path), expected)


def test_plan_validate_lists_every_problem_with_its_key(workspace: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy)
    edit_plan(copy, {"rounds": 0, "network": {"port": 70000}, "timeouts": {"round_seconds": -1}})
    result = bastion("plan", "validate", "-w", str(copy), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    for key in ("rounds", "network.port", "timeouts.round_seconds"):
        assert any(f"key '{key}'" in line for line in errors), errors


@pytest.mark.slow
def test_a_second_aggregator_on_the_same_workspace_is_refused(workspace: Path) -> None:
    with LocalFederation(workspace, collaborators=[]) as federation:
        port = federation.start_aggregator()
        pid = federation.aggregator_process.pid  # type: ignore[union-attr]
        for second_port in (str(port), "0"):  # the same port, and another one
            result = bastion(
                "aggregator", "start", "-w", str(workspace), "--host", "127.0.0.1",
                "--port", second_port, cwd=workspace,
            )  # fmt: skip
            line = _one_line(result, "another aggregator")
            assert f"pid {pid}" in line and "one aggregator per workspace" in line
        assert federation.aggregator_process.poll() is None  # type: ignore[union-attr]


def test_two_servers_cannot_share_a_port() -> None:
    class Port:  # start_server needs nothing of the port until a call arrives
        pass

    first = start_server(Port(), "h", "127.0.0.1", 0, None, lambda c: "x", 1 << 20)  # type: ignore[arg-type]
    try:
        with pytest.raises(BastionError, match="cannot listen"):
            start_server(Port(), "h", "127.0.0.1", first.port, None, lambda c: "x", 1 << 20)  # type: ignore[arg-type]
    finally:
        first.stop(0)


@pytest.mark.slow
def test_a_tls_name_mismatch_stops_the_site_with_both_names(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, rounds=1)
    pki = workspace / "pki"
    for suffix in ("key", "crt", "csr"):
        (pki / f"aggregator.{suffix}").unlink(missing_ok=True)
    issue(pki, "aggregator", Role.AGGREGATOR, hosts=["agg.example.org"])
    with LocalFederation(workspace, collaborators=[]) as federation:
        port = federation.start_aggregator()
        result = bastion(
            "collaborator", "start", "site-1", "-w", str(workspace),
            "--aggregator", f"127.0.0.1:{port}", cwd=tmp_path,
        )  # fmt: skip
    line = _one_line(result, "TLS name mismatch: you dialled '127.0.0.1'")
    assert "'agg.example.org'" in line


@pytest.mark.slow
def test_nothing_listening_is_explained_once_then_retried_quietly(
    workspace: Path, tmp_path: Path
) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "bastion", "collaborator", "start", "site-1",
            "-w", str(workspace), "--aggregator", f"127.0.0.1:{port}",
        ],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        # The clock starts when the site has loaded its data and begins to dial (start-up
        # itself is slow on a loaded machine); then 4 s: the backoff has dialled again by
        # 0.5, 1.5 and 3.5 s.
        deadline = time.monotonic() + 120
        while not any("validation examples" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        time.sleep(4)
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)
    stderr = "".join(lines)
    mentions = [line for line in lines if "nothing is listening" in line]
    assert len(mentions) == 1, stderr
    assert f"nothing is listening at 127.0.0.1:{port} (connection refused)" in mentions[0]
    assert "retrying quietly" in mentions[0]
    assert "Traceback" not in stderr and "ssl_transport_security" not in stderr
