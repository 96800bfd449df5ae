"""The Python API of the spectrum family: parity with the CLI, in-memory inputs, results.

The CLI is the reference: the API on the same sequences must give the very same arrays
(the CLI is a thin layer over it), and arrays from texts or token ids must equal the trusted
``output_attentions=True`` + numpy path of tests/helpers.py.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.spectrum import pipeline
from lowrank.families.spectrum.api import merge, spectrum
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.registry import load
from tests.helpers import SEQ_LEN, as_keywords, reference_cumulative

FLOATS = (
    "cumulative_mean",
    "cumulative_std",
    "cumulative_m2",
    "singular_values_mean",
    "singular_values_std",
    "singular_values_m2",
    "c_at_index_mean",
    "rank90_mean",
    "effective_rank_mean",
    "stable_rank_mean",
    "summaries_m2",
)
REPO = Path(__file__).resolve().parents[1]


def _bert(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _max_diff(a: SpectrumResult, b: SpectrumResult) -> float:
    return max(float(np.abs(a.arrays[k] - b.arrays[k]).max()) for k in FLOATS)


@pytest.fixture(scope="module")
def cli_run(bert_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["spectrum", "--model", str(bert_dir), "--seq-len", str(SEQ_LEN)]
    args += ["--num-sequences", "5", "--batch-size", "2", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out


def test_api_equals_cli_from_the_folder_and_in_memory(cli_run, bert_dir):
    cli = load(cli_run)
    assert isinstance(cli, SpectrumResult)
    opts = {"seq_len": SEQ_LEN, "num_sequences": 5, "batch_size": 2, "progress": False}
    from_folder = spectrum(str(bert_dir), **opts)
    model, tokenizer = _bert(bert_dir)
    in_memory = spectrum(model, tokenizer, **opts)  # data None: the embedded sample, as the CLI
    for res in (from_folder, in_memory):
        np.testing.assert_array_equal(res.input_ids, cli.input_ids)
        assert _max_diff(res, cli) <= 1e-12
        assert res.path is None  # out=None writes nothing
    assert in_memory.config["model"]["kind"] == "memory"
    assert in_memory.config["model"]["model_type"] == "bert"
    assert from_folder.config["model"]["kind"] == "local"


def test_report_is_what_the_cli_printed(bert_dir, tmp_path):
    out = tmp_path / "run"
    args = ["spectrum", "--model", str(bert_dir), "--seq-len", str(SEQ_LEN)]
    res = CliRunner().invoke(main, [*args, "--num-sequences", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = load(out).report()
    # the throughput line reads the rounded analysis_seconds of run.json; the rest is exact
    printed = [ln for ln in res.stdout.splitlines() if " seq/s)" not in ln]
    assert printed == [ln for ln in report.splitlines() if " seq/s)" not in ln]
    assert "mean normalized cumulative singular value at index 12" in report
    assert f"run folder: {out}" in report
    assert res.stderr.count("warning: n = 48 < 512") == 1  # log records reach stderr


def test_texts_in_memory_match_the_reference(bert_dir):
    model, tokenizer = _bert(bert_dir)
    sentence = "the tidal mill turns when the sea falls and the miller opens the gate"
    words = sentence.split(" ")
    texts = [" ".join(words[i:] + words[:i]) * 3 for i in range(len(words))]
    res = spectrum(model, tokenizer, texts, seq_len=32, num_sequences=4, progress=False)
    assert res.config["corpus"]["kind"] == "memory"
    assert res.input_ids.shape == (4, 32) and res.count == 4
    ref = reference_cumulative(model, res.input_ids, np.full(4, 32))
    assert np.abs(res.cumulative_mean - ref.mean(0)).max() <= 1e-6
    # an endless iterable is read only as far as the sequences need
    endless = itertools.cycle(texts)
    again = spectrum(model, tokenizer, endless, seq_len=32, num_sequences=4, progress=False)
    np.testing.assert_array_equal(again.input_ids, res.input_ids)


def test_token_ids_with_a_padding_mask_match_each_sequence_alone(bert_dir):
    model, _ = _bert(bert_dir)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 20), generator=gen)
    lengths = torch.tensor([20, 14, 20, 9])
    mask = (torch.arange(20)[None, :] < lengths[:, None]).long()
    res = spectrum(model, None, {"input_ids": ids, "attention_mask": mask}, progress=False)
    assert res.config["seq_len"] == 20 and res.count == 4  # n from the tensor's width
    ref = reference_cumulative(model, ids.numpy(), lengths.numpy())
    assert np.abs(res.cumulative_mean - ref.mean(0)).max() <= 1e-6
    np.testing.assert_array_equal(res.attention_mask, mask.numpy())
    with pytest.raises(LowrankError, match=r"^seq_len=16, but the input ids have n = 20"):
        spectrum(model, None, ids, seq_len=16, progress=False)
    with pytest.raises(LowrankError, match="outside the model's embedding table"):
        spectrum(model, None, ids + 10**6, progress=False)


def _state(model: torch.nn.Module) -> dict[str, object]:
    return {
        "attn": model.config._attn_implementation,
        "modes": [m.training for m in model.modules()],
        "hooks": [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in model.modules()],
        "grads": [p.requires_grad for p in model.parameters()],
        "devices": {str(p.device) for p in model.parameters()},
    }


@pytest.mark.parametrize("fail", [False, True])
def test_the_model_object_is_left_as_found(bert_dir, monkeypatch, fail):
    model, tokenizer = _bert(bert_dir)
    model.train()  # a state lowrank must change (the capture needs eval) and restore
    model.set_attn_implementation("sdpa")
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    calls: list[int] = []
    model.encoder.layer[0].register_forward_hook(lambda *a: calls.append(1))
    before = _state(model)
    if fail:

        def failing_sink(self, call):  # type: ignore[no-untyped-def]
            raise RuntimeError("sink failed")

        monkeypatch.setattr(pipeline.SpectrumCollector, "__call__", failing_sink)
        with pytest.raises(RuntimeError, match="sink failed"):
            spectrum(model, tokenizer, seq_len=SEQ_LEN, num_sequences=2, progress=False)
    else:
        spectrum(model, tokenizer, seq_len=SEQ_LEN, num_sequences=2, progress=False)
        assert calls  # the user's hook ran during the analysis
    assert _state(model) == before
    assert model.training and model.config._attn_implementation == "sdpa"


def test_summary_and_curves_are_the_arrays(cli_run):
    res = load(cli_run)
    assert isinstance(res, SpectrumResult)
    layers, heads, n = res.cumulative_mean.shape
    table = res.summary()
    assert len(table) == layers * heads and (table["index"] == 12).all()
    rows = table.set_index(["layer", "head"])
    for layer, head in [(1, 1), (layers, heads), (2, 2)]:
        row = rows.loc[(layer, head)]
        assert row["c"] == res.cumulative_mean[layer - 1, head - 1, 11]
        assert row["c"] == res.c_at_index_mean[layer - 1, head - 1]
        assert row["c_std"] == res.cumulative_std[layer - 1, head - 1, 11]
        assert row["rank90"] == res.rank90_mean[layer - 1, head - 1]
        assert row["stable_rank"] == res.stable_rank_mean[layer - 1, head - 1]
    assert (table["num_sequences"] == 5).all()
    at = res.summary(at=40)
    np.testing.assert_array_equal(at["c"], res.cumulative_mean[..., 39].ravel())
    with pytest.raises(LowrankError, match="at=49 must be at most 48"):
        res.summary(at=49)
    curves = res.curves()
    assert len(curves) == layers * heads * n
    back = curves.sort_values(["layer", "head", "index"])["c"].to_numpy()
    np.testing.assert_array_equal(back.reshape(layers, heads, n), res.cumulative_mean)
    # c is non-decreasing along the index and ends at 1
    assert (np.diff(res.cumulative_mean, axis=-1) >= -1e-12).all()
    assert np.allclose(res.cumulative_mean[..., -1], 1.0)


def test_save_and_load_round_trip(cli_run, tmp_path):
    res = load(cli_run)
    copy = res.save(tmp_path / "copy")
    back = load(copy)
    assert type(back) is SpectrumResult and back.path == copy
    assert set(back.arrays) == set(res.arrays)
    for name in res.arrays:
        np.testing.assert_array_equal(back.arrays[name], res.arrays[name])
    assert back.config == res.config
    assert SpectrumResult.read(copy).stats.count == 5  # the CLI's reader takes it too
    with pytest.raises(LowrankError, match="holds another run"):
        SpectrumResult(res.config | {"identity": {"other": 1}}, res.arrays).save(copy)


def test_merged_shards_equal_the_whole_run(bert_dir, tmp_path):
    opts = {"seq_len": SEQ_LEN, "num_sequences": 5, "batch_size": 2, "progress": False}
    whole = spectrum(str(bert_dir), **opts)
    parts = [
        spectrum(str(bert_dir), shard=(i, 2), out=tmp_path / f"p{i}", **opts).path for i in (1, 2)
    ]
    merged = merge(parts, out=tmp_path / "merged")
    assert merged.count == 5 and merged.path == tmp_path / "merged"
    assert _max_diff(merged, whole) <= 1e-12
    meta = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert meta["complete"]
    # the merged run's own fingerprint (all 5 sequences), not the first part's
    first = json.loads((parts[0] / "run.json").read_text())["fingerprint"]
    assert meta["fingerprint"]["num_sequences"] == 5 != first["num_sequences"]
    assert meta["fingerprint"]["sequences"] != first["sequences"]
    with pytest.raises(LowrankError, match="given twice"):
        merge([parts[0], parts[0]])


@pytest.mark.parametrize(
    ("options", "cli", "message"),
    [
        ({"seed": -1}, ["--seed", "-1"], "--seed -1 must be at least 0"),
        ({"seed": 2**32}, ["--seed", str(2**32)], "must be at most 4294967295"),
        ({"seq_len": 1}, ["--seq-len", "1"], "--seq-len 1 is too short"),
        ({"precision": float("nan")}, ["--precision", "nan"], "must be a finite number > 0"),
        ({"shard": "0/3"}, ["--shard", "0/3"], "need 1 <= i <= N"),
    ],
)
def test_the_api_and_the_cli_refuse_alike(bert_dir, tmp_path, options, cli, message):
    res = CliRunner().invoke(
        main, ["spectrum", "--model", str(bert_dir), *cli, "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and message in res.stderr
    line = res.stderr.strip().removeprefix("error: ")
    with pytest.raises(LowrankError) as info:
        spectrum(str(bert_dir), progress=False, **options)
    # the same mistake, named as the caller wrote it: flags there, keywords here
    assert str(info.value).replace("'", "") == as_keywords(line)
    assert "--" not in str(info.value)


def test_resume_and_plot_need_a_folder(bert_dir):
    for flag in ("resume", "plot"):
        with pytest.raises(LowrankError, match=f"^{flag} needs a run folder"):
            spectrum(str(bert_dir), progress=False, **{flag: True})


def test_import_lowrank_loads_no_torch():
    code = (
        "import sys, lowrank\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(lowrank.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_every_public_name_resolves():
    import lowrank

    for name in lowrank.__all__:
        assert getattr(lowrank, name) is not None, name
    assert lowrank.spectrum is spectrum and lowrank.merge is merge
    assert lowrank.SpectrumResult is SpectrumResult and lowrank.load is load


def test_plot_and_heatmap_draw_on_the_given_axes(cli_run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = load(cli_run)
    assert isinstance(res, SpectrumResult)
    fig, (left, right) = plt.subplots(1, 2)
    try:
        assert res.plot(ax=left) is left
        line = left.get_lines()[0]  # the mean over layers x heads of the mean curves
        np.testing.assert_allclose(line.get_ydata(), res.cumulative_mean.mean(axis=(0, 1)))
        assert res.heatmap(ax=right, title=False) is right
        cells = right.collections[0].get_array()  # layer 1 is the bottom row
        np.testing.assert_allclose(
            np.asarray(cells).reshape(res.c_at_index_mean.shape), res.c_at_index_mean[::-1]
        )
    finally:
        plt.close(fig)


def test_a_text_where_a_path_is_expected_is_one_line(bert_dir):
    with pytest.raises(LowrankError, match=r"is not a usable path .*pass texts as a list") as info:
        spectrum(str(bert_dir), None, "many words " * 200, seq_len=16, progress=False)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_texts_in_the_tokenizer_slot_are_named(bert_dir):
    with pytest.raises(LowrankError, match=r"tokenizer= got a list, .*go in data="):
        spectrum(str(bert_dir), ["a text"] * 3, seq_len=16, progress=False)  # type: ignore[arg-type]


def test_the_library_logs_and_never_prints(bert_dir, capfd, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lowrank"):
        spectrum(str(bert_dir), seq_len=16, num_sequences=2, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing on the terminal
    assert any("n = 16 < 512" in r.getMessage() for r in caplog.records)  # but logged


@pytest.mark.parametrize("path", [42, None, 3.5])
def test_load_of_something_that_is_no_path_is_one_line(path):
    with pytest.raises(LowrankError, match="give the run folder as a path"):
        load(path)  # type: ignore[arg-type]


def test_a_precision_that_is_no_number_is_one_line(bert_dir):
    with pytest.raises(LowrankError, match=r"^precision='0.1' must be a number"):
        spectrum(str(bert_dir), seq_len=16, precision="0.1", progress=False)  # type: ignore[arg-type]


def test_per_sequence_spectra_are_kept_on_request_and_merge_in_order(bert_dir, tmp_path):
    """keep_per_sequence: every sequence's singular values, whose own c curves average to
    the run's cumulative_mean; saved, read back, and concatenated in shard order by merge."""
    opts = {"seq_len": SEQ_LEN, "num_sequences": 4, "batch_size": 3, "progress": False}
    res = spectrum(str(bert_dir), keep_per_sequence=True, out=tmp_path / "whole", **opts)
    s = res.arrays["singular_values_per_sequence"]
    assert s.shape == (4, *res.cumulative_mean.shape) and s.dtype == np.float32
    c = np.cumsum(s.astype(np.float64), axis=-1)
    c /= c[..., -1:]
    assert np.abs(c.mean(axis=0) - res.cumulative_mean).max() <= 1e-6
    again = load(tmp_path / "whole")
    np.testing.assert_array_equal(again.arrays["singular_values_per_sequence"], s)
    parts = [
        spectrum(str(bert_dir), keep_per_sequence=True, shard=(i, 2), out=tmp_path / f"p{i}",
                 **opts).path
        for i in (1, 2)
    ]  # fmt: skip
    merged = merge(parts[::-1])
    np.testing.assert_array_equal(merged.arrays["singular_values_per_sequence"], s)
    plain = spectrum(str(bert_dir), shard=(1, 2), out=tmp_path / "plain", **opts).path
    with pytest.raises(LowrankError, match="kept no per-sequence spectra"):
        merge([plain, parts[1]])


def test_per_sequence_spectra_are_not_kept_across_a_resume(bert_dir, tmp_path):
    from lowrank.families.spectrum import pipeline
    from lowrank.inputs.corpora import Sequences
    from lowrank.inputs.models import load_model

    loaded = load_model(str(bert_dir))
    seqs = Sequences(np.ones((2, 16), dtype=np.int64) * 5, np.full(2, 16))
    start = (pipeline.SpectrumStats.empty(loaded.num_layers, loaded.num_heads, 16, 4), 1)
    with pytest.raises(LowrankError, match="without resuming"):
        pipeline.analyse(loaded, seqs, 4, start=start, keep_per_sequence=True)


def test_fewer_sequences_than_asked_is_a_warning_a_notebook_shows(bert_dir, monkeypatch, tmp_path):
    """A notebook configures no logging: the shortfall must surface as a LowrankWarning at
    the user's line (texts in memory included), and the CLI must say it once, as a line."""
    import logging
    import warnings

    from lowrank import LowrankWarning

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh notebook
    texts = ["a few words about cats and dogs. " * 4] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = spectrum(str(bert_dir), data=texts, seq_len=16, num_sequences=50, progress=False)
    shortfall = [w for w in caught if "fewer than num_sequences=50" in str(w.message)]
    assert len(shortfall) == 1 and shortfall[0].category is LowrankWarning
    assert shortfall[0].filename == __file__  # points at the caller, not at lowrank
    assert f"analysing {res.config['num_sequences']}" in str(shortfall[0].message)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = CliRunner().invoke(
            main, ["spectrum", "--model", str(bert_dir), "--seq-len", "16",
                   "--num-sequences", "100000", "--out", str(tmp_path / "cli")],
        )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert cli.output.count("warning: corpus 'sample-wiki' yields") == 1
    assert "fewer than --num-sequences 100000: analysing" in cli.output
    assert not [w for w in caught if w.category is LowrankWarning]  # said once, as a line

    # the default was not asked for by the user: the line says whose number it is
    cli = CliRunner().invoke(
        main,
        ["spectrum", "--model", str(bert_dir), "--seq-len", "16", "--out", str(tmp_path / "d")],
    )
    assert cli.exit_code == 0, cli.output
    assert "fewer than the paper's 10000 (--num-sequences's default): analysing" in cli.output


def test_a_result_shows_as_one_short_line_in_a_notebook(cli_run):
    res = load(cli_run)
    shown = repr(res)
    assert shown.startswith("SpectrumResult('") and "\n" not in shown and len(shown) < 200
    assert f"n={res.config['seq_len']}, N={res.config['num_sequences']}" in shown
    assert shown.endswith(f"path={str(res.path)!r})")
