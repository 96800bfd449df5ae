"""Efficiency measures: the budget-mode memory saving, equal-batch peaks per sequence,
interleaved rounds and their spread. No assertion here depends on how fast anything ran."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.families.efficiency import timing as efficiency
from lowrank.families.efficiency.linformer import ExactSelfAttention
from lowrank.families.efficiency.result import EfficiencyResult
from lowrank.families.efficiency.timing import (
    Measurement,
    budget_memory_saving,
    interleaved_order,
    speedup_table,
    spread,
    time_interleaved,
)

TINY = ["--hidden", "16", "--heads", "2", "--ffn", "32", "--layers", "1", "--device", "cpu"]
MIB = 2**20


def _m(method, n, k, batch, peak, rounds=(), equal=None, equal_peak=None):
    seconds = float(np.median(rounds)) if rounds else 1.0
    return Measurement(
        method,
        n,
        k,
        batch,
        seconds,
        peak,
        len(rounds) or 1,
        equal_batch=equal,
        equal_batch_peak_bytes=equal_peak,
        round_seconds_per_token=tuple(rounds),
    )


def test_budget_saving_of_largest_batches_2_and_8_is_4():
    assert budget_memory_saving(8, 2) == 4.0
    assert budget_memory_saving(2, 8) == 0.25
    assert math.isnan(budget_memory_saving(8, 0))  # the baseline fits no batch


def test_budget_table_uses_the_batch_ratio_not_peaks_at_unequal_batches():
    # the run: exact fits batch 2 (78 MiB), Linformer batch 8 (88 MiB) in 0.1 GiB;
    # the ratio of those peaks is 0.89x, the paper's measure is 8 / 2 = 4x
    records = [
        _m("exact", 1024, None, 2, 81829888, equal=2, equal_peak=81829888),
        _m("linformer", 1024, 64, 8, 92299264, equal=2, equal_peak=23068672),
    ]
    cell = speedup_table(records, "exact", budget=True)[(1024, 64)]
    assert cell["memory_saving"] == 4.0
    assert (cell["batch"], cell["baseline_batch"]) == (8, 2)
    assert cell["memory_saving_equal_batch"] == pytest.approx(81829888 / 23068672)
    fixed = speedup_table(records, "exact", budget=False)[(1024, 64)]
    assert fixed["memory_saving"] == fixed["memory_saving_equal_batch"]


def test_peak_per_sequence_is_taken_at_the_equal_batch():
    timed_alone = _m("exact", 64, None, 4, 400)
    assert timed_alone.peak_bytes_per_sequence == 100  # no equal batch: its own
    shared = _m("exact", 64, None, 4, 400, equal=2, equal_peak=300)
    assert shared.peak_bytes_per_sequence == 150


def test_interleaved_order_reverses_every_round():
    assert interleaved_order(3, 3) == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    positions = np.zeros(4)
    for order in interleaved_order(4, 6):
        positions[order] += np.arange(4)
    assert np.all(positions == positions[0])  # the same mean position for every stack


def test_time_interleaved_runs_the_passes_in_that_order():
    calls: list[int] = []
    passes = [lambda i=i: calls.append(i) for i in range(3)]
    times = time_interleaved(passes, warmup=1, rounds=2)
    assert calls == [0, 1, 2, 2, 1, 0, 0, 1, 2]  # one warm-up round, then two timed
    assert times.shape == (2, 3) and np.all(times >= 0)


def test_speedup_spread_is_over_within_round_ratios():
    records = [
        _m("exact", 256, None, 1, 10, rounds=(2.0, 4.0, 6.0)),
        _m("linformer", 256, 32, 1, 10, rounds=(1.0, 1.0, 2.0)),
    ]
    cell = speedup_table(records)[(256, 32)]
    # rounds: 2 / 1, 4 / 1, 6 / 2
    assert (cell["speedup_min"], cell["speedup"], cell["speedup_max"]) == (2.0, 3.0, 4.0)
    assert spread([3.0, 1.0, 2.0]) == (1.0, 2.0, 3.0)
    assert all(math.isnan(v) for v in spread([]))


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eff") / "run"
    args = ["efficiency", "--n", "32,64", "--k", "8,64", *TINY]
    args += ["--repeats", "3", "--warmup", "0", "--out", str(out), "--plot"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_fixed_batch_run_stores_ordered_spreads_and_equal_batch_peaks(fixed_run):
    out, output = fixed_run
    data = np.load(out / "efficiency.npz")
    for base in ("exact", "sdpa"):
        low, mid, high = (data[f"speedup{s}_vs_{base}"] for s in ("_min", "", "_max"))
        assert low.shape == mid.shape == high.shape == (2, 2)
        measured = ~np.isnan(mid)
        assert np.array_equal(measured, ~np.isnan(low)) and measured.sum() == 3
        assert np.all(low[measured] <= mid[measured]) and np.all(mid[measured] <= high[measured])
        assert np.array_equal(
            data[f"memory_saving_vs_{base}"],
            data[f"memory_saving_equal_batch_vs_{base}"],
            equal_nan=True,
        )
    assert np.array_equal(data["equal_batch"], [1, 1])
    assert data["peak_bytes_per_sequence_linformer"].shape == (2, 2)
    assert np.isnan(data["speedup_vs_exact"][0, 1])  # k = 64 > n = 32: no Linformer
    records = json.loads((out / "efficiency.json").read_text())["records"]
    for r in records:
        assert len(r["round_seconds_per_token"]) == 3
        assert r["seconds_per_token_min"] <= r["seconds_per_token"] <= r["seconds_per_token_max"]
    meta = json.loads((out / "run.json").read_text())
    assert meta["format_version"] == 3
    assert "peak memory per sequence, both at batch 1" in meta["memory_saving_measure"]
    assert "median [min, max] over 3 interleaved rounds" in output
    assert "memory saving: peak memory per sequence at equal batch" in output
    assert "largest batch" not in output and "paper" not in output.lower()
    assert (out / "figures" / "speedup_vs_n.png").is_file()


def _fake_peak(model, x, passes=3):
    """0.5 MiB plus 4 MiB per sequence with exact attention, 1 MiB with Linformer's."""
    exact = isinstance(model.blocks[0].attention, ExactSelfAttention)
    return int((0.5 + (4 if exact else 1) * x.shape[0]) * MIB)


def test_budget_run_reports_the_ratio_of_largest_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(efficiency, "peak_memory", _fake_peak)
    out = tmp_path / "budget"
    budget = 8.6 / 1024  # GiB: exact fits batch 2 (8.5 MiB), Linformer batch 8 (8.5 MiB)
    args = ["efficiency", "--n", "64", "--k", "16", *TINY, "--repeats", "2", "--warmup", "0"]
    res = CliRunner().invoke(main, [*args, "--memory-budget", str(budget), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = np.load(out / "efficiency.npz")
    assert data["batch_exact"][0] == 2 and data["batch_linformer"][0, 0] == 8
    assert data["memory_saving_vs_exact"][0, 0] == 4.0  # not 8.5 MiB / 8.5 MiB = 1
    # at the equal batch 2: (0.5 + 8) / (0.5 + 2) MiB
    assert data["equal_batch"][0] == 2
    assert data["memory_saving_equal_batch_vs_exact"][0, 0] == pytest.approx(8.5 / 2.5)
    assert data["peak_bytes_per_sequence_exact"][0] == pytest.approx(8.5 / 2 * MIB)
    assert "largest batch that fits" in res.output and "4x (8/2)" in res.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["memory_saving_measure"].startswith("largest power-of-two batch")
    assert len(EfficiencyResult.read(out).draw()) == 2


def test_a_stack_over_the_budget_at_batch_1_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(efficiency, "peak_memory", _fake_peak)
    out = tmp_path / "tight"
    budget = 3.0 / 1024  # GiB: exact needs 4.5 MiB at batch 1, Linformer 1.5 MiB
    args = ["efficiency", "--n", "64", "--k", "16", *TINY, "--repeats", "1", "--warmup", "0"]
    res = CliRunner().invoke(main, [*args, "--memory-budget", str(budget), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "exact: over the budget at batch 1" in res.output
    data = np.load(out / "efficiency.npz")
    assert data["batch_exact"][0] == 0 and data["batch_linformer"][0, 0] == 2
    assert np.isnan(data["memory_saving_vs_exact"][0, 0])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0"])
def test_memory_budget_rejects_non_positive_and_non_finite(tmp_path, value):
    res = CliRunner().invoke(
        main, ["efficiency", *TINY, "--memory-budget", value, "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 2
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    assert "--memory-budget" in res.output
    assert not (tmp_path / "e").exists()


def test_format_1_folders_still_plot_and_summarise(tmp_path):
    out = tmp_path / "v1"
    out.mkdir()
    meta = {
        "format": "lowrank-efficiency",
        "format_version": 1,
        "hardware": {"device": "cpu", "processor": "x86_64", "torch_threads": 2},
        "stack": {"layers": 2, "hidden": 256, "heads": 4, "ffn": 1024},
        "n": [1024],  # the fields a format 1 run.json held (the schema reads them)
        "k": [64],
        "dtype": "float32",
        "batch": None,
        "memory_budget_gib": 0.1,
        "repeats": 3,
    }
    cells = [{"n": 1024, "k": 64, "speedup": 0.5, "memory_saving": 0.89}]
    data = {
        "records": [],
        "tables": {"exact": cells, "sdpa": cells},
        "crossover_n": {"exact": {"64": None}, "sdpa": {"64": None}},
    }
    (out / "run.json").write_text(json.dumps(meta))
    (out / "efficiency.json").write_text(json.dumps(data))
    paths = EfficiencyResult.read(out).draw()
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    res = CliRunner().invoke(main, ["summary", str(out), "--format", "csv"])
    assert res.exit_code == 0, res.output  # was an internal KeyError: format 1 has no npz
    assert "1024" in res.output and "0.5" in res.output


def test_k_at_least_every_n_is_one_line(tmp_path):
    res = CliRunner().invoke(
        main, ["efficiency", "--n", "256", "--k", "512", "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 2
    assert "every --k (512) is at least every --n" in res.output
    assert not (tmp_path / "e").exists()


# --- the memory a run needs, estimated before it starts ------------------------------------


def _one_error_line(res):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0].removeprefix("error: ")


def test_a_largest_n_beyond_the_free_memory_is_refused_naming_the_largest_that_fits(
    tmp_path, monkeypatch
):
    from lowrank import efficiency as api
    from lowrank.errors import LowrankError
    from lowrank.families.efficiency import peak as memory
    from lowrank.families.efficiency.timing import StackShape

    free = 2 * 2**30
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    args = ["efficiency", "--n", "512,65536", "--k", "64", "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "e")])
    message = _one_error_line(res)
    assert message.startswith("--n 65536 needs about ")
    fit = int(re.search(r"the largest n that fits is (\d+)$", message).group(1))
    shape = StackShape()  # the CLI's defaults
    assert memory.estimate_bytes(fit, [64], shape, 4, 1) <= free
    assert memory.estimate_bytes(fit + 1, [64], shape, 4, 1) > free
    assert 512 < fit < 65536
    assert not (tmp_path / "e").exists()
    with pytest.raises(LowrankError) as caught:
        api(n=(512, 65536), k=64, device="cpu")
    assert str(caught.value) == message


def test_the_estimate_bounds_the_measured_peak_of_exact_attention():
    import torch

    from lowrank.families.efficiency.peak import activation_bytes
    from lowrank.families.efficiency.timing import StackShape, _inputs, _stacks, peak_memory

    shape = StackShape(1, 64, 4, 128)
    n = 1024  # the n x n scores (16 MiB a matrix) dominate, as at any n worth refusing
    exact = _stacks(n, [64], shape)[0][2].eval()
    x = _inputs(1, n, shape.hidden, torch.device("cpu"), torch.float32)
    measured = peak_memory(exact, x)
    assert measured > 4 * n * n * 4  # at least the scores of the four heads
    assert activation_bytes("exact", 1, n, None, shape, 4) >= measured


def test_the_batch_search_stops_where_the_estimate_fills_the_machine(tmp_path, monkeypatch):
    from lowrank.families.efficiency import peak as memory
    from lowrank.families.efficiency.timing import StackShape

    shape = StackShape(1, 16, 2, 32)
    free = memory.estimate_bytes(256, [16], shape, 4, 2, "exact")  # exact fits batch 2
    caps = memory.affordable(256, [16], shape, "float32", free)
    assert caps[("exact", None)] == caps[("sdpa", None)] == 2
    lin = caps[("linformer", 16)]
    assert lin > 2 and lin & (lin - 1) == 0  # a power of two
    assert memory.estimate_bytes(256, [16], shape, 4, lin, "linformer", 16) <= free
    assert memory.estimate_bytes(256, [16], shape, 4, 2 * lin, "linformer", 16) > free
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    monkeypatch.setattr(efficiency, "peak_memory", _fake_peak)
    args = ["efficiency", "--n", "256", "--k", "16", *TINY, "--repeats", "1", "--warmup", "0"]
    res = CliRunner().invoke(main, [*args, "--memory-budget", "1", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    data = np.load(tmp_path / "b" / "efficiency.npz")
    # a 1 GiB budget fits 128 exact sequences of the fake peak; the machine only 2
    assert data["batch_exact"][0] == 2
    assert data["batch_linformer"][0, 0] == min(lin, 512)
