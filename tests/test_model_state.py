"""The user's model object is left exactly as found: ``preserved`` and ``model_state``.

The bug this guards (issue 28 item 1): a model whose config asks for ``output_attentions``
ran its first forward pass inside ``lowrank.capture``; transformers installed its
output-capturing hooks and set ``_output_capturing_hooks_installed``, lowrank removed the
hooks but kept the flag, and the model returned an empty ``attentions`` tuple forever after.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from lowrank.errors import LowrankError
from lowrank.hooks.attention import capture as route
from lowrank.hooks.public import capture
from lowrank.inputs.state import model_state, preserved

SIZES = {
    "vocab_size": 100,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
IDS = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))


def _bert(**config) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(**SIZES, **config)).eval()


@pytest.mark.parametrize("flag", ["output_attentions", "output_hidden_states"])
def test_a_first_pass_inside_capture_leaves_the_models_outputs_working(flag):
    """Fails on the code before lowrank.inputs.state: attentions came back as ()."""
    model = _bert(attn_implementation="eager", **{flag: True})
    fresh = _bert(attn_implementation="eager", **{flag: True})
    with torch.no_grad():
        with capture(model) as cap:
            model(input_ids=IDS)
        assert len(cap.probs) == 2
        got = getattr(model(input_ids=IDS), flag.removeprefix("output_"))
        want = getattr(fresh(input_ids=IDS), flag.removeprefix("output_"))
    assert len(want) > 0 and len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_capture_leaves_the_state_equal_including_transformers_flags():
    model = _bert(attn_implementation="eager", output_attentions=True)
    before = model_state(model)
    with capture(model):
        model(input_ids=IDS)
    assert "_output_capturing_hooks_installed" not in vars(model)
    assert model_state(model) == before


def test_preserved_undoes_every_kind_of_change_also_on_error():
    model = _bert()
    model.train()
    model.encoder.layer[1].eval()  # mixed modes must come back mixed
    user_calls: list[int] = []
    handle = model.encoder.layer[0].register_forward_hook(lambda *a: user_calls.append(1))
    model.config.rope_parameters = {"rope_type": "default", "nested": [1, 2]}
    before = model_state(model)
    with pytest.raises(RuntimeError, match="inside"), preserved(model):
        model.eval()
        model.pooler.dense.weight.requires_grad_(False)
        model.encoder.layer[0].attention.self.query.to(torch.float64)
        model.embeddings.register_buffer("extra", torch.zeros(1))
        model.register_forward_pre_hook(lambda *a: None, with_kwargs=True)
        model.encoder.layer[0]._forward_hooks.clear()  # a user's hook removed
        model._output_capturing_hooks_installed = True
        model.custom = "added"
        model.config.output_hidden_states = True
        model.config._attn_implementation_internal = "lowrank_capture"
        model.config.rope_parameters["nested"].append(3)
        raise RuntimeError("inside")
    assert model_state(model) == before
    assert model.config.rope_parameters == {"rope_type": "default", "nested": [1, 2]}
    assert model.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
    model(input_ids=IDS)
    assert user_calls == [1]  # the user's hook is back and runs once
    handle.remove()  # and its handle still removes it
    model(input_ids=IDS)
    assert user_calls == [1]


def test_model_state_sees_the_changes_it_is_meant_to_see():
    model = _bert()
    before = model_state(model)
    changes = [
        lambda m: m.train(),
        lambda m: setattr(m, "_output_capturing_hooks_installed", True),
        lambda m: m.register_forward_hook(lambda *a: None),
        lambda m: m.embeddings.word_embeddings.weight.requires_grad_(False),
        lambda m: m.encoder.to(torch.float16),
        lambda m: setattr(m.config, "_attn_implementation_internal", "eager"),
        lambda m: setattr(m.config, "output_hidden_states", True),
    ]
    for change in changes:
        with preserved(model):
            change(model)
            assert model_state(model) != before
        assert model_state(model) == before


def _mpnet(implementation: str | None = None) -> MPNetModel:
    torch.manual_seed(0)
    model = MPNetModel(MPNetConfig(**SIZES)).eval()
    if implementation:
        model.config._attn_implementation_internal = implementation
    return model


@pytest.mark.parametrize(
    ("build", "call", "message"),
    [
        (lambda: _mpnet("sdpa"), lambda m: capture(m), "attn_implementation 'sdpa'"),
        (
            lambda: _mpnet("flash_attention_2"),
            lambda m: capture(m),
            "attn_implementation 'flash_attention_2'",
        ),
        (lambda: _bert().train(), lambda m: route(m, None), "eval mode"),
        (lambda: _bert(), lambda m: route(m, None, padding_side="top"), "padding side"),
        (
            lambda: _mpnet(),
            lambda m: route(m, None, override=lambda *a: a[1]),
            "override",
        ),
    ],
)
def test_refusals_come_before_anything_changes(build, call, message):
    model = build()
    before = model_state(model)
    with pytest.raises(LowrankError, match=message), call(model):
        pytest.fail("the block must not run")
    assert model_state(model) == before


def test_an_implementation_that_cannot_run_here_is_put_back_as_it_was():
    """flash_attention_2 without its package: the capture replaces it, and it comes back
    by value (set_attn_implementation would refuse to restore it and leave ours)."""
    model = _bert()
    model.config._attn_implementation_internal = "flash_attention_2"
    before = model_state(model)
    with capture(model) as cap:
        model(input_ids=IDS)
    assert len(cap.probs) == 2
    assert model.config._attn_implementation == "flash_attention_2"
    assert model_state(model) == before
