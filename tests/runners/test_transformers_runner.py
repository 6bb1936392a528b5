"""The Transformers adapter: exact round trips in every dtype, partial-model federation, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire
from support.torch_modules import (
    DEVICES,
    TORCH_DTYPES,
    native_bytes,
    randomize,
    text_shard,
    tiny_bert_config,
)
from transformers import AutoTokenizer, BertForSequenceClassification

from bastion.errors import BastionError, PlanError
from bastion.runners.transformers import TransformersRunner, packaged_minilm
from bastion.tensors import Weights

HEAD_AND_TOP = ["classifier.*", "bert.pooler.*", "bert.encoder.layer.1.*"]


def tiny_bert(dtype: torch.dtype = torch.float32) -> BertForSequenceClassification:
    """Two layers of 32 units with MiniLM's vocabulary; no dropout, so training is repeatable."""
    return BertForSequenceClassification(tiny_bert_config(num_labels=3)).to(dtype)


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(packaged_minilm(), local_files_only=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_dtype_round_trips_through_wire_and_checkpoint(
    dtype: torch.dtype, device: str, tokenizer: object, tmp_path: Path
) -> None:
    source = TransformersRunner(tiny_bert(dtype), tokenizer, device=device)
    randomize(source.model, seed=1)
    sent = source.get_weights()
    target = TransformersRunner(tiny_bert(dtype), tokenizer, device=device)
    randomize(target.model, seed=2)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert native_bytes(target.model) == native_bytes(source.model)
    assert_same_weights(target.get_weights(), sent)


def test_partial_federation_moves_and_trains_only_the_chosen_tensors(tokenizer: object) -> None:
    torch.manual_seed(0)
    runner = TransformersRunner(tiny_bert(), tokenizer, federate=HEAD_AND_TOP, device="cpu")
    names = list(runner.get_weights())
    assert names and all(
        n.startswith(("classifier.", "bert.pooler.", "bert.encoder.layer.1.")) for n in names
    )
    assert set(runner.trainable()) == set(names)
    frozen = {n: p.detach().clone() for n, p in runner.model.named_parameters() if n not in names}
    before = runner.get_weights()
    runner.train(text_shard(), epochs=2, batch_size=4)
    after = runner.get_weights()
    assert all(torch.equal(p, frozen[n]) for n, p in runner.model.named_parameters() if n in frozen)
    assert not np.array_equal(before["classifier.weight"], after["classifier.weight"])


def test_keep_local_and_train_local_personalize_the_rest(tokenizer: object) -> None:
    runner = TransformersRunner(
        tiny_bert(), tokenizer, keep_local="bert.embeddings.*", train_local=True, device="cpu"
    )
    assert not any(n.startswith("bert.embeddings.") for n in runner.get_weights())
    assert "bert.embeddings.word_embeddings.weight" in runner.trainable()


def test_patterns_matching_nothing_name_the_key(tokenizer: object) -> None:
    with pytest.raises(PlanError, match="task_runner.args.federate"):
        TransformersRunner(tiny_bert(), tokenizer, federate="decoder.*")


def _two_rounds(optimizer_state: str, tokenizer: object) -> tuple[Weights, Weights]:
    """Two rounds of two steps each from the same start and the same seeded batch order."""
    torch.manual_seed(0)
    runner = TransformersRunner(
        tiny_bert(), tokenizer, federate=HEAD_AND_TOP, optimizer_state=optimizer_state, seed=0
    )
    shard = text_shard()
    start = runner.get_weights()
    runner.train(shard, epochs=1, batch_size=7)
    first = runner.get_weights()
    runner.set_weights(start)
    runner.train(shard, epochs=1, batch_size=7)
    return first, runner.get_weights()


def test_optimizer_state_reset_and_keep(tokenizer: object) -> None:
    """Only ``keep`` carries AdamW's moments into the next round (one step alone cannot tell:
    Adam's bias correction makes a first step from fresh or kept moments alike)."""
    reset_first, reset_second = _two_rounds("reset", tokenizer)
    keep_first, keep_second = _two_rounds("keep", tokenizer)
    name = "classifier.weight"
    assert np.array_equal(reset_first[name], keep_first[name])
    assert not np.allclose(reset_second[name], keep_second[name], rtol=1e-4, atol=1e-6)


def test_from_pretrained_loads_the_packaged_minilm_offline() -> None:
    runner = TransformersRunner.from_pretrained(
        packaged_minilm(), num_labels=4, federate="classifier.*", device="cpu"
    )
    assert runner.get_weights()["classifier.weight"].shape == (4, 384)  # MiniLM's width


def test_a_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BastionError, match="config.json"):
        TransformersRunner.from_pretrained(tmp_path, num_labels=2)
