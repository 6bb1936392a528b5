"""The dashboard over HTTP: authentication off loopback, per-identity visibility, CSP,
read-only, server-sent events. A real uvicorn server on an ephemeral port; the director's
database filled directly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bastion.dashboard.auth import MODEL_OWNER, OPERATOR, TokenStore
from bastion.dashboard.server import DashboardServer
from bastion.dashboard.sources import DirectorSource
from bastion.director.db import DirectorDB
from bastion.errors import BastionError


def _job(job_id: str, owner: str) -> dict[str, object]:
    return {
        "id": job_id, "owner": owner, "plan_name": f"plan-{owner}", "dataset": "records",
        "rounds": 3, "measurement": "m", "targeting": {"dataset": "records"},
        "open_roster": False, "attestation": False, "state": "running",
    }  # fmt: skip


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[DirectorDB]:
    db = DirectorDB(tmp_path / "director.db")
    db.register_site("site-1", {"datasets": {"records": {"examples": 10}}})
    db.add_job(_job("job-alice", "alice"))
    db.add_job(_job("job-bob", "bob"))
    db.update_job("job-alice", started=time.time() - 10)
    db.add_event("job-alice", {"type": "round_started", "round": 1})
    db.add_event(
        "job-alice",
        {"type": "round", "round": 1, "record": {
            "round": 1, "final_evaluation": False,
            "tasks": {"validate": {"accuracy": 0.5, "examples": 10}}, "lost": [], "failed": [],
            "timed_out": [], "privacy": {"epsilon": 0.7, "delta": 1e-5},
        }},
    )  # fmt: skip
    yield db
    db.close()


@pytest.fixture()
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    store = TokenStore(tmp_path / "tokens.json")
    issued = {
        "alice": store.create("alice", MODEL_OWNER),
        "bob": store.create("bob", MODEL_OWNER),
        "ops": store.create("ops", OPERATOR),
    }
    return store.path, issued


def _serve(db: DirectorDB, tmp_path: Path, host: str, tokens: Path | None) -> DashboardServer:
    return DashboardServer(DirectorSource(db, tmp_path / "jobs"), host, 0, tokens).start()


def test_tokens_are_stored_hashed(tokens: tuple[Path, dict[str, str]]) -> None:
    path, issued = tokens
    text = path.read_text()
    assert all(token not in text for token in issued.values())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = TokenStore(path)
    assert store.check(issued["alice"]).name == "alice"  # type: ignore[union-attr]
    assert store.check("bdt_guess") is None


def test_a_non_loopback_address_without_tokens_refuses_to_start(
    db: DirectorDB, tmp_path: Path
) -> None:
    with pytest.raises(BastionError, match="requires authentication"):
        _serve(db, tmp_path, "0.0.0.0", None)


def test_off_loopback_unauthenticated_is_refused_and_owners_see_only_their_jobs(
    db: DirectorDB, tmp_path: Path, tokens: tuple[Path, dict[str, str]]
) -> None:
    path, issued = tokens
    server = _serve(db, tmp_path, "0.0.0.0", path)
    base = f"http://127.0.0.1:{server.port}"
    try:
        for url in ("/", "/api/overview", "/api/stream", "/api/jobs/job-alice"):
            answer = requests.get(base + url, timeout=5)
            assert answer.status_code == 401, url
            assert "job-alice" not in answer.text
        bad = requests.get(
            base + "/api/overview", headers={"Authorization": "Bearer bdt_nope"}, timeout=5
        )
        assert bad.status_code == 401

        def seen(who: str) -> list[str]:
            answer = requests.get(
                base + "/api/overview",
                headers={"Authorization": f"Bearer {issued[who]}"},
                timeout=5,
            )
            assert answer.status_code == 200
            return [job["id"] for job in answer.json()["jobs"]]

        assert seen("alice") == ["job-alice"]
        assert seen("bob") == ["job-bob"]
        assert seen("ops") == ["job-alice", "job-bob"]
        alice = {"Authorization": f"Bearer {issued['alice']}"}
        other = requests.get(base + "/api/jobs/job-bob", headers=alice, timeout=5)
        assert other.status_code == 404 and "plan-bob" not in other.text
        own = requests.get(base + "/api/jobs/job-alice", headers=alice, timeout=5).json()
        assert own["progress"]["rounds_done"] == 1
        assert own["progress"]["series"]["validate/accuracy"] == [0.5]
        assert own["progress"]["privacy"]["epsilon"] == 0.7
        # the login link sets an HttpOnly, SameSite=Strict cookie the page and its stream use
        session = requests.Session()
        login = session.get(base + f"/login?token={issued['bob']}", timeout=5)
        assert login.status_code == 200 and "Bastion federation" in login.text
        cookie = login.history[0].headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert [j["id"] for j in session.get(base + "/api/overview", timeout=5).json()["jobs"]] == [
            "job-bob"
        ]
        # the bob stream carries no alice data
        with session.get(base + "/api/stream", stream=True, timeout=5) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            data = _first_snapshot(stream)
        assert [j["id"] for j in data["jobs"]] == ["job-bob"]
    finally:
        server.stop()


def _snapshots(stream: requests.Response) -> Iterator[dict[str, object]]:
    event = None
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "snapshot":
            yield json.loads(line[6:])


def _first_snapshot(stream: requests.Response) -> dict[str, object]:
    return next(_snapshots(stream))


def test_loopback_page_is_read_only_with_a_strict_csp_and_pushes_changes(
    db: DirectorDB, tmp_path: Path
) -> None:
    server = _serve(db, tmp_path, "127.0.0.1", None)
    base = f"http://127.0.0.1:{server.port}"
    try:
        page = requests.get(base + "/", timeout=5)
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "<script>" not in page.text and "http" not in page.text.split("<body>")[0]
        assert page.headers["x-frame-options"] == "DENY"
        for method in ("post", "put", "delete", "patch"):
            assert getattr(requests, method)(base + "/api/overview", timeout=5).status_code == 405
        js = requests.get(base + "/static/uPlot.iife.min.js", timeout=5)
        assert js.status_code == 200 and "uPlot" in js.text
        with requests.get(base + "/api/stream", stream=True, timeout=10) as stream:
            snapshots = _snapshots(stream)
            first = next(snapshots)
            assert first["viewer"] == {"name": "local", "role": "operator"}
            db.add_event(
                "job-alice",
                {"type": "round", "round": 2, "record": {
                    "round": 2, "tasks": {"validate": {"accuracy": 0.75}},
                }},
            )  # fmt: skip
            second = next(snapshots)
        alice = next(j for j in second["jobs"] if j["id"] == "job-alice")  # type: ignore[attr-defined]
        assert alice["progress"]["series"]["validate/accuracy"] == [0.5, 0.75]
        assert alice["progress"]["eta_seconds"] > 0
    finally:
        server.stop()


def test_a_standalone_aggregators_dashboard_follows_its_round_events(tmp_path: Path) -> None:
    """``aggregator start --dashboard``: the LiveFeed observer and the status file."""
    from bastion.aggregator.events import FederationFinished, ResultAccepted, RoundReported
    from bastion.dashboard.sources import AggregatorSource, LiveFeed

    feed = LiveFeed()
    status = tmp_path / "state.json"
    status.write_text(json.dumps({
        "collaborators_seen": {"site-1": time.time(), "site-2": time.time() - 60},
        "attestation": {"site-1": {"accepted": True, "simulated": True, "tcb_status": "UpToDate"}},
    }))  # fmt: skip
    job = {"id": "fed", "owner": "", "plan_name": "fed", "dataset": "d", "rounds": 2,
           "roster": ["site-1", "site-2"], "attestation": True}  # fmt: skip
    source = AggregatorSource(feed, job, status, offline_after=30)
    source.remember("a log line")
    server = DashboardServer(source, "127.0.0.1", 0, None).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        feed.notify(ResultAccepted(1, "site-1", "train", "train", 10, {"loss": 0.3}))
        for number, accuracy in ((1, 0.6), (2, 0.8)):
            record = {"round": number, "tasks": {"validate": {"accuracy": accuracy}}}
            feed.notify(RoundReported(number, record))
        first = requests.get(base + "/api/overview", timeout=5).json()
        (fed,) = first["jobs"]
        assert fed["state"] == "running" and fed["progress"]["rounds_done"] == 2
        assert fed["progress"]["series"]["validate/accuracy"] == [0.6, 0.8]
        assert fed["progress"]["participation"]["site-1"]["results"] == 1
        assert fed["log"] == ["a log line"]
        sites = {s["name"]: s for s in first["sites"]}
        assert sites["site-1"]["online"] and not sites["site-2"]["online"]
        assert sites["site-1"]["attestation"]["simulated"] is True
        feed.notify(FederationFinished(2, 0.8))
        assert requests.get(base + "/api/overview", timeout=5).json()["jobs"][0]["state"] == (
            "finished"
        )
    finally:
        server.stop()


def test_summary_of_secure_aggregation_dropouts_and_privacy_budget() -> None:
    from bastion.dashboard.sources import summarize

    events = [
        {"type": "secure_aggregation", "round": 1, "outcome": "ok", "dropped": {"site-3": "x"}},
        {"type": "round", "record": {
            "round": 1, "tasks": {"v": {"accuracy": 0.5}}, "timed_out": ["site-2"],
            "privacy": {"epsilon": 1.5, "delta": 1e-5, "epsilon_budget": 3.0},
        }},
        {"type": "round", "record": {
            "round": 2, "final_evaluation": True, "tasks": {"v": {"accuracy": 0.9, "examples": 4}},
        }},
    ]  # fmt: skip
    summary = summarize({"rounds": 3, "state": "running", "started": time.time() - 5}, events)
    assert summary["dropouts"] == [
        {"round": 1, "sites": ["site-3"], "why": "secure aggregation ok"},
        {"round": 1, "sites": ["site-2"], "why": "timed out"},
    ]
    assert summary["privacy"]["epsilon_budget"] == 3.0
    assert summary["final_metrics"] == {"v": {"accuracy": 0.9}}
    assert summary["rounds_done"] == 1 and summary["eta_seconds"] > 0


def test_token_cli_prints_a_token_once_and_stores_its_hash(tmp_path: Path) -> None:
    from support.cli import run_bastion

    path = tmp_path / "tokens.json"
    made = run_bastion(
        "dashboard", "token", "create", "alice", "--role", "model-owner", "--tokens", str(path)
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("bdt_") and token not in path.read_text()
    assert TokenStore(path).check(token) == TokenStore(path).check(token) is not None
    listed = run_bastion("dashboard", "token", "list", "--tokens", str(path))
    assert "alice" in listed.stdout and "model-owner" in listed.stdout
    bad = run_bastion("dashboard", "token", "create", "x", "--role", "root", "--tokens", str(path))
    assert bad.returncode != 0 and "choose one of" in bad.stdout + bad.stderr
    revoked = run_bastion("dashboard", "token", "revoke", "alice", "--tokens", str(path))
    assert revoked.returncode == 0 and TokenStore(path).check(token) is None


def test_the_dashboard_over_https_with_the_federations_ca(db: DirectorDB, tmp_path: Path) -> None:
    from bastion.pki import Role, init_ca, issue

    ca = tmp_path / "ca"
    init_ca(ca)
    issue(ca, "director", Role.AGGREGATOR, hosts=["127.0.0.1", "localhost"])
    server = DashboardServer(
        DirectorSource(db, tmp_path / "jobs"), "127.0.0.1", 0, None,
        ca / "director.crt", ca / "director.key",
    ).start()  # fmt: skip
    try:
        assert server.url.startswith("https://")
        answer = requests.get(server.url + "api/overview", verify=str(ca / "ca.crt"), timeout=5)
        assert answer.status_code == 200 and answer.json()["viewer"]["role"] == "operator"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.url, timeout=5)  # not the system's CAs: the federation's
    finally:
        server.stop()
