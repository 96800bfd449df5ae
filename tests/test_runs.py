"""Run folders: round trip, validation of damaged files, output-folder safety."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowrank.errors import LowrankError
from lowrank.runs.folders import FORMAT, check_out_dir, read_run, stats_arrays, write_run
from lowrank.runs.stats import SpectrumStats


def _run(tmp_path, name="run"):
    rng = np.random.default_rng(0)
    s = -np.sort(-rng.random(size=(5, 2, 3, 8)), axis=-1)
    stats = SpectrumStats.empty(2, 3, 8, 2).add(s)
    meta = {
        "format": FORMAT,
        "identity": {"a": 1},
        "num_layers": 2,
        "num_heads": 3,
        "seq_len": 8,
        "model": {"name": "m"},
        "corpus": {"dataset": "d"},
    }
    arrays = stats_arrays(stats) | {"input_ids": np.zeros((5, 8), dtype=np.int64)}
    out = tmp_path / name
    write_run(out, meta, arrays)
    return out, stats


def test_round_trip_keeps_every_number(tmp_path):
    out, stats = _run(tmp_path)
    run = read_run(out)
    assert run.stats.count == 5 and run.stats.index == 2
    np.testing.assert_array_equal(run.stats.cumulative.mean, stats.cumulative.mean)
    np.testing.assert_array_equal(run.stats.cumulative.m2, stats.cumulative.m2)
    np.testing.assert_array_equal(run.stats.summaries.mean, stats.summaries.mean)
    with np.load(out / "spectrum.npz") as npz:
        np.testing.assert_allclose(npz["cumulative_std"], stats.cumulative.std())
        np.testing.assert_allclose(npz["c_at_index_mean"], stats.cumulative.mean[..., 1])
    assert not list(out.glob(".*tmp"))


def test_damaged_run_folders_are_named_in_one_line(tmp_path):
    out, _ = _run(tmp_path)
    data = (out / "spectrum.npz").read_bytes()
    (out / "spectrum.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LowrankError, match="corrupted or truncated"):
        read_run(out)
    out2, _ = _run(tmp_path, "run2")
    text = (out2 / "run.json").read_text()
    (out2 / "run.json").write_text(text[:20])
    with pytest.raises(LowrankError, match="not valid JSON"):
        read_run(out2)
    with pytest.raises(LowrankError, match="does not exist"):
        read_run(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LowrankError, match=r"no run\.json"):
        read_run(tmp_path / "plain")
    out3, _ = _run(tmp_path, "run3")
    meta = json.loads((out3 / "run.json").read_text())
    meta["seq_len"] = 9
    (out3 / "run.json").write_text(json.dumps(meta))
    with pytest.raises(LowrankError, match="shape"):
        read_run(out3)


def test_check_out_dir_protects_other_runs_and_foreign_files(tmp_path):
    out, _ = _run(tmp_path)
    check_out_dir(out, {"a": 1}, overwrite=False)  # same identity: fine
    with pytest.raises(LowrankError, match="holds another run"):
        check_out_dir(out, {"a": 2}, overwrite=False)
    check_out_dir(out, {"a": 2}, overwrite=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(LowrankError, match="not a lowrank run"):
            check_out_dir(foreign, {"a": 1}, overwrite=overwrite)
    check_out_dir(tmp_path / "new", {"a": 1}, overwrite=False)
