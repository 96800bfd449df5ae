"""Capture: parity with output_attentions=True + numpy, padding invariance, clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank.errors import LowrankError
from lowrank.families.spectrum.pipeline import SpectrumCollector, analyse
from lowrank.hooks.attention import AttentionCall, capture, valid_blocks
from lowrank.inputs.config import heatmap_index
from lowrank.inputs.corpora import build_sequences, load_corpus
from lowrank.inputs.models import load_model
from tests.helpers import SEQ_LEN, reference_cumulative


@pytest.fixture(scope="module")
def roberta(roberta_dir):
    return load_model(str(roberta_dir))


@pytest.fixture(scope="module")
def wiki_sequences(roberta):
    corpus = load_corpus("sample-wiki", None)
    return build_sequences(corpus, roberta.tokenizer, SEQ_LEN, 6)


def test_capture_equals_output_attentions_reference(roberta, wiki_sequences):
    seqs = wiki_sequences
    result = analyse(roberta, seqs, heatmap_index(SEQ_LEN), batch_size=4)
    ref = reference_cumulative(roberta.model, seqs.input_ids, seqs.lengths)
    assert result.stats.count == len(seqs.lengths)
    assert np.abs(result.stats.cumulative.mean - ref.mean(axis=0)).max() <= 1e-6
    assert np.abs(result.stats.cumulative.std() - ref.std(axis=0, ddof=1)).max() <= 1e-6


def test_capture_rows_sum_to_one_and_model_output_is_unchanged(roberta, wiki_sequences):
    ids = torch.from_numpy(wiki_sequences.input_ids[:2])
    sums: list[torch.Tensor] = []

    def sink(call: AttentionCall) -> None:
        assert call.probs.shape == (2, roberta.num_heads, SEQ_LEN, SEQ_LEN)
        assert call.value.shape[:2] == (2, roberta.num_heads)
        sums.append(call.probs.sum(-1))

    roberta.model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = roberta.model(input_ids=ids).last_hidden_state
        with capture(roberta.model, sink):
            captured = roberta.model(input_ids=ids).last_hidden_state
    assert len(sums) == roberta.num_layers
    assert all(torch.allclose(s, torch.ones_like(s), atol=1e-5) for s in sums)
    assert torch.allclose(eager, captured, atol=1e-5)


def test_padded_batch_gives_the_spectra_of_each_sequence_alone(bert_dir):
    loaded = load_model(str(bert_dir))
    corpus = load_corpus("sample-imdb", None)
    seqs = build_sequences(corpus, loaded.tokenizer, 64, 22, keep_short=True)
    assert (seqs.lengths < 64).sum() >= 3, "the sample must include short reviews"
    batched = analyse(loaded, seqs, 16, batch_size=8)
    ref = reference_cumulative(loaded.model, seqs.input_ids, seqs.lengths)
    assert np.abs(batched.stats.cumulative.mean - ref.mean(axis=0)).max() <= 1e-6
    # one at a time through the capture: the same numbers
    alone = analyse(loaded, seqs, 16, batch_size=1)
    assert np.abs(batched.stats.cumulative.mean - alone.stats.cumulative.mean).max() <= 1e-6


def test_valid_blocks_groups_by_length():
    probs = torch.rand(3, 2, 5, 5)
    lengths = torch.tensor([5, 3, 5])
    call = AttentionCall(0, probs, probs, probs, probs, lengths, torch.nn.Identity())
    groups = {int(rows.numel()): block.shape for rows, block in valid_blocks(call)}
    assert groups == {1: (1, 2, 3, 3), 2: (2, 2, 5, 5)}


def test_capture_restores_the_model_when_the_sink_fails(roberta, wiki_sequences):
    roberta.model.set_attn_implementation("eager")

    def broken(call: AttentionCall) -> None:
        raise RuntimeError("sink failed")

    ids = torch.from_numpy(wiki_sequences.input_ids[:1])
    with (
        pytest.raises(RuntimeError, match="sink failed"),
        torch.no_grad(),
        capture(roberta.model, broken),
    ):
        roberta.model(input_ids=ids)
    assert roberta.model.config._attn_implementation == "eager"
    roberta.model(input_ids=ids)  # still runs with its own attention


def test_capture_refuses_training_mode(roberta):
    roberta.model.train()
    try:
        with pytest.raises(LowrankError, match="eval mode"), capture(roberta.model, lambda c: None):
            pass
    finally:
        roberta.model.eval()


def test_sink_names_layer_and_head_of_non_finite_attention():
    sink = SpectrumCollector(1, 2, 3, 4)
    probs = torch.full((1, 3, 4, 4), 0.25)
    probs[0, 2, 1, 1] = float("nan")
    call = AttentionCall(1, probs, probs, probs, probs, None, torch.nn.Identity())
    with pytest.raises(LowrankError, match="layer 2, head 3"):
        sink(call)


@pytest.mark.slow
def test_real_minilm_parity_with_output_attentions():
    loaded = load_model("minilm")
    assert (loaded.num_layers, loaded.num_heads, loaded.max_positions) == (6, 12, 512)
    corpus = load_corpus("sample-wiki", None)
    seqs = build_sequences(corpus, loaded.tokenizer, 512, 2)
    result = analyse(loaded, seqs, 128, batch_size=2)
    ref = reference_cumulative(loaded.model, seqs.input_ids, seqs.lengths)
    assert np.abs(result.stats.cumulative.mean - ref.mean(axis=0)).max() <= 1e-6
    # the pretrained model is far from uniform attention: some heads are strongly low-rank
    assert result.stats.summaries.mean[..., 0].max() > 0.9


def test_causal_decoder_parity_and_no_special_tokens(gpt2_dir):
    loaded = load_model(str(gpt2_dir))
    seqs = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, 64, 4)
    assert seqs.policy["special_tokens"] == {"start": [], "end": []}
    result = analyse(loaded, seqs, 16, batch_size=2)
    ref = reference_cumulative(loaded.model, seqs.input_ids, seqs.lengths)
    assert np.abs(result.stats.cumulative.mean - ref.mean(axis=0)).max() <= 1e-6


def test_two_halves_merge_to_the_whole_run(roberta, wiki_sequences):
    from lowrank.inputs.corpora import Sequences

    seqs = wiki_sequences
    whole = analyse(roberta, seqs, 12, batch_size=4).stats

    def part(sl: slice):
        return Sequences(seqs.input_ids[sl], seqs.lengths[sl], seqs.policy)

    merged = analyse(roberta, part(slice(0, 2)), 12).stats.merge(
        analyse(roberta, part(slice(2, None)), 12).stats
    )
    assert merged.count == whole.count
    assert np.abs(merged.cumulative.mean - whole.cumulative.mean).max() <= 1e-12
    assert np.abs(merged.cumulative.m2 - whole.cumulative.m2).max() <= 1e-12


# -- the public capture: lowrank.capture(model) during the user's own forward passes --------


def test_public_capture_equals_output_attentions(bert_dir):
    from transformers import AutoModel, AutoTokenizer

    from lowrank.hooks.public import capture as public_capture

    model = AutoModel.from_pretrained(bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    texts = ["a short review", "a much longer review of a film that went on and on and on"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(**batch, output_attentions=True)
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), public_capture(model, qkv=True) as cap:
        out = model(**batch)
        model(**batch)  # a second pass: its layers start a new entry
    assert len(cap) == 2 and cap.num_layers == len(ref.attentions) == 2
    for layer, expected in enumerate(ref.attentions):  # (B, H, n, n)
        assert cap.passes[0][layer].shape == expected.shape
        assert torch.allclose(cap.passes[0][layer], expected, atol=1e-6)
        assert torch.equal(cap.passes[1][layer], cap.passes[0][layer])
        assert cap.probs[layer].shape[0] == 2 * len(texts)  # passes joined on the batch
        q, k, v = cap.queries[layer], cap.keys[layer], cap.values[layer]
        assert q.shape == k.shape == v.shape == (4, 3, batch["input_ids"].shape[1], 8)
    assert cap.stack().shape == (2, 4, 3, *ref.attentions[0].shape[-2:])
    # the forward pass itself is unchanged, and the model is back to its own attention
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_public_capture_restores_the_model_on_error(bert_dir):
    from transformers import AutoModel

    from lowrank.hooks.public import capture as public_capture

    model = AutoModel.from_pretrained(bert_dir)
    model.train()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with pytest.raises(RuntimeError, match="user code failed"), public_capture(model) as cap:
        model(input_ids=ids)
        raise RuntimeError("user code failed")
    assert cap.num_layers == 2 and cap.probs[0].shape == (1, 3, 4, 4)
    assert model.training and all(m.training for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(LowrankError, match="qkv=True"):
        _ = cap.queries
