"""``lowrank keys`` through the command and the API: known answers on tiny models, the
independent computation, parity, save/load, resume and bad input.

The decoder is a tiny random Llama shaped like SmolLM2 (9 query heads sharing 3 KV heads)
whose ``k_proj`` has rank 2 per KV head: its pre-RoPE keys live in a 2-dimensional subspace,
which the rotary embedding turns with the position. The reference reads ``k_proj`` with a
forward hook and rotates with transformers' own ``apply_rotary_pos_emb`` (numpy PCA after).
Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lowrank
from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.keys.result import KeysResult
from lowrank.inputs.corpora import data_dir
from lowrank.runs.checkpoints import RunInterrupted
from tests.helpers import llama_tokenizer
from tests.test_keys_reference import reference_key_ranks

N = 32  # tokens per sequence
HEADS, KV, D = 9, 3, 8  # SmolLM2's grouping: 3 query heads per KV head
OPTIONS = {"seq_len": N, "num_sequences": 4, "batch_size": 2, "bootstrap": 20, "queries": 16}
OPTIONS_CLI = ["--seq-len", N, "--num-sequences", 4, "--batch-size", 2, "--bootstrap", 20]
OPTIONS_CLI += ["--queries", 16]


def planted_llama(vocab: int, seed: int = 0):
    """A tiny Llama (2 layers, 9 heads, 3 KV heads, d = 8) whose k_proj has rank 2 per KV
    head."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=HEADS * D, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=128,
        initializer_range=0.3, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaModel(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.layers:
            w = layer.self_attn.k_proj.weight  # (KV d, hidden)
            for j in range(KV):
                a = torch.randn(D, 2, generator=gen)
                b = torch.randn(2, HEADS * D, generator=gen)
                w[j * D : (j + 1) * D] = a @ b * 0.3
    return model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama-gqa")
    tokenizer = llama_tokenizer()
    tokenizer.save_pretrained(folder)
    planted_llama(len(tokenizer)).save_pretrained(folder)
    return folder


def _cli(*args: object):
    return CliRunner().invoke(main, ["keys", *(str(a) for a in args)])


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def llama_run(llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keys") / "run"
    res = _cli("--model", llama_dir, *OPTIONS_CLI, "--budgets", "0.25,1", "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_the_command_finds_the_planted_rank_before_rope_and_more_after(llama_run):
    a = _npz(llama_run / "keys.npz")
    assert a["key_rank90_pre"].shape == a["key_rank90_post"].shape == (2, KV)
    assert a["query_rank90_pre"].shape == (2, HEADS) and a["value_rank90"].shape == (2, KV)
    assert (a["key_rank90_pre"] <= 2).all()
    assert (a["key_rank90_post"] > a["key_rank90_pre"]).all(), "RoPE turns the subspace"
    assert (a["calibration_key_rank90_pre"] <= 2).all()  # the planted rank on any text
    assert (a["logits_pre_rank90_energy"] <= 2).all()  # QK^T before RoPE has rank <= 2
    assert (a["weights_rank90_energy"] <= 2).all()  # and so has W_Q^h W_K^g^T
    assert (a["layer_rank90_energy"][:, 0] <= 2 * KV).all()  # ShadowKV's whole layer
    meta = json.loads((llama_run / "run.json").read_text())
    assert meta["kv_heads"] == KV and meta["num_heads"] == HEADS and meta["head_dim"] == D
    assert meta["rotary"] and meta["causal"] and meta["calibration"]["dataset"] == "sample-imdb"
    assert meta["calibration"]["default"] and meta["topk"]["ranks"] == [1, 2, 4, 8]


def test_full_rank_is_exact_top_k_and_every_key_is_exact_attention(llama_run):
    a = _npz(llama_run / "keys.npz")
    ranks, budgets = a["topk_ranks"].tolist(), a["topk_budgets"].tolist()
    assert ranks[-1] == D and budgets == [0.25, 1.0]
    recall, mass, error = (a[f"topk_{m}_mean"] for m in ("recall", "mass", "error"))
    assert (recall[:, -1] == 1).all(), "r = d: recall 1 in every basis"
    for s in range(1, 3):  # r = d: every basis gives exact top-k, the same error
        assert np.array_equal(error[s, -1], error[0, -1])
    assert np.allclose(mass[:, :, 1], 1, atol=1e-6), "k = n keeps every key"
    assert (error[:, :, 1] <= 1e-5).all(), "k = n: no output error"
    assert (recall[0, 0, 0] < 1).any(), "r = 1 of 8 misses keys"
    assert (a["topk_gap_recall_mean"][0] == 0).all()  # basis 0 against itself
    assert a["topk_sequence_means"].shape == (4, 3, 4, 2, 2, 3)


def test_the_ranks_equal_an_independent_computation(llama_run, llama_dir):
    from transformers import AutoModel

    a = _npz(llama_run / "keys.npz")
    model = AutoModel.from_pretrained(llama_dir).eval()
    mask = a.get("attention_mask")
    pre, post = reference_key_ranks(model, a["input_ids"], mask, fraction=0.9)
    assert np.array_equal(pre, a["key_rank90_pre"]) and np.array_equal(post, a["key_rank90_post"])


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-9) -> None:
    assert set(a) == set(b), set(a) ^ set(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.shape == y.shape, key
        if x.dtype.kind == "f":
            assert np.allclose(x, y, rtol=tol, atol=tol, equal_nan=True), key
        else:
            assert np.array_equal(x, y), key


def test_the_api_gives_the_commands_arrays_and_results_save_and_load(
    llama_run, llama_dir, tmp_path
):
    res = lowrank.keys(str(llama_dir), budgets=(0.25, 1.0), progress=False, **OPTIONS)
    assert isinstance(res, KeysResult) and res.path is None
    assert (res.key_rank90_pre <= 2).all() and (res.key_rank90_post > res.key_rank90_pre).all()
    _same(res.arrays, _npz(llama_run / "keys.npz"))
    back = lowrank.load(res.save(tmp_path / "api"))
    assert isinstance(back, KeysResult)
    _same(back.arrays, res.arrays, tol=0.0)
    assert back.report() == res.report()  # read from the folder alone
    frame = back.summary()
    assert len(frame) == 2 * HEADS and (frame["kv_head"] == frame["head"].sub(1) // 3 + 1).all()
    assert np.array_equal(
        frame["key_rank90_pre"], back.key_rank90_pre[frame.layer - 1, frame.kv_head - 1]
    )
    with pytest.raises(LowrankError, match="r = 1, 2, 4, 8"):
        back.summary(at=3)
    saved = lowrank.load(llama_run)
    assert "Top-k from r dimensions" in saved.report() and "layer" in saved.report()


def test_a_model_object_and_token_ids_give_the_same_numbers(llama_run, llama_dir):
    from transformers import AutoModel, AutoTokenizer

    a = _npz(llama_run / "keys.npz")
    model = AutoModel.from_pretrained(llama_dir).train()  # train mode: restored after
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    res = lowrank.keys(
        model, tokenizer, torch.from_numpy(a["input_ids"]), budgets=(0.25, 1.0),
        progress=False, **{k: v for k, v in OPTIONS.items() if k != "seq_len"},
    )  # fmt: skip
    assert model.training
    for name in ("key_rank90_pre", "key_rank90_post", "topk_recall_mean", "topk_error_mean"):
        assert np.allclose(res.arrays[name], a[name], atol=1e-9, equal_nan=True), name
    assert res.config["corpus"]["kind"] == "memory"


def test_an_encoder_has_pre_equal_to_post(bert_dir):
    res = lowrank.keys(str(bert_dir), progress=False, **OPTIONS)
    a, layers, heads = res.arrays, 2, 3
    assert not res.config["rotary"] and not res.config["causal"] and res.config["kv_heads"] == 3
    for pre, post in (
        ("key_rank90_pre", "key_rank90_post"),
        ("query_rank90_pre", "query_rank90_post"),
    ):
        assert a[pre].shape == (layers, heads) and np.array_equal(a[pre], a[post])
    assert np.array_equal(a["key_pre_cumvar"], a["key_post_cumvar"])
    assert np.array_equal(a["logits_pre_rank90_energy"], a["logits_post_rank90_energy"])
    assert (a["topk_recall_mean"][:, -1] == 1).all()
    assert res.config["calibration"]["dataset"] == "sample-imdb"


def test_an_interrupted_run_resumes_to_the_same_numbers(
    llama_dir, llama_run, tmp_path, monkeypatch
):
    from lowrank.families.keys import topk

    out = tmp_path / "partial"
    original, calls = topk.TopkStats.update, [0]

    def stop(self, *args):
        calls[0] += 1
        if calls[0] > 2:  # two layers of the first top-k batch, then Ctrl-C
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(topk.TopkStats, "update", stop)
    options = {**OPTIONS, "budgets": (0.25, 1.0), "checkpoint_every": 1, "progress": False}
    with pytest.raises(RunInterrupted, match="resume"):
        lowrank.keys(str(llama_dir), out=out, **options)
    info = json.loads((out / "checkpoint.json").read_text())
    assert info["next_index"] == 4 + 4 + 2 and not (out / "run.json").exists()
    monkeypatch.setattr(topk.TopkStats, "update", original)
    # a real model's covariance sums exceed the limit on arrays a run.json does not name
    # (SmolLM2's are 140 MB); a checkpoint is checked by its codec instead
    monkeypatch.setattr("lowrank.runs.npz.LOOSE", 1)
    with pytest.raises(LowrankError, match="partial run"):
        lowrank.keys(str(llama_dir), out=out, **options)
    res = lowrank.keys(str(llama_dir), out=out, resume=True, **options)
    a = _npz(llama_run / "keys.npz")
    for name in ("key_rank90_post", "key_post_cumvar", "topk_recall_mean", "topk_error_mean"):
        assert np.allclose(res.arrays[name], a[name], atol=1e-9, equal_nan=True), name
    assert not (out / "checkpoint.json").exists() and (out / "run.json").exists()


def test_a_resume_or_a_rerun_on_a_corpus_edited_in_place_is_refused(
    llama_dir, tmp_path, monkeypatch
):
    """The path names the corpus, the fingerprint says what it held: an edited file must not
    be mixed into a checkpoint nor silently replace a complete run."""
    from lowrank.families.keys import topk

    corpus = tmp_path / "articles.txt"
    text = (data_dir() / "sample_wiki.txt").read_text(encoding="utf-8")
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    original, calls = topk.TopkStats.update, [0]

    def stop(self, *args):
        calls[0] += 1
        if calls[0] > 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(topk.TopkStats, "update", stop)
    options = {**OPTIONS, "data": str(corpus), "checkpoint_every": 1, "progress": False}
    with pytest.raises(RunInterrupted):
        lowrank.keys(str(llama_dir), out=out, **options)
    monkeypatch.setattr(topk.TopkStats, "update", original)
    corpus.write_text(text.replace(" the ", " a "), encoding="utf-8")  # same path, new text
    with pytest.raises(LowrankError, match=r"made from other inputs.*token ids differ"):
        lowrank.keys(str(llama_dir), out=out, resume=True, **options)
    # --overwrite beside --resume (as the interrupted command's own advice may carry it)
    # continues the checkpoint: its inputs must still be these
    with pytest.raises(LowrankError, match=r"made from other inputs.*token ids differ"):
        lowrank.keys(str(llama_dir), out=out, resume=True, overwrite=True, **options)
    done = lowrank.keys(str(llama_dir), out=out, overwrite=True, **options)
    assert done.config["fingerprint"]["num_sequences"] == 4
    corpus.write_text(text, encoding="utf-8")
    with pytest.raises(LowrankError, match="token ids differ"):
        lowrank.keys(str(llama_dir), out=out, **options)
    assert json.loads((out / "run.json").read_text())["fingerprint"] == done.config["fingerprint"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ranks", "9"], "--ranks 9: the head dimension is d = 8"),
        (["--budgets", "0"], "--budgets 0"),
        (["--rank-fraction", "1"], "--rank-fraction 1.0 must be a finite number in (0, 1)"),
        (
            ["--calibration-data", "/no/such/corpus"],
            "--calibration-data: data path '/no/such/corpus' does not exist",
        ),
        (["--bootstrap-groups", "1"], "--bootstrap-groups 1 must be at least 2"),
        (["--bootstrap", "1"], "--bootstrap 1: give 0 (no intervals) or at least 20"),
        # the shared corpus readers name the calibration options, not --data
        (["--calibration-dataset", "text"], "needs a file: pass --calibration-data PATH"),
        (["--queries", "0"], "--queries 0 must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_loses_nothing(llama_dir, llama_run, args, fragment):
    before = (llama_run / "keys.npz").read_bytes()
    res = _cli("--model", llama_dir, *OPTIONS_CLI, *args, "--out", llama_run, "--overwrite")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and fragment in errors[0], res.output  # log lines may come first
    assert res.output.strip().splitlines()[-1] == errors[0]
    assert (llama_run / "keys.npz").read_bytes() == before


def test_the_api_names_its_keywords(llama_dir):
    with pytest.raises(LowrankError, match=r"^ranks=9: the head dimension is d = 8$"):
        lowrank.keys(str(llama_dir), ranks=(2, 9), progress=False, **OPTIONS)
    with pytest.raises(LowrankError, match="resume continues a run folder"):
        lowrank.keys(str(llama_dir), resume=True, progress=False)


def test_a_checkpoint_of_other_statistics_is_refused(tmp_path):
    from lowrank.families.keys.passes import CODEC, KeysState, Settings, Shape, check_state

    settings = Settings(0.9, (2, 8), (0.5,), 4, True, False, 0, 2, 0)
    state = KeysState.start(Shape(2, 4, 2, 8), settings)
    check_state(state, Shape(2, 4, 2, 8), settings, tmp_path)  # its own shape: accepted
    with pytest.raises(LowrankError, match="evaluation statistics of another model"):
        check_state(state, Shape(2, 6, 2, 8), settings, tmp_path)
    with pytest.raises(LowrankError, match="top-k statistics"):
        check_state(state, Shape(2, 4, 2, 8), dataclasses.replace(settings, ranks=(4, 8)), tmp_path)
    arrays = CODEC.encode(state)
    back = CODEC.decode(tmp_path, [arrays], {})[0]
    assert CODEC.count(back) == 0 and back.phase == 0
    with pytest.raises(LowrankError, match="not a keys checkpoint"):
        CODEC.decode(tmp_path, [{"state": np.array([0, 0, 0])}], {})


def test_a_damaged_run_folder_is_refused_in_one_line(llama_run, tmp_path):
    import shutil

    from lowrank.families.keys.format import FORMAT

    copy = tmp_path / "damaged"
    shutil.copytree(llama_run, copy)
    arrays = _npz(copy / "keys.npz")
    arrays["key_rank90_post"] = arrays["key_rank90_post"] * 0 + D + 1  # above d: impossible
    np.savez(copy / "keys.npz", **arrays)
    with pytest.raises(LowrankError) as caught:
        lowrank.load(copy)
    assert "keys.npz" in str(caught.value) and "\n" not in str(caught.value)
    meta = json.loads((copy / "run.json").read_text())
    checks = FORMAT.arrays(meta, arrays)  # the array spec alone names the array at fault
    from lowrank.runs.arrays import check_arrays

    with pytest.raises(LowrankError, match=r"key_rank90_post holds 9, above its maximum 8"):
        check_arrays(copy / "keys.npz", arrays, checks)
    del arrays["topk_sequence_means"]
    with pytest.raises(LowrankError, match="lacks arrays topk_sequence_means"):
        check_arrays(copy / "keys.npz", arrays, checks)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (123, "calibration_data is int: give a path"),
        (b"text", "calibration_data is bytes"),
        ([1, 2], "calibration_data item 0 is int"),
        ({"text": "x"}, "calibration_data: a mapping of token ids needs an 'input_ids' entry"),
        (["", " "], "calibration_data holds no text"),
    ],
)
def test_bad_calibration_objects_name_calibration_data(llama_dir, value, fragment):
    with pytest.raises(LowrankError, match=re.escape(fragment)):
        lowrank.keys(str(llama_dir), calibration_data=value, progress=False, **OPTIONS)


def test_resume_of_a_complete_run_or_of_another_commands_run_says_which(llama_dir, tmp_path):
    spectrum_run = tmp_path / "spectrum"
    lowrank.spectrum(str(llama_dir), seq_len=N, num_sequences=2, out=spectrum_run, progress=False)
    out = tmp_path / "done"
    lowrank.keys(str(llama_dir), out=out, progress=False, **OPTIONS)
    with pytest.raises(LowrankError, match="is already complete"):
        lowrank.keys(str(llama_dir), out=out, resume=True, progress=False, **OPTIONS)
    before = (spectrum_run / "run.json").read_bytes()
    with pytest.raises(LowrankError, match=r"holds another run \(lowrank.spectrum.*not a partial"):
        lowrank.keys(str(llama_dir), out=spectrum_run, resume=True, progress=False, **OPTIONS)
    assert (spectrum_run / "run.json").read_bytes() == before
