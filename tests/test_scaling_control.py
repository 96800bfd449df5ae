"""The position-shift control of ``lowrank scaling`` (lowrank issue 25, scaling item 6): the
same tokens at shifted position ids. Known answers: a rotary model (Llama) sees only relative
positions in q.k, so its P does not change; an absolute-position model (BERT) does."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import lowrank
from lowrank.families.scaling.collect import measure_windows
from lowrank.families.scaling.control import (
    ControlPlan,
    control_arrays,
    control_line,
    control_record,
    plan_control,
    relative_changes,
)
from lowrank.families.scaling.measures import ALL_MEASURES, MEASURES
from lowrank.families.scaling.workflow import ScalingSpec
from lowrank.inputs.models import LoadedModel, ModelSource

SOURCE = ModelSource("tiny", "local", "tiny", None)


def _loaded(model: Any, positions: int | None) -> LoadedModel:
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    return LoadedModel(model, None, SOURCE, layers, heads, positions)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def llama() -> LoadedModel:
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3,
    )  # fmt: skip
    return _loaded(LlamaModel(config).eval(), 128)


@pytest.fixture(scope="module")
def bert(bert_dir) -> LoadedModel:
    from lowrank.inputs.models import load_model

    return load_model(str(bert_dir))


def _measures(loaded: LoadedModel, plan: ControlPlan) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(0).integers(5, 90, (3, plan.n))
    spec = ScalingSpec(ns=(8, 16, 24), fixed_index=8)
    cpu = torch.device("cpu")
    base = measure_windows(loaded, ids, spec, 3, cpu)
    return base, measure_windows(loaded, ids, spec, 3, cpu, plan.positions)


def test_a_rotary_model_sees_the_same_attention_at_shifted_positions(llama):
    plan = plan_control(llama, (8, 16, 24, 32, 40))
    assert (plan.n, plan.shift, plan.skipped) == (24, 104, "")
    assert plan.positions.tolist() == list(range(104, 128))
    base, shifted = _measures(llama, plan)
    assert base.shape == (3, 2, 4, len(ALL_MEASURES))
    ranks = [ALL_MEASURES.index(m) for m in ("rank90", "rank99", "output_rank")]
    assert (base[..., ranks] == shifted[..., ranks]).all()  # q.k depends on m - n only
    assert np.abs(shifted - base).max() <= 1e-4 * np.abs(base).max()  # rounding alone


def test_an_absolute_position_model_changes_with_its_positions(bert):
    plan = plan_control(bert, (8, 16, 24, 32, 64))
    assert (plan.n, plan.shift) == (24, 40) and plan.positions[0] == 40
    assert plan.describe() == "positions 40-63 instead of 0-23"
    base, shifted = _measures(bert, plan)
    k = ALL_MEASURES.index("effective_rank")
    assert np.abs(shifted[..., k] - base[..., k]).max() > 1e-3


def test_roberta_positions_start_after_its_padding_index():
    model = SimpleNamespace(
        config=SimpleNamespace(model_type="roberta", pad_token_id=1),
        forward=lambda input_ids, position_ids=None: None,
    )
    plan = plan_control(_fake(model, 48), (8, 16, 32))
    assert (plan.n, plan.shift, plan.offset) == (16, 32, 2)
    assert plan.positions.tolist() == list(range(34, 50))  # ids 2 + 32 .. 2 + 47


def _fake(model: object, positions: int | None) -> LoadedModel:
    return LoadedModel(model, None, SOURCE, 1, 1, positions)  # type: ignore[arg-type]


def test_the_control_is_skipped_where_it_cannot_run_and_says_why():
    takes = SimpleNamespace(config=SimpleNamespace(model_type="bert"),
                            forward=lambda input_ids, position_ids=None: None)  # fmt: skip
    plain = SimpleNamespace(config=SimpleNamespace(model_type="x"), forward=lambda input_ids: None)
    assert "no absolute position limit" in plan_control(_fake(takes, None), (8, 16, 32)).skipped
    assert "takes no position_ids" in plan_control(_fake(plain, 64), (8, 16, 32)).skipped
    assert "fills the model's 16 positions" in plan_control(_fake(takes, 16), (8, 16, 32)).skipped
    record = control_record(ControlPlan(16, 0, np.zeros(0), skipped="turned off"), {}, None, [])  # type: ignore[arg-type]
    assert record == {"n": 16, "skipped": "turned off"}
    assert control_line(record, "rank90") == "position control: not measured (turned off)"


def test_relative_changes_are_per_document_ratios_of_means():
    base = np.array([2.0, 2.0, 4.0, 4.0, 1.0])
    shifted = np.array([3.0, 3.0, 4.0, 6.0, 1.0])
    clusters = np.array([0, 0, 1, 1, 2])
    assert relative_changes(base, shifted, clusters).tolist() == [0.5, 0.25, 0.0]


def test_the_record_holds_every_measure_and_group_with_an_interval():
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 5, (6, 2, 3, len(ALL_MEASURES)))  # (W, L, H, 7)
    arrays = control_arrays(base, base * 1.1)  # every value 10% higher
    assert set(arrays) == {f"position_control_{m}" for m in MEASURES}
    assert arrays["position_control_rank90"].shape == (2, 6, 2, 3)
    plan = ControlPlan(128, 384, np.arange(384, 512))
    record = control_record(
        plan, arrays, np.array([0, 0, 1, 2, 3, 3]), ["layer 1", "layer 2", "model"]
    )
    row = record["per_measure"]["rank90"]["model"]
    assert row["relative_change"]["mean"] == pytest.approx(0.1)
    assert row["relative_change"]["ci_low"] == pytest.approx(0.1)  # no spread: the point
    assert row["text"] == "+10.0% [+10.0%, +10.0%] over 4 documents"
    assert record["documents"] == 4 and record["windows"] == 6
    line = control_line(record, "rank90")
    assert line.startswith("position control (n = 128): the same tokens at positions 384-511")


def test_the_command_records_the_control_and_its_windows(bert_dir, tmp_path):
    """Two windows per document: the documents are the clusters of every interval."""
    res = lowrank.scaling(
        str(bert_dir), dataset="sample-imdb", seq_len=(8, 16, 24, 32, 64), num_sequences=3,
        windows_per_document=2, bootstrap=50, verdict_bootstrap=50, progress=False,
        out=tmp_path / "run",
    )  # fmt: skip
    a = res.arrays
    assert int(a["fit_documents"]) == 3 and int(a["fit_windows"]) == 6
    assert a["rank90"].shape[1] == 6 and len(np.unique(a["documents"])) == 3
    assert a["position_control_rank90"].shape == (2, 6, 2, 3)
    assert int(a["position_control_n"]) == 24 and int(a["position_control_shift"]) == 40
    base = a["position_control_rank90"][0]
    assert np.array_equal(base, a["rank90"][res.ns.index(24)])  # the measured n = 24 windows
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    control = meta["position_control"]
    assert control["shift"] == 40 and control["documents"] == 3 and control["windows"] == 6
    assert control["per_measure"]["rank90"]["model"]["base"] == pytest.approx(base.mean())
    assert meta["window_policy"]["per_document"] == 2
    assert meta["documents"]["fit"] == 3 and meta["documents"]["fit_windows"] == 6
    assert "position control (n = 24)" in res.report()
