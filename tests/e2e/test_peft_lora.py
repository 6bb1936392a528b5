"""The LoRA template end to end: adapters only on the wire, a pinned base, a plain-peft artifact.

The federation runs as real processes over mTLS, each site's traffic through a counting
TCP proxy, so the bytes per round are measured on the wire (TLS included). Kept small for
2 CPU cores: one local epoch, 32 tokens per line, one thread per process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from faults.proxy import FaultProxy
from peft import PeftModel
from support.cli import run_bastion
from support.simulation import plain_workspace
from support.workspaces import make_workspace, sign_workspace
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from bastion.cli.plan import app as plan_app
from bastion.metrics.log import read_metrics, round_summaries
from bastion.plan import load_plan
from bastion.runners.peft import BASE_MODEL_FILE
from bastion.runners.pinned_base import base_digest, pin_base
from bastion.runners.transformers import packaged_minilm
from bastion.sim.inprocess import simulate_in_process
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint
from bastion.workspace.model_export import export_model
from bastion.workspace.tasks import load_shard

TEMPLATE = "peft_minilm_lora"
SITES = ("site-1", "site-2")
ROUNDS = 3
MAX_LENGTH = 32
SMALL: dict[str, Any] = {
    "tasks": [
        {"name": "validate_global", "kind": "validate", "model": "global"},
        {"name": "train", "kind": "train", "args": {"epochs": 1, "batch_size": 16}},
    ],
    "task_runner": {"args": {"max_length": MAX_LENGTH, "lr": 0.003}},
}


def final_evaluation(workspace: Path) -> dict[str, dict[str, float]]:
    """Each site's metrics of the final model, as the aggregator recorded them."""
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    last = max(r["round"] for r in records if r.get("event") == "task")
    return {
        r["collaborator"]: r["metrics"]
        for r in records
        if r.get("event") == "task" and r["round"] == last and r["task"] == "validate_global"
    }


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def load_plain_peft(adapter: Path) -> tuple[PeftModel, int]:
    """The exported adapter on the pinned base, with nothing but transformers and peft; and
    what full fine-tuning of the same model sends one way (every parameter of the base)."""
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    head = load_checkpoint(adapter / "adapter_model.safetensors")[0]
    num_labels = next(v.shape[0] for k, v in head.items() if k.endswith("classifier.bias"))
    base = AutoModelForSequenceClassification.from_pretrained(
        packaged_minilm(), num_labels=num_labels, local_files_only=True
    )
    full = parameter_bytes(base)
    return PeftModel.from_pretrained(base, adapter).eval(), full


def plain_peft_metrics(model: PeftModel, texts: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and loss as the runner's validation computes them."""
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm(), local_files_only=True)
    encoded = tokenizer(
        [str(t) for t in texts],
        padding=True,
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
    target = torch.from_numpy(labels).long()
    losses, correct = [], 0
    with torch.no_grad():
        for start in range(0, len(labels), 64):  # the runner's validation batches
            batch = {k: v[start : start + 64] for k, v in encoded.items()}
            # Pad each batch to its own longest line, as the runner does.
            length = int(batch["attention_mask"].sum(dim=1).max())
            batch = {k: v[:, :length] for k, v in batch.items()}
            out = model(**batch, labels=target[start : start + 64])
            losses.append(float(out.loss) * len(batch["input_ids"]))
            correct += int((out.logits.argmax(dim=1) == target[start : start + 64]).sum())
    return {"accuracy": correct / len(labels), "loss": sum(losses) / len(labels)}


@pytest.mark.slow
@pytest.mark.timeout(900)  # generous: the 2 cores may be shared with other work
def test_lora_template_federates_adapters_over_mtls(tmp_path: Path) -> None:
    workspace = make_workspace(
        tmp_path, TEMPLATE, collaborators=len(SITES), rounds=ROUNDS, plan_changes=SMALL
    )
    proxies: dict[str, FaultProxy] = {}
    with LocalFederation(workspace) as federation:
        port = federation.start_aggregator()
        for site in SITES:
            proxies[site] = FaultProxy(upstream_port=port)
            federation.start_collaborator(site, port=proxies[site].start())
        codes = federation.wait(timeout=800)
        logs = "\n".join(federation.log_text(r) for r in ("aggregator", *SITES))
    for proxy in proxies.values():
        proxy.close()
    assert codes == {"aggregator": 0, **dict.fromkeys(SITES, 0)}, logs[-6000:]

    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    accuracy = [float(s["tasks"]["validate_global"]["accuracy"]) for s in summaries]
    assert len(accuracy) == ROUNDS + 1  # the initial model, then every round's result
    assert accuracy[-1] > accuracy[0] + 0.2, accuracy  # 12 classes: chance is 0.08

    # Bytes on the wire: every model download and update upload of the whole run (the final
    # evaluation's download included), per site and training round, against full fine-tuning.
    last = load_checkpoint(workspace / "save" / "last.safetensors")[0]
    adapter = sum(v.nbytes for k, v in last.items() if not k.startswith("strategy/"))
    per_round = max(proxy.forwarded for proxy in proxies.values()) / ROUNDS
    folder = export_model(workspace, tmp_path / "adapter")
    model, full_one_way = load_plain_peft(folder)
    full = 2 * full_one_way  # full fine-tuning: the model down and the update up
    print(
        f"accuracy {' -> '.join(f'{a:.3f}' for a in accuracy)}; adapter {adapter:,} bytes; "
        f"measured {per_round:,.0f} bytes per site per round; full fine-tuning {full:,} "
        f"({full / per_round:.0f}x more)"
    )
    assert per_round < 3 * adapter  # down, up, and the final evaluation's download
    assert full / per_round >= 20

    # The artifact: plain peft on the pinned base predicts what the final evaluation saw.
    record = json.loads((folder / BASE_MODEL_FILE).read_text())
    assert record["digest"] == base_digest(pin_base(packaged_minilm()))
    plan = load_plan(workspace)
    reported = final_evaluation(workspace)
    for site in SITES:
        shard = load_shard(plan, site, workspace)
        got = plain_peft_metrics(model, shard.x_valid, shard.y_valid)
        assert got["accuracy"] == pytest.approx(reported[site]["accuracy"], abs=1e-9), site
        assert got["loss"] == pytest.approx(reported[site]["loss"], rel=1e-4), site


@pytest.mark.slow
@pytest.mark.timeout(900)  # generous: the 2 cores may be shared with other work
def test_a_site_with_a_different_base_file_is_refused_before_training(tmp_path: Path) -> None:
    """The plan pins the packaged MiniLM's files; this site's copy then gets another config.json."""
    copy = tmp_path / "site-base"
    copy.mkdir()
    original = packaged_minilm()
    for name in pin_base(original):
        (copy / name).symlink_to(original / name)
    changes = {
        **SMALL,
        "task_runner": {"args": {**SMALL["task_runner"]["args"], "base": str(copy)}},
    }
    # A site needs no initial model to be refused: the workspace is signed without one.
    workspace = make_workspace(
        tmp_path, TEMPLATE, collaborators=1, rounds=1, plan_changes=changes, initialize=False
    )
    sign_workspace(workspace)
    config = json.loads((original / "config.json").read_text())
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0}))
    done = run_bastion(
        "collaborator",
        "start",
        "site-1",
        "--workspace",
        str(workspace),
        "--aggregator",
        "127.0.0.1:9",
        timeout=600,  # generous: importing torch is slow on shared cores
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, output
    assert f"{copy / 'config.json'}: SHA-256" in output, output
    assert "refusing to train" in output
    assert "model.safetensors:" not in output  # only the file that differs is named
    assert "train done" not in output


@pytest.mark.slow
@pytest.mark.timeout(900)  # generous: the 2 cores may be shared with other work
def test_fedadam_and_secure_aggregation_aggregate_the_adapter(tmp_path: Path) -> None:
    """FedAdam's server step and secure aggregation's masked sums run on the adapter alone."""
    changes = {
        **SMALL,
        "aggregation": {"strategy": "fedadam", "args": {"eta": 0.005}},
        "secure_aggregation": {},
        "task_runner": {"args": {"max_length": 16, "lr": 0.003}},
    }
    workspace = plain_workspace(tmp_path, TEMPLATE, collaborators=3, rounds=2, plan_changes=changes)
    start = load_checkpoint(workspace / "save" / "initial.safetensors")[0]
    assert all(".lora_" in k or ".modules_to_save." in k for k in start)
    aggregator = simulate_in_process(workspace)
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    sessions = [r for r in records if r["event"] == "secure_aggregation"]
    assert [s["outcome"] for s in sessions] == ["ok", "ok"]
    assert set(aggregator.model) == set(start)
    assert any(not np.array_equal(aggregator.model[k], start[k]) for k in start if "lora_B" in k)
    rounds = round_summaries(records)
    accuracy = [r["tasks"]["validate_global"]["accuracy"] for r in rounds]
    print(f"fedadam + secure aggregation: accuracy {accuracy}")
    assert accuracy[-1] > accuracy[0]
    out = workspace / "adapter"
    done = CliRunner().invoke(plan_app, ["export-model", "--out", str(out), "-w", str(workspace)])
    assert done.exit_code == 0, done.output
    exported = load_checkpoint(out / "adapter_model.safetensors")[0]
    assert len(exported) == len(start)  # PEFT's names for the same tensors
    assert (out / "adapter_config.json").is_file() and (out / BASE_MODEL_FILE).is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_central_dp_clips_and_noises_the_adapter(tmp_path: Path) -> None:
    """DP-FedAvg (McMahan et al. 2018) clips each site's adapter delta and noises the sum."""
    changes = {
        **SMALL,
        "aggregation": {
            "strategy": "dp_fedavg",
            "args": {"noise_multiplier": 0.3, "clip_norm": 1.0},
        },
        "differential_privacy": {"delta": 1e-5},
        "task_runner": {"args": {"max_length": 16, "lr": 0.003}},
    }
    workspace = plain_workspace(tmp_path, TEMPLATE, collaborators=3, rounds=1, plan_changes=changes)
    start = load_checkpoint(workspace / "save" / "initial.safetensors")[0]
    aggregator = simulate_in_process(workspace)
    assert set(aggregator.model) == set(start)
    assert any(not np.array_equal(aggregator.model[k], start[k]) for k in start if "lora_B" in k)
    training = [r for r in round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))]
    epsilon = training[0]["privacy"]["epsilon"]
    print(f"dp_fedavg on the adapter: epsilon {epsilon:.3g} at delta 1e-5 after one round")
    assert 0 < epsilon < float("inf")
