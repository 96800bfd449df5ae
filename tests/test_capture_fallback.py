"""Models that compute attention themselves (MPNet, DeBERTa, DeBERTa-v2): captured through
hooks on their attention modules, P equal to ``output_attentions=True``; every model type
gets a route or a one-line refusal.

Models are tiny and random, built from configs; the reference is the model's own eager
attention with ``output_attentions=True``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel

from lowrank.errors import LowrankError
from lowrank.hooks import fallback
from lowrank.hooks.attention import AttentionCall, capture, padded_inputs, valid_blocks
from lowrank.hooks.public import capture as capture_all
from lowrank.inputs import routes
from lowrank.inputs.routes import capture_route, layers_alive, route_table

H = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 64,
    "initializer_range": 0.3,  # peaked attention
}
TINY = {
    "mpnet": H,
    "deberta": H | {"relative_attention": True, "pos_att_type": ["c2p", "p2c"]},
    "deberta-v2": H
    | {
        "relative_attention": True,
        "pos_att_type": ["c2p", "p2c"],
        "position_buckets": 8,
        "max_relative_positions": 16,
        "share_att_key": True,  # key_proj runs twice per layer: Q, K must be the first runs
    },
}
N = 12
LENGTHS = torch.tensor([12, 7, 3])


def _model(model_type: str, **extra):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **(TINY.get(model_type, H) | extra))
    return AutoModel.from_config(config).eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (len(LENGTHS), N), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(N)[None, :] < LENGTHS[:, None]).long()  # right padding
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", ["mpnet", "deberta", "deberta-v2"])
def test_padded_p_equals_output_attentions(model_type):
    model = _model(model_type)
    batch = _batch()
    calls: list[AttentionCall] = []
    with torch.no_grad():
        ref = model(**batch, output_attentions=True)
        with capture(model, calls.append, LENGTHS) as seen:
            out = model(**batch)
    assert routes.model_route(model) == "hooks" and seen() == 2 and len(ref.attentions) == 2
    for call, want in zip(calls, ref.attentions, strict=True):
        assert call.probs.shape == (3, 4, N, N)
        assert (call.probs - want).abs().max() <= 1e-6
        assert not call.probs_from_qk  # relative-position terms: P is not softmax(QK^T/sqrt d)
        # padded keys get exactly 0 in every valid row
        for b, m in enumerate(LENGTHS.tolist()):
            assert call.probs[b, :, :m, m:].abs().sum() == 0
            assert torch.allclose(call.probs[b, :, :m].sum(-1), torch.ones(4, m), atol=1e-6)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    if model_type == "deberta-v2":  # its mask also hides padded queries: uniform rows 1/n
        assert torch.allclose(calls[0].probs[2, :, 3:], torch.full((4, N - 3, N), 1 / N))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model_type", ["mpnet", "deberta-v2"])
def test_each_valid_block_is_the_sequence_run_alone(model_type, side):
    """With padded_inputs' mask and positions (MPNet numbers positions after its padding
    index, like RoBERTa), each sequence's block of P is its attention run alone."""
    model = _model(model_type)
    ids = torch.randint(3, 100, (len(LENGTHS), N), generator=torch.Generator().manual_seed(1))
    batched: list[AttentionCall] = []
    with torch.no_grad(), capture(model, batched.append, LENGTHS, padding_side=side):
        model(**padded_inputs(model, ids, LENGTHS, side))
    for b, m in enumerate(LENGTHS.tolist()):
        alone: list[AttentionCall] = []
        valid = ids[b : b + 1, :m] if side == "right" else ids[b : b + 1, N - m :]
        with torch.no_grad(), capture(model, alone.append):
            model(input_ids=valid)
        for whole, single in zip(batched, alone, strict=True):
            block = next(
                blk[rows.tolist().index(b)] for rows, blk in valid_blocks(whole) if b in rows
            )
            assert block.shape == (4, m, m)
            assert (block - single.probs[0]).abs().max() <= 1e-5  # float32 rounding


def test_qkv_are_the_projections_and_pv_is_the_context():
    """MPNet: P V equals the input of the output projection ``o``. DeBERTa-v2 without
    relative attention: P == softmax(Q K^T / sqrt(d) + mask) exactly, so Q and K are its
    own (even with ``share_att_key``)."""
    mpnet = _model("mpnet")
    contexts: list[torch.Tensor] = []
    hook = mpnet.encoder.layer[0].attention.attn.o.register_forward_hook(
        lambda m, args, out: contexts.append(args[0])
    )
    with torch.no_grad(), capture_all(mpnet, qkv=True) as cap:
        mpnet(**_batch())
    hook.remove()
    b, h, n, d = cap.values[0].shape
    pv = (cap.probs[0] @ cap.values[0]).transpose(1, 2).reshape(b, n, h * d)
    assert (pv - contexts[0]).abs().max() <= 1e-6
    plain = _model("deberta-v2", relative_attention=False, pos_att_type=None)
    calls: list[AttentionCall] = []
    batch = _batch()
    with torch.no_grad(), capture(plain, calls.append):
        plain(**batch)
    key_mask = batch["attention_mask"][:, None, None, :].bool()
    for call in calls:
        assert call.qkv and call.query.shape == (3, 4, N, 8)
        scores = call.query @ call.key.transpose(-1, -2) / 8**0.5
        rebuilt = torch.softmax(scores.masked_fill(~key_mask, torch.finfo().min), dim=-1)
        valid = LENGTHS[:, None, None, None] > torch.arange(N)[:, None]  # valid query rows
        assert ((call.probs - rebuilt).abs() * valid).max() <= 1e-6


def test_what_cannot_be_seen_is_said():
    deberta = _model("deberta")  # fused in_proj: no separate query/key/value projections
    calls: list[AttentionCall] = []
    with torch.no_grad(), capture(deberta, calls.append):
        deberta(**_batch())
    assert not calls[0].qkv and calls[0].query.shape == (3, 4, N, 0)
    with (
        pytest.raises(LowrankError, match="cannot see its Q, K and V"),
        capture_all(deberta, qkv=True),
    ):
        pass
    with (
        pytest.raises(LowrankError, match="override"),
        capture(_model("mpnet"), None, override=lambda *a: a[1]),
    ):
        pass


def test_the_caller_still_gets_the_attentions_it_asks_for():
    model = _model("mpnet")
    with torch.no_grad():
        ref = model(**_batch(), output_attentions=True).attentions
        with capture_all(model) as cap:
            asked = model(**_batch(), output_attentions=True).attentions
            plain = model(**_batch()).attentions
    assert len(asked) == 2 and all(torch.equal(a, b) for a, b in zip(asked, ref, strict=True))
    assert plain is None and len(cap.passes) == 2


def test_whole_pass_route_when_no_module_returns_p(monkeypatch):
    model = _model("mpnet")
    monkeypatch.setattr(fallback, "attention_targets", lambda m: [])
    calls: list[AttentionCall] = []
    with torch.no_grad():
        ref = model(**_batch(), output_attentions=True).attentions
        with capture(model, calls.append, LENGTHS):
            out = model(**_batch())
    assert out.attentions is None  # not asked for: not handed back
    assert [c.layer for c in calls] == [0, 1] and not calls[0].qkv
    assert all(torch.equal(c.probs, r) for c, r in zip(calls, ref, strict=True))
    monkeypatch.setattr(routes, "model_route", lambda m: "outputs")
    assert layers_alive(model) == 2


def test_layers_alive_is_one_where_p_is_dropped_per_layer():
    assert layers_alive(_model("mpnet")) == 1
    assert layers_alive(_model("bert")) == 1


# -- a handful of architectures from tiny configs, through the check against eager -----------

ARCHITECTURES = {
    "bert": H,
    "roberta": H | {"pad_token_id": 1},
    "albert": H | {"embedding_size": 16},
    "electra": H | {"embedding_size": 16},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "vocab_size": 100},
    "mpnet": H,
    "deberta": TINY["deberta"],
    "deberta-v2": TINY["deberta-v2"],
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 100},
    "llama": H | {"num_key_value_heads": 2},
    "qwen2": H | {"num_key_value_heads": 2},
    "gemma": H | {"num_key_value_heads": 2, "head_dim": 8},
    "gemma2": H | {"head_dim": 8, "attn_logit_softcapping": 0.1, "query_pre_attn_scalar": 8},
    "phi": H,
    "falcon": H | {"alibi": True},
    "xglm": {"d_model": 32, "num_layers": 2, "attention_heads": 4, "ffn_dim": 64},
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 100},
}
ROUTES = {"mpnet": "hooks", "deberta": "hooks", "deberta-v2": "hooks", "xglm": "hooks"}
ROUTES |= {"bloom": "hooks"}


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_architectures_match_their_eager_attention(model_type):
    from lowrank.hooks.check import check_capture

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **ARCHITECTURES[model_type])
    model = AutoModel.from_config(config).eval()
    assert capture_route(config) == ROUTES.get(model_type, "interface")
    result = check_capture(model, _batch(), rows=None)
    assert result.layers == 2
    assert result.probs_error <= 1e-6 and result.output_error <= 1e-6


# -- routes and refusals from the config alone ----------------------------------------------


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"model_type": "t5", "architectures": ["T5Model"]}, "(T5Model, model_type 't5') is an"),
        ({"model_type": "bart"}, "encoder-decoder"),
        ({"model_type": "mamba", "architectures": ["MambaModel"]}, "has no attention layers"),
        ({"model_type": "thing", "auto_map": {"AutoModel": "m.Thing"}}, "remote code"),
        ({"model_type": "frobnicator"}, "not an architecture"),
        ({"architectures": ["X"]}, "has no model_type"),
        ({"model_type": "diffllama"}, "differential attention"),
        ({"model_type": "granite_swa"}, "not the P that weighs its values"),
    ],
)
def test_what_cannot_return_p_is_refused_in_one_line(config, reason):
    with pytest.raises(LowrankError) as caught:
        capture_route(config, "m")
    message = str(caught.value)
    assert reason in message and "\n" not in message
    assert "Llama, Mistral, Qwen2" in message and "GPT-2" in message


@pytest.mark.slow  # imports every modeling file of transformers (~10 s)
def test_route_table_covers_every_model_type():
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    table = route_table()
    assert set(table) == set(MODEL_MAPPING_NAMES)
    assert table["bert"] == table["llama"] == "interface"
    assert table["mpnet"] == table["deberta-v2"] == "hooks"
    assert table["t5"].startswith("refused: is an encoder-decoder")
    assert table["mamba"] == "refused: has no attention layers"
