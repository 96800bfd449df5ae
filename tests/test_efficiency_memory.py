"""Peak memory of ``lowrank efficiency``: exact counts that do not depend on what ran before
(issue 27: a notebook printed savings of 2074x, 131x and 514x from sampled resident memory),
the CUDA allocator's peak, and no saving from a peak below the method's resolution."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lowrank
from lowrank.families.efficiency.memory import (
    CUDA_ALLOCATOR,
    RESIDENT_SAMPLED,
    TENSORS,
    memory_method,
    recorded_method,
    unresolved_cells,
)
from lowrank.families.efficiency.result import EfficiencyResult
from lowrank.families.efficiency.timing import (
    Measurement,
    StackShape,
    _inputs,
    _stacks,
    speedup_table,
)
from lowrank.families.efficiency.tracker import TensorPeak, peak_memory

TINY = {"hidden": 16, "heads": 2, "ffn": 32, "layers": 1, "device": "cpu", "progress": False}
CPU = torch.device("cpu")


def test_tensor_peak_counts_the_bytes_alive_at_once():
    a = torch.randn(256, 256)  # before the count: never counted
    size = 256 * 256 * 4
    with torch.inference_mode(), TensorPeak() as count:
        y = a @ a
        del y  # freed: the next product reuses the budget
        z = a @ a
        view = z.view(-1)  # a view allocates nothing
        assert (count.live, count.peak) == (size, size)
        w = z.T.contiguous()  # a copy does
        assert (count.live, count.peak) == (2 * size, 2 * size)
        del z
        assert count.live == 2 * size  # the view keeps z's storage alive
        del view, w
        assert count.live == 0
    assert count.peak == 2 * size


def test_the_peak_of_a_stack_does_not_depend_on_what_ran_before():
    shape = StackShape(1, 32, 2, 64)
    stack = _stacks(64, [16], shape)[0][2].eval()
    x = _inputs(2, 64, shape.hidden, CPU, torch.float32)
    first = peak_memory(stack, x)
    big = torch.ones(2**24)  # 64 MiB allocated and freed: resident memory keeps pages
    del big
    larger = _stacks(256, [16], shape)[0][2].eval()
    peak_memory(larger, _inputs(4, 256, shape.hidden, CPU, torch.float32))
    assert peak_memory(stack, x) == first > 0


def test_exact_attention_holds_two_score_matrices_at_its_peak():
    # softmax(Q K^T / sqrt(d)): the scores and their scaled copy (or the probabilities) are
    # alive together, H n^2 floats each, beside O(n D) of activations
    shape = StackShape(1, 16, 2, 32)
    n = 512
    exact, sdpa = (s[2].eval() for s in _stacks(n, [16], shape)[:2])
    x = _inputs(1, n, shape.hidden, CPU, torch.float32)
    scores = shape.heads * n * n * 4
    assert 2 * scores <= peak_memory(exact, x) < 2 * scores + 64 * n * shape.hidden * 4
    assert peak_memory(sdpa, x) < scores / 4  # no n x n matrix


def _allocator_peak(model, x) -> int:
    """The CPU allocator's own running total (the profiler's allocation events), max."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        total = getattr(event.extra_fields, "total_allocated", None)
        if isinstance(total, int):
            peak = max(peak, total)
    return peak


@pytest.mark.parametrize(("n", "batch"), [(64, 3), (256, 2)])
@pytest.mark.parametrize("method", ["exact", "sdpa", "linformer"])
def test_the_count_equals_the_allocators_peak(method, n, batch):
    # the reference: every allocation the CPU allocator reports to the profiler, including
    # the copies matmul makes inside itself and a fused kernel's scratch
    shape = StackShape(1, 32, 2, 64)
    stacks = {m: s.eval() for m, _, s in _stacks(n, [16], shape)}
    x = _inputs(batch, n, shape.hidden, CPU, torch.float32)
    try:
        reference = _allocator_peak(stacks[method], x)
    except (AttributeError, RuntimeError) as exc:  # a torch without these profiler fields
        pytest.skip(f"profiler allocation events unavailable: {exc}")
    if reference == 0:
        pytest.skip("this torch reports no CPU allocations to the profiler")
    counted = peak_memory(stacks[method], x)
    if method == "sdpa":  # the flash kernel's per-thread buffer is outside the count
        threads = torch.get_num_threads()
        assert 0 <= reference - counted <= threads * 0.6 * 2**20
    else:
        assert counted == reference


def _peaks(res: EfficiencyResult) -> dict[str, np.ndarray]:
    return {k: v for k, v in res.arrays.items() if k.startswith("peak_bytes_per_sequence")}


def test_two_calls_in_one_process_give_the_same_peaks_in_either_order():
    # issue 27: the same call after other work measured other peaks
    small = {"n": (32, 64), "k": 8, "repeats": 1, "warmup": 0, **TINY}
    large = {"n": (256,), "k": 8, "repeats": 1, "warmup": 0, **TINY}
    first_small = lowrank.efficiency(**small)
    after_small = lowrank.efficiency(**large)
    after_large = lowrank.efficiency(**small)
    first_large = lowrank.efficiency(**large)
    resolution = first_small.config["memory_resolution_bytes"]
    for a, b in ((first_small, after_large), (after_small, first_large)):
        pa, pb = _peaks(a), _peaks(b)
        assert pa.keys() == pb.keys() and pa
        for key in pa:
            batch = a.arrays["equal_batch"].reshape(-1, *([1] * (pa[key].ndim - 1)))
            diff = np.nan_to_num(np.abs(pa[key] - pb[key])) * batch
            assert np.all(diff < resolution), key
        assert np.array_equal(
            a.arrays["memory_saving_vs_exact"], b.arrays["memory_saving_vs_exact"], equal_nan=True
        )


def test_the_cuda_path_reports_the_allocators_peak_above_the_start(monkeypatch):
    state = {"allocated": 1000, "max": 1000, "calls": []}

    def fake_model(x):
        state["max"] = max(state["max"], state["allocated"] + 4096)  # a 4 KiB transient
        return x

    fakes = {
        "synchronize": lambda device=None: None,
        "empty_cache": lambda: state["calls"].append("empty"),
        "reset_peak_memory_stats": lambda device=None: state.update(max=state["allocated"]),
        "memory_allocated": lambda device=None: state["allocated"],
        "max_memory_allocated": lambda device=None: state["max"],
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    x = SimpleNamespace(device=SimpleNamespace(type="cuda"))
    assert peak_memory(fake_model, x) == 4096  # not 1000 + 4096: above the start
    assert state["calls"] == ["empty"]  # one measured pass, after the warm-up
    assert memory_method("cuda") is CUDA_ALLOCATOR and memory_method("cpu") is TENSORS


def _m(method, n, k, peak):
    return Measurement(method, n, k, 1, 1.0, peak, 1, equal_batch=1, equal_batch_peak_bytes=peak)


def test_a_saving_from_a_peak_below_the_resolution_is_not_reported():
    records = [_m("exact", 64, None, 4096), _m("linformer", 64, 8, 100)]
    cell = speedup_table(records, "exact", resolution=512)[(64, 8)]
    assert math.isnan(cell["memory_saving_equal_batch"]) and math.isnan(cell["memory_saving"])
    assert speedup_table(records, "exact", resolution=1)[(64, 8)]["memory_saving"] == 40.96
    rows = [{"method": r.method, "n": r.n, "k": r.k, "peak_bytes": r.peak_bytes} for r in records]
    assert unresolved_cells(rows, 512) == {("exact", 64, 8), ("sdpa", 64, 8)}
    assert unresolved_cells(rows, 1) == set()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mem") / "run"
    res = lowrank.efficiency(n=(32, 64), k=8, repeats=1, warmup=0, out=out, **TINY)
    return res, out


def test_run_json_and_the_report_say_how_peak_memory_was_measured(cli_run):
    res, out = cli_run
    meta = json.loads((out / "run.json").read_text())
    assert meta["format_version"] == 3
    assert meta["memory_method"] == "tensor-bytes" and meta["memory_resolution_bytes"] == 1
    assert meta["memory"] == TENSORS.description
    report = res.report()
    assert "peak memory: largest total size of the tensors alive at once" in report
    assert "<res" not in report  # every tensor count is resolved
    assert recorded_method(meta) == TENSORS


def test_a_format_2_folder_says_its_sampled_peaks_are_not_reproducible(cli_run, tmp_path):
    _, out = cli_run
    old = tmp_path / "v2"
    old.mkdir()
    for name in ("efficiency.json", "efficiency.npz", "efficiency.csv"):
        (old / name).write_bytes((out / name).read_bytes())
    meta = json.loads((out / "run.json").read_text())
    for key in ("memory_method", "memory_resolution_bytes"):
        del meta[key]
    meta |= {"format_version": 2, "memory": "process resident memory, sampled every millisecond"}
    (old / "run.json").write_text(json.dumps(meta))
    res = lowrank.load(old)
    assert res.memory_method() == RESIDENT_SAMPLED
    report = res.report()
    assert "not reproducible" in report
    # the tiny stacks' peaks are far below the sampler's 1 MiB: every saving unresolved
    saving_rows = report.split("equal batch, exact / Linformer")[1].splitlines()[2:4]
    assert all(row.split()[1] == "<res" for row in saving_rows), saving_rows
    assert "<res: a peak below the 1,048,576 bytes" in report


def test_older_folders_name_the_method_they_used():
    gpu = {"hardware": {"gpu": "H100"}, "memory": "CUDA allocator peak"}
    assert recorded_method(gpu).name == "cuda-allocator"
    assert recorded_method(gpu).resolution_bytes == 512
    assert recorded_method(gpu).description == "CUDA allocator peak"  # as it recorded
    cpu = {"hardware": {"processor": "x86_64", "torch_threads": 2}}
    assert recorded_method(cpu) is RESIDENT_SAMPLED and not RESIDENT_SAMPLED.reproducible
    assert TENSORS.reproducible and CUDA_ALLOCATOR.reproducible
