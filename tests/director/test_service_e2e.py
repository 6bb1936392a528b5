"""The federation service end to end: a director, three site agents and two model owners as
separate processes over mutual TLS on 127.0.0.1, each site training on its own table."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.cli import run_bastion
from support.service import Service, wait_for

import bastion
from bastion.storage.checkpoints import INITIAL, load_checkpoint

SITES = ["site-1", "site-2", "site-3"]

# Job B's model: a two-layer network, where job A trains the template's softmax regression.
MLP_TASK = """
import numpy as np

from bastion.runners.numpy import NumpyRunner


class TwoLayerNetwork:
    def __init__(self, num_features, hidden, num_classes, seed):
        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((num_features, hidden)) * 0.1).astype(np.float32)
        self.b1 = np.zeros(hidden, np.float32)
        self.w2 = (rng.standard_normal((hidden, num_classes)) * 0.1).astype(np.float32)
        self.b2 = np.zeros(num_classes, np.float32)
        self.rng = rng

    def get_weights(self):
        return {"w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}

    def set_weights(self, weights):
        for name in ("w1", "b1", "w2", "b2"):
            setattr(self, name, weights[name].astype(np.float32))

    def _forward(self, x):
        hidden = np.maximum(x @ self.w1 + self.b1, 0)
        logits = hidden @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return hidden, p / p.sum(axis=1, keepdims=True)

    def fit(self, x, y, epochs=1, batch_size=32, lr=0.1):
        onehot = np.eye(self.w2.shape[1], dtype=np.float32)[y]
        for _ in range(int(epochs)):
            order = self.rng.permutation(len(y))
            for start in range(0, len(y), int(batch_size)):
                i = order[start : start + int(batch_size)]
                hidden, p = self._forward(x[i])
                error = (p - onehot[i]) / len(i)
                back = (error @ self.w2.T) * (hidden > 0)
                self.w2 -= lr * hidden.T @ error
                self.b2 -= lr * error.sum(axis=0)
                self.w1 -= lr * x[i].T @ back
                self.b1 -= lr * back.sum(axis=0)
        return self.evaluate(x, y)

    def evaluate(self, x, y):
        _, p = self._forward(x)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        return {"loss": float(loss), "accuracy": float((p.argmax(axis=1) == y).mean())}


def build_runner(num_features=64, hidden=32, num_classes=10, seed=0):
    return NumpyRunner(TwoLayerNetwork(num_features, hidden, num_classes, seed))
"""
ROWS = {"site-1": 300, "site-2": 420, "site-3": 540}
OFFSETS = {"site-1": 0, "site-2": 300, "site-3": 720}


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, SITES, ["alice", "bob"])
    try:
        svc.start_director()
        for site in SITES:
            svc.start_site(site, ROWS[site], OFFSETS[site], owners=["alice", "bob"])
        yield svc
    finally:
        svc.stop_all()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_two_jobs_run_concurrently_on_overlapping_sites_and_a_third_is_stopped(
    service: Service,
) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    bob = bastion.Federation.connect(service.address, pki=service.pki("bob"))
    wait_for(lambda: len(alice.sites()) == 3, "three registered sites")
    offers = {s["name"]: s["offers"] for s in alice.sites()}
    assert offers["site-2"]["datasets"]["records"]["examples"] == ROWS["site-2"]
    assert offers["site-2"]["datasets"]["records"]["features"] == 64

    ws_a = service.workspace("job-a", "alice", SITES, rounds=3)
    ws_b = service.workspace(
        "job-b",
        "bob",
        ["site-2", "site-3"],
        rounds=3,
        plan_changes={
            "task_runner": {"path": "mlp_task:build_runner", "args": {"hidden": 32, "seed": 7}},
            "tasks": [
                {"name": "validate_global", "kind": "validate", "model": "global"},
                {"name": "train", "kind": "train", "args": {"epochs": 1, "batch_size": 32, "lr": 0.5}},
            ],
        },
        files={"mlp_task.py": MLP_TASK},
    )  # fmt: skip
    job_a = alice.submit(ws_a, dataset="records", min_sites=3)
    job_b = bob.submit(ws_b, sites=["site-2", "site-3"])

    live: list[tuple[dict[str, Any], str]] = []

    def follow() -> None:
        for event in job_a.rounds():
            if event["type"] == "round" and not live:
                live.append((event, job_a.state))
            elif event["type"] == "round":
                live.append((event, ""))

    follower = threading.Thread(target=follow)
    follower.start()
    status_a = job_a.wait(timeout=300)
    status_b = job_b.wait(timeout=300)
    follower.join(timeout=60)

    # live metrics reached the submitter while the job ran
    assert live and live[0][1] == "running"
    assert [e["round"] for e, _ in live][:3] == [1, 2, 3]
    assert status_a["state"] == status_b["state"] == "finished"
    assert status_a["rounds_done"] == 4 and status_b["rounds_done"] == 4  # 3 + final evaluation
    assert sorted(status_a["roster"]) == SITES and sorted(status_b["roster"]) == [
        "site-2",
        "site-3",
    ]
    # the two ran concurrently: each started before the other ended
    assert status_a["started"] < status_b["ended"] and status_b["started"] < status_a["ended"]

    # each site trained on its own table: example counts differ, per site, as its rows do
    trained: dict[str, set[int]] = {}
    for event in job_a.rounds(follow=False):
        if event["type"] == "result" and event["kind"] == "train":
            trained.setdefault(event["collaborator"], set()).add(event["example_count"])
    assert set(trained) == set(SITES)
    counts = {site: next(iter(c)) for site, c in trained.items()}
    assert len(set(counts.values())) == 3
    assert counts["site-1"] < counts["site-2"] < counts["site-3"]

    # both models download and load; each moved from its initial model
    out = service.root / "downloads"
    weights_a = job_a.download(best=True, out=out / "a")
    weights_b = job_b.download(best=False)
    assert (out / "a" / "metrics.jsonl").is_file()
    initial_a, _ = load_checkpoint(ws_a / "save" / INITIAL)
    assert set(weights_a) == set(initial_a)
    assert any(not np.array_equal(weights_a[k], initial_a[k]) for k in initial_a)
    # two different models: softmax regression (w, b) and a two-layer network
    initial_b, _ = load_checkpoint(ws_b / "save" / INITIAL)
    assert set(weights_a) == {"w", "b"} and set(weights_b) == {"w1", "b1", "w2", "b2"}
    assert {k: v.shape for k, v in weights_b.items()} == {k: v.shape for k, v in initial_b.items()}
    assert any(not np.array_equal(weights_b[k], initial_b[k]) for k in initial_b)

    # a third job, long, stopped from the CLI: it ends cleanly at every site
    ws_c = service.workspace("job-c", "alice", SITES, rounds=500)
    job_c = alice.submit(ws_c, sites=SITES)
    wait_for(lambda: job_c.status()["rounds_done"] >= 1, "job-c's first round", timeout=180)
    pids = {
        site: int((service.site_dir(site) / "jobs" / job_c.id / "pid").read_text())
        for site in SITES
    }
    assert all(_alive(pid) for pid in pids.values())
    result = run_bastion(
        "job", "stop", job_c.id, "--director", service.address, "--pki-dir",
        str(service.pki("alice")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert job_c.state == "stopped"
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), "collaborators to stop")
    with pytest.raises(bastion.BastionError, match="stopped"):
        job_c.wait(timeout=5)
    listed = run_bastion(
        "job", "list", "--director", service.address, "--pki-dir", str(service.pki("alice"))
    )
    assert job_c.id in listed.stdout and job_a.id in listed.stdout
    assert job_b.id not in listed.stdout
    assert os.environ.get("BASTION_JOB_ID") is None
