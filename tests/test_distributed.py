"""torchrun: ranks deal the batches, merge exactly, stop together, and fail in one line.

The subprocess tests launch real ``torchrun --standalone --nproc-per-node 2 -m lowrank``
processes on the CPU (gloo) with the tiny RoBERTa; faults are injected by a small launcher
script that wraps ``pipeline._spectra`` before starting the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.spectrum.pipeline import deal, half_width, tracked
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import CODEC, SpectrumStats
from lowrank.maths.stats import RunningMoments
from lowrank.runs.checkpoints import read_checkpoint, write_checkpoint
from lowrank.runs.distributed import (
    check_command,
    choose_backend,
    collective_timeout,
    cpu_threads,
    explain,
    launch_from_env,
    merge_in_order,
)
from tests.helpers import SEQ_LEN

REPO = Path(__file__).resolve().parents[1]
ENV = {
    "RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29999",
}


# -- the split: every sequence once, every round a prefix ----------------------------------


@given(
    first=st.integers(0, 30),
    extra=st.integers(0, 40),
    batch=st.integers(1, 5),
    world=st.integers(1, 4),
)
def test_deal_gives_each_sequence_to_one_rank_and_each_round_ends_on_a_prefix(
    first, extra, batch, world
):
    total = first + extra
    plans = [list(deal(first, total, batch, rank, world)) for rank in range(world)]
    assert len({len(p) for p in plans}) == 1  # same number of rounds: collectives match
    seen: list[int] = []
    for rnd in zip(*plans, strict=True):
        assert len({end for _, _, end in rnd}) == 1
        for lo, hi, _ in rnd:
            assert 0 <= hi - lo <= batch
            seen += range(lo, hi)
        assert sorted(seen) == list(range(first, rnd[0][2]))  # done: exactly [first, end)
    assert sorted(seen) == list(range(first, total))
    alone = [(lo, hi) for lo, hi, _ in deal(first, total, batch)]
    assert alone == [(lo, min(lo + batch, total)) for lo in range(first, total, batch)]


def _stats(rng: np.random.Generator, count: int) -> tuple[SpectrumStats, np.ndarray]:
    s = -np.sort(-rng.random((count, 2, 3, 8)), axis=-1)  # (B, L, H, n), descending
    return SpectrumStats.empty(2, 3, 8, 2).add(s), s


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_merging_ranks_in_any_order_equals_one_pass_to_float64(sizes, seed):
    rng = np.random.default_rng(seed)
    parts, batches = zip(*(_stats(rng, k) for k in sizes), strict=True)
    whole = SpectrumStats.empty(2, 3, 8, 2).add(np.concatenate(batches))
    for order in (list(parts), list(parts)[::-1]):
        merged = merge_in_order(order)
        assert merged.count == whole.count == sum(sizes)
        for name in ("cumulative", "singular_values", "summaries"):
            a, b = getattr(merged, name), getattr(whole, name)
            np.testing.assert_allclose(a.mean, b.mean, rtol=0, atol=1e-12)
            np.testing.assert_allclose(a.m2, b.m2, rtol=0, atol=1e-12)
    moments = [RunningMoments(p.count, p.cumulative.mean, p.cumulative.m2) for p in parts]
    assert merge_in_order(moments).count == whole.count


def test_the_stopping_rule_on_tracked_moments_is_the_spectrum_half_width():
    stats = _stats(np.random.default_rng(1), 6)[0]
    assert half_width(tracked(stats, [2, 5])) == stats.half_width([2, 5])
    assert half_width(tracked(_stats(np.random.default_rng(1), 1)[0], [2])) == float("inf")


# -- checkpoints of several ranks ----------------------------------------------------------


def test_checkpoint_keeps_each_rank_and_its_own_next_index(tmp_path):
    rng = np.random.default_rng(0)
    parts = [_stats(rng, 3)[0], _stats(rng, 2)[0]]
    write_checkpoint(tmp_path, {"x": 1}, parts, 5, 9, "lowrank spectrum", CODEC)
    info = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (info["next_index"], info["world_size"]) == (5, 2)
    found = read_checkpoint(tmp_path, {"x": 1}, CODEC)
    assert found is not None
    back, next_index = found
    assert next_index == 5 and [p.count for p in back] == [3, 2]
    for got, want in zip(back, parts, strict=True):
        np.testing.assert_array_equal(got.cumulative.m2, want.cumulative.m2)
    # a crash between the npz and the json renames: the old json's record of its npz
    # refuses the new npz (one line saying how to start again) ...
    old = json.loads((tmp_path / "checkpoint.json").read_text())
    write_checkpoint(tmp_path, {"x": 1}, [merge_in_order(parts)], 7, 9, "lowrank spectrum", CODEC)
    (tmp_path / "checkpoint.json").write_text(json.dumps(old))
    with pytest.raises(LowrankError, match=r"is not the file its checkpoint\.json describes"):
        read_checkpoint(tmp_path, {"x": 1}, CODEC)
    # ... and a json written before that record existed: the npz says which sequences it holds
    old.pop("npz")
    (tmp_path / "checkpoint.json").write_text(json.dumps(old))
    found = read_checkpoint(tmp_path, {"x": 1}, CODEC)
    assert found is not None
    back, next_index = found
    assert next_index == 7 and len(back) == 1 and back[0].count == 5


# -- the launch environment ----------------------------------------------------------------


def test_launch_is_read_from_the_torch_distributed_variables():
    assert launch_from_env({}) is None
    launch = launch_from_env(ENV | {"RANK": "1", "LOCAL_RANK": "1"})
    assert launch is not None and (launch.rank, launch.world, launch.local_world) == (1, 2, 2)
    with pytest.raises(LowrankError, match="RANK set but not WORLD_SIZE, LOCAL_RANK"):
        launch_from_env({"RANK": "0"})
    with pytest.raises(LowrankError, match="does not fit"):
        launch_from_env(ENV | {"RANK": "2"})


def test_threads_backend_and_timeout_choices():
    assert cpu_threads(2, {"LOWRANK_NUM_THREADS": "3"}) == 3
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(2, {}) == max(1, cores // 2) and cpu_threads(10**6, {}) == 1
    with pytest.raises(LowrankError, match="LOWRANK_NUM_THREADS"):
        cpu_threads(1, {"LOWRANK_NUM_THREADS": "0"})
    assert choose_backend(None, cuda=False) == "gloo" and choose_backend(None, cuda=True) == "nccl"
    with pytest.raises(LowrankError, match=r"nccl.* needs CUDA"):
        choose_backend("nccl", cuda=False)
    assert collective_timeout({}) == 300 and collective_timeout({"LOWRANK_TIMEOUT": "7.5"}) == 7.5
    with pytest.raises(LowrankError, match="LOWRANK_TIMEOUT"):
        collective_timeout({"LOWRANK_TIMEOUT": "soon"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOWRANK_TIMEOUT", "inf"),
        ("LOWRANK_TIMEOUT", "nan"),
        ("LOWRANK_TIMEOUT", "1e20"),
        ("LOWRANK_TIMEOUT", "1e-9"),
        ("LOWRANK_NUM_THREADS", "99999999999999999999"),
        ("LOWRANK_NUM_THREADS", "-3"),
        ("LOWRANK_NUM_THREADS", "2.5"),
    ],
)
def test_environment_values_are_checked_like_options(name, value):
    """Issue 28, item 11: these were internal errors (timedelta overflow) or 20 lines of
    C++ frames (torch.set_num_threads) before."""
    read = collective_timeout if name == "LOWRANK_TIMEOUT" else lambda env: cpu_threads(1, env)
    with pytest.raises(LowrankError, match=rf"^{name}='{value}' must be a ") as info:
        read({name: value})
    assert "\n" not in str(info.value)
    assert collective_timeout({"LOWRANK_TIMEOUT": "604800"}) == 604800
    assert cpu_threads(1, {"LOWRANK_NUM_THREADS": "4096"}) == 4096


def test_a_rendezvous_that_cannot_be_reached_is_one_line(monkeypatch):
    """Issue 28, item 11: an unreachable MASTER_ADDR printed 14 c10d warnings and waited
    for the 300 s timeout."""
    import socket

    from lowrank.runs import distributed

    launch = launch_from_env(ENV | {"RANK": "1", "LOCAL_RANK": "1"})
    assert launch is not None
    with pytest.raises(LowrankError, match=r"^MASTER_PORT='99999' must be a port number"):
        distributed.check_rendezvous(launch, ENV | {"MASTER_PORT": "99999"})
    with pytest.raises(LowrankError, match=r"^MASTER_ADDR='no-such-host.invalid' does not"):
        distributed.check_rendezvous(launch, ENV | {"MASTER_ADDR": "no-such-host.invalid"})
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = str(probe.getsockname()[1])
    monkeypatch.setattr(distributed, "RENDEZVOUS_WAIT", 0.5)
    with pytest.raises(LowrankError, match=r"rank 1 cannot reach the rendezvous at 127.0.0.1"):
        distributed.check_rendezvous(launch, ENV | {"MASTER_PORT": closed})  # after 0.5 s
    rank0 = launch_from_env(ENV)
    assert rank0 is not None
    distributed.check_rendezvous(rank0, ENV | {"MASTER_PORT": closed})  # rank 0 serves it


def test_the_report_names_the_failed_rank_first():
    posts = {0: ("lost", "reset"), 1: ("failed", "RuntimeError: boom"), 2: ("interrupted", "")}
    assert explain(4, posts, set(), 300, "reset") == "rank 1 failed: RuntimeError: boom"
    assert explain(3, {0: ("lost", "x")}, {2}, 300, "x").startswith("rank 2 died without a word")
    silent = explain(3, {0: ("lost", "x")}, set(), 60, "x")
    assert silent.startswith("ranks 1, 2 stopped answering") and "60 s" in silent
    both = {0: ("interrupted", ""), 1: ("interrupted", "")}
    assert explain(2, both, set(), 300, "") == "interrupted"


def test_other_commands_refuse_several_ranks():
    check_command(["project"], ["spectrum"], {})  # one process: anything goes
    check_command(["spectrum", "--seq-len", "8"], ["spectrum"], ENV)
    with pytest.raises(LowrankError, match="lowrank project runs in one process"):
        check_command(["project", "--draws", "2"], ["spectrum"], ENV)


# -- bad input under a launch: one line, exit 2, nothing written -----------------------------


def _spectrum(model: Path, out: Path, *extra: str, **kw):
    args = ["spectrum", "--model", str(model), "--seq-len", str(SEQ_LEN)]
    args += ["--num-sequences", "7", "--batch-size", "1", "--out", str(out), *extra]
    return CliRunner().invoke(main, args, **kw)


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        (ENV, ("--shard", "1/2"), "--shard splits a run into separate jobs"),
        (ENV, ("--backend", "nccl", "--device", "cpu"), "--backend nccl needs CUDA"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, (), "launch with torchrun"),
        (ENV | {"LOWRANK_TIMEOUT": "-1"}, (), "LOWRANK_TIMEOUT"),
    ],
)
def test_bad_launches_are_one_line_and_exit_code_2(roberta_dir, tmp_path, env, extra, message):
    res = _spectrum(roberta_dir, tmp_path / "out", *extra, env=env)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out").exists()
    quiet = _spectrum(roberta_dir, tmp_path / "out", *extra, env=env | {"RANK": "1"})
    if "RANK" in env and "LOCAL_RANK" in env:  # rank 0 says it; rank 1 exits without a word
        assert quiet.exit_code == 2 and quiet.output == ""


def test_backend_without_a_launch_only_warns(roberta_dir, tmp_path):
    res = _spectrum(roberta_dir, tmp_path / "one", "--backend", "gloo")
    assert res.exit_code == 0, res.output
    assert "--backend gloo has no effect" in res.output
    meta = json.loads((tmp_path / "one" / "run.json").read_text())
    assert meta["world_size"] == 1 and [r["num_sequences"] for r in meta["ranks"]] == [7]


# -- real torchrun launches ----------------------------------------------------------------

FAULTY = """
import os, time
from lowrank.families.spectrum import pipeline
from lowrank.cli import main

real, calls = pipeline._spectra, [0]

def faulty(*args, **kwargs):
    calls[0] += 1
    fault = os.environ["FAULT"]
    if fault == "raise" and os.environ["RANK"] == "1" and calls[0] == 2:
        raise RuntimeError("injected failure")
    if fault == "slow":
        time.sleep(0.4)
    return real(*args, **kwargs)

pipeline._spectra = faulty
main(prog_name="lowrank")
"""


def _torchrun(model: Path, out: Path, *extra: str, script: Path | None = None, fault: str = ""):
    torchrun = Path(sys.executable).with_name("torchrun")
    entry = [str(script)] if script else ["-m", "lowrank"]
    args = ["spectrum", "--model", str(model), "--seq-len", str(SEQ_LEN), "--batch-size", "1"]
    args += ["--out", str(out), *extra]
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "LOWRANK_TIMEOUT": "120",
        "FAULT": fault,
    }
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", *entry, *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def _assert_same(a: Path, b: Path, tol: float = 1e-12) -> None:
    ra, rb = SpectrumResult.read(a), SpectrumResult.read(b)
    assert ra.stats.count == rb.stats.count
    for name in ("cumulative", "singular_values", "summaries"):
        ma, mb = getattr(ra.stats, name), getattr(rb.stats, name)
        assert np.abs(ma.mean - mb.mean).max() <= tol
        assert np.abs(ma.m2 - mb.m2).max() <= tol
    np.testing.assert_array_equal(ra.input_ids, rb.input_ids)


@pytest.fixture(scope="module")
def one_process(roberta_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alone") / "run"
    res = _spectrum(roberta_dir, out, "--num-sequences", "7")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def two_ranks(roberta_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ranks") / "run"
    code, output = _finish(_torchrun(roberta_dir, out, "--num-sequences", "7"))
    assert code == 0, output
    return out, output


@pytest.mark.slow
def test_two_ranks_equal_the_single_process_run(one_process, two_ranks):
    out, output = two_ranks
    _assert_same(one_process, out, tol=1e-12)
    meta = json.loads((out / "run.json").read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "gloo"
    # 7 sequences in batches of 1, dealt round-robin: rank 0 takes 0, 2, 4, 6
    assert [(r["rank"], r["num_sequences"]) for r in meta["ranks"]] == [(0, 4), (1, 3)]
    assert all(r["threads"] >= 1 and r["compute_seconds"] >= 0 for r in meta["ranks"])
    # only rank 0 talks: one model line, one summary
    assert output.count("3 layers x 4 heads") == 1 and output.count("run folder:") == 1


@pytest.mark.slow
def test_precision_stops_every_rank_together(roberta_dir, tmp_path):
    out = tmp_path / "precise"
    code, output = _finish(
        _torchrun(roberta_dir, out, "--num-sequences", "40", "--precision", "0.02")
    )
    assert code == 0, output
    meta = json.loads((out / "run.json").read_text())
    used = meta["num_sequences"]
    assert meta["precision"]["stopped_early"] and 10 <= used < 40 and used % 2 == 0
    assert meta["precision"]["achieved_half_width"] < 0.02
    assert sum(r["num_sequences"] for r in meta["ranks"]) == used
    ref = tmp_path / "ref"
    assert _spectrum(roberta_dir, ref, "--num-sequences", str(used)).exit_code == 0
    _assert_same(ref, out, tol=1e-12)  # the first `used` sequences, as one process sees them


@pytest.mark.slow
def test_a_rank_that_raises_stops_the_run_and_resume_continues_exactly(
    roberta_dir, two_ranks, tmp_path
):
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    out = tmp_path / "raised"
    every = ("--num-sequences", "7", "--checkpoint-every", "1")
    code, output = _finish(_torchrun(roberta_dir, out, *every, script=script, fault="raise"))
    assert code != 0
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: rank 1 failed: RuntimeError: injected failure")
    assert "first 2 sequences" in lines[0] and "--resume" in lines[0]
    assert not (out / "run.json").exists()
    info = json.loads((out / "checkpoint.json").read_text())
    assert (info["next_index"], info["world_size"]) == (2, 2)
    code, output = _finish(_torchrun(roberta_dir, out, *every, "--resume"))
    assert code == 0, output
    assert "resuming at sequence 3 of 7" in output
    _assert_same(two_ranks[0], out, tol=0.0)  # each rank went on with its own accumulators


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_and_leaves_the_good_run(roberta_dir, one_process, tmp_path):
    import psutil

    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    out = tmp_path / "good"
    shutil.copytree(one_process, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    every = ("--num-sequences", "7", "--checkpoint-every", "1")
    proc = _torchrun(roberta_dir, out, *every, script=script, fault="slow")
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if json.loads((out / "checkpoint.json").read_text())["next_index"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    [victim] = [w for w in workers if w.environ().get("RANK") == "1"]
    victim.kill()
    killed = time.time()
    code, output = _finish(proc)
    assert code != 0 and time.time() - killed < 60
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: rank 1 died without a word")
    assert {name: (out / name).read_bytes() for name in before} == before
    # the two-rank checkpoint continues in one process: re-dealt, exact to float64 rounding
    res = _spectrum(roberta_dir, out, *every, "--resume")
    assert res.exit_code == 0, res.output
    assert "this run has 1" in res.output
    _assert_same(one_process, out, tol=1e-12)
    assert json.loads((out / "run.json").read_text())["resumed_from"]["world_size"] == 2


@pytest.mark.slow
def test_a_refusal_under_torchrun_is_lowranks_line_first(roberta_dir, tmp_path):
    """What docs/long-runs.md says a refusal looks like: lowrank's one line first, then
    torchrun's own report (which lowrank cannot shorten), exit code 1 (issue 28, item 10).
    A folder another process writes is refused on rank 0, naming it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from lowrank.runs import locks\nlocks.acquire(Path(sys.argv[1]))\n"
         "print('held', flush=True)\ntime.sleep(300)", str(tmp_path / "race")],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, output = _finish(_torchrun(roberta_dir, tmp_path / "race", "--num-sequences", "2"))
    finally:
        holder.kill()
        holder.wait()
    assert code == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [
        f"error: --out '{tmp_path / 'race'}' is being written by another lowrank run (pid "
        f"{holder.pid}): wait until it ends, or choose another --out"
    ], output
    assert "ChildFailedError" in output and "exitcode  : 2" in output  # torchrun's report
    assert lines.index(errors[0]) < next(i for i, ln in enumerate(lines) if "Traceback" in ln)
