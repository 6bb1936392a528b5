"""The PEFT adapter: only adapter tensors federate, the base is pinned, the export loads in plain peft.

Models are tiny and built from configs here (no download); the tokenizer is the packaged
MiniLM's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire
from support.torch_modules import text_shard, tiny_bert_config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from bastion.errors import BastionError, PlanError
from bastion.runners.base import ExportsModel, TaskRunner
from bastion.runners.peft import BASE_MODEL_FILE, PeftCausalLMRunner, PeftRunner
from bastion.runners.pinned_base import BaseModelMismatch, base_digest, pin_base
from bastion.runners.transformers import packaged_minilm
from bastion.tensors import total_bytes

LORA = {"r": 4, "alpha": 8}


def save_base(folder: Path, model: torch.nn.Module) -> Path:
    """A base model folder as a site has it: weights, config and the MiniLM tokenizer."""
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(packaged_minilm(), local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_base(tmp_path_factory.mktemp("bert"), BertModel(tiny_bert_config()))


@pytest.fixture(scope="module")
def gpt_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return save_base(tmp_path_factory.mktemp("gpt"), GPT2LMHeadModel(config))


def classifier(base: Path, **options: object) -> PeftRunner:
    return PeftRunner.from_base(
        base, pin_base(base), num_labels=3, lora=LORA, device="cpu", lr=0.01, **options
    )


def test_only_adapter_tensors_federate_and_train(bert_base: Path) -> None:
    runner = classifier(bert_base)
    assert isinstance(runner, TaskRunner) and isinstance(runner, ExportsModel)
    names = list(runner.get_weights())
    assert names and all(".lora_" in n or ".modules_to_save." in n for n in names)
    assert any("classifier.modules_to_save" in n for n in names)  # the head travels
    assert set(runner.trainable()) == set(names)
    frozen = {n: p.detach().clone() for n, p in runner.model.named_parameters() if n not in names}
    before = runner.get_weights()
    assert runner.sizes.adapter_bytes == total_bytes(before)
    plain = AutoModelForSequenceClassification.from_pretrained(bert_base, num_labels=3)
    assert runner.sizes.full_bytes == sum(p.numel() * 4 for p in plain.parameters())
    runner.train(text_shard(), epochs=2, batch_size=4)
    after = runner.get_weights()
    assert all(torch.equal(p, frozen[n]) for n, p in runner.model.named_parameters() if n in frozen)
    assert any(not np.array_equal(before[n], after[n]) for n in names if "lora_B" in n)


def test_adapter_round_trips_through_wire_and_checkpoint(bert_base: Path, tmp_path: Path) -> None:
    source = classifier(bert_base, seed=1)
    source.train(text_shard(), epochs=1, batch_size=4)
    sent = source.get_weights()
    target = classifier(bert_base, seed=2)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert_same_weights(target.get_weights(), sent)


def test_export_loads_with_plain_peft_and_predicts_the_same(
    bert_base: Path, tmp_path: Path
) -> None:
    runner = classifier(bert_base)
    runner.train(text_shard(), epochs=2, batch_size=4)
    folder = runner.export(tmp_path / "adapter")
    record = json.loads((folder / BASE_MODEL_FILE).read_text())
    assert record["digest"] == base_digest(pin_base(bert_base))
    assert record["sha256"] == pin_base(bert_base)
    base = AutoModelForSequenceClassification.from_pretrained(bert_base, num_labels=3)
    loaded = PeftModel.from_pretrained(base, folder).eval()
    runner.model.eval()
    inputs = runner.tokenizer(["wine from italy", "iris"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, runner.model(**inputs).logits, atol=1e-6)


def test_a_different_base_file_is_refused_naming_it(bert_base: Path, tmp_path: Path) -> None:
    pins = pin_base(bert_base)
    copy = tmp_path / "base"
    copy.mkdir()
    for name in pins:
        (copy / name).write_bytes((bert_base / name).read_bytes())
    (copy / "config.json").write_text(
        (bert_base / "config.json")
        .read_text()
        .replace('"hidden_act": "gelu"', '"hidden_act": "relu"')
    )
    with pytest.raises(BaseModelMismatch, match=r"config\.json: SHA-256") as refused:
        PeftRunner.from_base(copy, pins, num_labels=3)
    assert "model.safetensors" not in str(refused.value)  # only what differs is named
    (copy / "model.safetensors").unlink()
    with pytest.raises(BaseModelMismatch, match=r"model\.safetensors: missing"):
        PeftRunner.from_base(copy, pins, num_labels=3)


def test_an_unpinned_base_is_refused_with_the_pins_to_paste(bert_base: Path) -> None:
    with pytest.raises(PlanError, match=r"base_sha256' is missing(.|\n)*model\.safetensors: "):
        PeftRunner.from_base(bert_base, None, num_labels=3)
    with pytest.raises(PlanError, match="not a SHA-256"):
        PeftRunner.from_base(bert_base, {"model.safetensors": "abc"}, num_labels=3)


def test_a_hub_id_not_in_the_cache_is_a_clear_error_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BastionError, match="neither a local folder nor in this machine's"):
        PeftRunner.from_base("no-such-org/no-such-model", {"a": "0" * 64}, num_labels=2)


def test_causal_lm_trains_its_adapter_and_exports(gpt_base: Path, tmp_path: Path) -> None:
    runner = PeftRunner.from_base(
        gpt_base, pin_base(gpt_base), task="causal_lm", lora=LORA, lr=0.02, device="cpu"
    )
    assert isinstance(runner, PeftCausalLMRunner)
    assert all(".lora_" in n for n in runner.get_weights())
    shard = text_shard()
    before = runner.validate(shard).metrics
    for _ in range(3):
        runner.train(shard, epochs=1, batch_size=4)
    after = runner.validate(shard).metrics
    assert after["loss"] < before["loss"]
    assert after["perplexity"] == pytest.approx(np.exp(after["loss"]))
    folder = runner.export(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt_base), folder)
    inputs = runner.tokenizer(["wine from italy"], return_tensors="pt")
    runner.model.eval()
    with torch.no_grad():
        assert torch.allclose(
            loaded.eval()(**inputs).logits, runner.model(**inputs).logits, atol=1e-5
        )
