"""The CLI end to end through click's CliRunner, on tiny models; every bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.inputs.models import load_model
from lowrank.runs.folders import read_run
from tests.helpers import SEQ_LEN, reference_cumulative


def _spectrum(args, **kw):
    return CliRunner().invoke(main, ["spectrum", *args], **kw)


@pytest.fixture(scope="module")
def tiny_run(roberta_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = _spectrum(
        [
            "--model",
            str(roberta_dir),
            "--seq-len",
            str(SEQ_LEN),
            "--num-sequences",
            "5",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    return out, res


def test_spectrum_writes_a_documented_run_folder(tiny_run, roberta_dir):
    out, res = tiny_run
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "lowrank-spectrum"
    assert meta["model"]["kind"] == "local" and meta["model"]["model_type"] == "roberta"
    assert meta["corpus"]["dataset"] == "sample-wiki" and meta["corpus"]["kind"] == "articles"
    assert (meta["num_layers"], meta["num_heads"], meta["seq_len"]) == (3, 4, SEQ_LEN)
    assert meta["num_sequences"] == 5 and meta["heatmap_index"] == SEQ_LEN // 4
    assert meta["sequence_policy"]["policy"] == "pack"
    assert set(meta["versions"]) >= {"lowrank", "torch", "transformers"}
    assert meta["command"].startswith("lowrank spectrum --model")
    run = read_run(out)
    ref = reference_cumulative(
        load_model(str(roberta_dir)).model, run.input_ids, np.full(5, SEQ_LEN)
    )
    assert np.abs(run.stats.cumulative.mean - ref.mean(0)).max() <= 1e-6
    assert run.attention_mask is None
    assert "mean normalized cumulative singular value at index 12" in res.output
    assert "run folder:" in res.output


def test_rerun_with_another_configuration_is_refused_and_nothing_changes(tiny_run, roberta_dir):
    out, _ = tiny_run
    before = (out / "spectrum.npz").read_bytes(), (out / "run.json").read_bytes()
    res = _spectrum(["--model", str(roberta_dir), "--seq-len", "32", "--out", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "holds another run" in res.output
    assert ((out / "spectrum.npz").read_bytes(), (out / "run.json").read_bytes()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "./no/such/model"], "does not exist"),
        (["--model", "{tmp}"], "not a model directory"),
        (["--model", "{roberta}", "--seq-len", "49"], "exceeds the 48 positions"),
        (["--model", "{roberta}", "--seq-len", "1"], "too short"),
        (["--model", "{roberta}", "--data", "{tmp}/latin.txt"], "not UTF-8"),
        (["--model", "{roberta}", "--data", "{tmp}/missing.txt"], "does not exist"),
        (["--model", "{roberta}", "--device", "cuda"], "CUDA"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, roberta_dir, tmp_path):
    (tmp_path / "latin.txt").write_bytes("na\xefve".encode("latin-1"))
    args = [a.format(tmp=tmp_path, roberta=roberta_dir) for a in args]
    res = _spectrum([*args, "--out", str(tmp_path / "out")])
    if "CUDA" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_unknown_dataset_is_a_usage_error():
    res = _spectrum(["--dataset", "wikipedia"])
    assert res.exit_code == 2 and "wikipedia" in res.output


def test_help_explains_the_command():
    res = CliRunner().invoke(main, ["spectrum", "--help"])
    assert res.exit_code == 0
    for word in ("--model", "--dataset", "--seq-len", "--num-sequences", "minilm", "Figure 1"):
        assert word in res.output
