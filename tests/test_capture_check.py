"""The check that the captured P is the model's own: gpt-oss's attention sinks, a wrong
capture caught in one line, a normal model passing, the model left as found."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModel, GptOssConfig, GptOssModel

from lowrank.errors import LowrankError
from lowrank.hooks import attention
from lowrank.hooks.attention import AttentionCall, capture
from lowrank.hooks.check import TOLERANCES, check_capture
from lowrank.inputs.state import model_state

IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gpt_oss() -> GptOssModel:
    """Tiny random gpt-oss: a sliding and a full layer, grouped-query, 2 experts, and sink
    logits drawn from N(0, 1) (initialised at 0 they would still take mass from each row)."""
    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=2,
        num_experts_per_tok=1,
        sliding_window=4,
        max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = GptOssModel(config).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.0)
    return model


def test_sinks_are_captured_as_the_models_own_probabilities(gpt_oss):
    """P is gpt-oss's eager P: the sink column dropped, so rows sum to less than 1."""
    gpt_oss.set_attn_implementation("eager")
    with torch.no_grad():
        ref = gpt_oss(input_ids=IDS, output_attentions=True)
    calls: list[AttentionCall] = []
    with torch.no_grad(), capture(gpt_oss, calls.append):
        out = gpt_oss(input_ids=IDS)
    for call, want in zip(calls, ref.attentions, strict=True):
        assert (call.probs - want).abs().max() <= 1e-6
        sums = call.probs.sum(-1)
        assert sums.max() < 1 and sums.min() < 0.9  # the sink takes mass from every row
        assert not call.probs_from_qk
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    result = check_capture(gpt_oss, {"input_ids": IDS}, rows=None)
    assert result.layers == 2 and result.probs_error <= 1e-6


def _drop(argument: str):
    """eager_probs without one of its terms: the capture as it was before it knew them."""
    real = attention.eager_probs

    def wrong(query, key, mask, scale, softcap=None, sinks=None, position_bias=None):
        kept = {"softcap": softcap, "sinks": sinks, "position_bias": position_bias}
        kept[argument] = None
        return real(query, key, mask, scale, **kept)

    return wrong


def _gemma2():
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "gemma2",
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.3,  # scores well beyond the cap: tanh bends them
        attn_logit_softcapping=0.1,
    )
    return AutoModel.from_config(config).eval()


def test_a_wrong_capture_is_refused_in_one_line(gpt_oss, monkeypatch):
    before = model_state(gpt_oss)
    monkeypatch.setattr(attention, "eager_probs", _drop("sinks"))
    with pytest.raises(LowrankError) as caught:
        check_capture(gpt_oss, {"input_ids": IDS})
    message = str(caught.value)
    assert "model type 'gpt_oss'" in message and "layer 1" in message and "\n" not in message
    found = re.search(r"by up to ([0-9.e-]+)", message)
    assert found and float(found.group(1)) > 0.1  # rows renormalised to 1: far off
    assert model_state(gpt_oss) == before  # left as found, also when the check fails
    gemma2 = _gemma2()
    monkeypatch.setattr(attention, "eager_probs", _drop("softcap"))
    with pytest.raises(LowrankError, match=r"model type 'gemma2'.*differs from the model's eager"):
        check_capture(gemma2, {"input_ids": IDS})


def test_a_normal_model_passes_with_padding(bert_dir):
    model = AutoModel.from_pretrained(bert_dir).eval()
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 12:] = mask[2, 5:] = 0
    ids = torch.randint(1000, 2000, (3, 20), generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    result = check_capture(model, {"input_ids": ids, "attention_mask": mask}, rows=None)
    assert (result.model_type, result.route, result.layers) == ("bert", "interface", 2)
    assert result.probs_error <= 1e-6 and result.output_error <= 1e-6
    assert result.tolerance == TOLERANCES[torch.float32] == 1e-5
    assert model_state(model) == before  # eager for the reference, then put back
    with pytest.raises(LowrankError, match="at least 1"):
        check_capture(model, {"input_ids": ids}, rows=0)


def test_eager_probs_by_hand():
    """One head, two keys with scores 0 and log 2, a sink logit 0: softmax over
    (1, 2, 1) / 4 drops the sink's 1/4, so the row is (1/4, 1/2) and sums to 3/4."""
    query = torch.tensor([[[[1.0]]]])  # (1, 1, 1, 1)
    key = torch.tensor([[[[0.0], [float(torch.log(torch.tensor(2.0)))]]]])  # (1, 1, 2, 1)
    plain = attention.eager_probs(query, key, None, 1.0)
    assert torch.allclose(plain, torch.tensor([[[[1 / 3, 2 / 3]]]]))
    sunk = attention.eager_probs(query, key, None, 1.0, sinks=torch.zeros(1))
    assert torch.allclose(sunk, torch.tensor([[[[1 / 4, 1 / 2]]]]))
    capped = attention.eager_probs(query, key * 100, None, 1.0, softcap=1.0)  # tanh(69) = 1
    assert torch.allclose(capped, torch.softmax(torch.tensor([0.0, 1.0]), -1).view(1, 1, 1, 2))


def test_sparse_key_selection_is_refused():
    from lowrank.hooks.calls import Active

    token = attention._ACTIVE.set(Active(None, None))
    try:
        x = torch.zeros(1, 1, 2, 4)
        with pytest.raises(LowrankError, match="'indices'"):
            attention.capture_attention_forward(torch.nn.Identity(), x, x, x, None, indices=[0])
    finally:
        attention._ACTIVE.reset(token)
