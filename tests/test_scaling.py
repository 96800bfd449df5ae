"""``lowrank scaling``: windows, rank measures, the format-1 fits, and the command on a tiny
BERT (each n a normal spectrum run, parity with the spectrum pipeline). The format-2 verdicts,
the position control and the figures: ``tests/test_scaling_verdicts.py``,
``tests/test_scaling_control.py``, ``tests/test_scaling_figures.py``."""

from __future__ import annotations

import gc
import json
import math
import weakref

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.scaling.collect import ScalingCollector, choose_batch, estimate_bytes
from lowrank.families.scaling.fits import aic, bootstrap_indices, fit, plus_minus, verdict
from lowrank.families.scaling.measures import (
    ALL_MEASURES,
    MEASURES,
    document_windows,
    output_rank,
    rank_measures,
)
from lowrank.families.scaling.result import ScalingResult
from lowrank.families.spectrum.pipeline import analyse
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.hooks.attention import AttentionCall, capture
from lowrank.inputs.models import load_model
from tests.helpers import reference_cumulative

NS = (8, 16, 24, 32, 64)  # five lengths: a verdict (n = 8 leaves 6 tokens of text)
DOCS = 4

# --- windows -----------------------------------------------------------------------------------


def test_windows_at_the_openings_cut_the_same_documents_to_every_n():
    """``openings`` is format 1's policy: each document's first n tokens."""
    docs = [list(range(100, 110)), [7, 8], list(range(200, 208)), list(range(300, 312))]
    w = document_windows(docs, (6, 4, 10), prefix=[1], suffix=[2], wanted=5, policy="openings")
    assert w.ns == (4, 6, 10)
    assert w.qualified == 3 and w.longest == 12  # documents of >= 8 tokens qualify
    assert w.documents.tolist() == [0, 2, 3] and w.starts.tolist() == [0, 0, 0]
    assert w.windows[4].tolist() == [[1, 100, 101, 2], [1, 200, 201, 2], [1, 300, 301, 2]]
    assert w.windows[10][0].tolist() == [1, *range(100, 108), 2]
    for n in w.ns:  # every n holds a prefix of the same text
        assert (w.windows[n][:, 1 : n - 1] == w.windows[10][:, 1 : n - 1]).all()
    assert w.policy["policy"] == "openings" and "first token" in w.policy["uncertainty"]


def test_matched_windows_start_at_drawn_offsets_the_same_for_every_n():
    """``matched``: one drawn start per window, shared by every n, inside the document."""
    docs = [list(range(1000 * k, 1000 * k + 40 + 10 * k)) for k in range(6)]
    w = document_windows(docs, (4, 8, 16), [1], [2], wanted=6, window_seed=3)
    again = document_windows(docs, (4, 8, 16), [1], [2], wanted=6, window_seed=3)
    other = document_windows(docs, (4, 8, 16), [1], [2], wanted=6, window_seed=4)
    assert (w.starts == again.starts).all() and not (w.starts == other.starts).all()
    assert (w.starts > 0).any()  # not all at the openings
    for row, (d, start) in enumerate(zip(w.documents, w.starts, strict=True)):
        assert 0 <= start <= len(docs[d]) - 14  # the largest window fits
        for n in w.ns:  # the same start for every n: a prefix of the same tokens
            assert w.windows[n][row].tolist() == [1, *docs[d][start : start + n - 2], 2]
    assert w.policy["starts"] == w.starts.tolist()
    assert w.policy["documents"] == w.documents.tolist()
    assert "random effect" in w.policy["uncertainty"]


def test_several_windows_per_document_are_one_cluster():
    docs = [list(range(1000 * k, 1000 * k + 200)) for k in range(3)]
    w = document_windows(docs, (8, 16), [], [], wanted=3, per_document=2)
    assert w.documents.tolist() == [0, 0, 1, 1, 2, 2]
    assert w.clusters.tolist() == [0, 0, 1, 1, 2, 2]
    first, second = w.starts[::2], w.starts[1::2]
    assert (first < 92).all() and (second >= 92).all()  # one per half of the offsets


def test_windows_sample_documents_with_a_seed_and_refuse_naming_the_longest():
    docs = [[5] * k for k in (30, 40, 50, 60, 9)]
    a = document_windows(docs, (8, 16, 32), [], [], wanted=2, seed=3)
    b = document_windows(docs, (8, 16, 32), [], [], wanted=2, seed=3)
    assert a.documents.tolist() == b.documents.tolist() and len(a.documents) == 2
    assert set(a.documents.tolist()) <= {1, 2, 3}
    with pytest.raises(LowrankError, match="the longest has 60") as info:
        document_windows(docs, (8, 64), [1], [2], wanted=2)
    assert "\n" not in str(info.value)


# --- rank measures ------------------------------------------------------------------------------


def test_output_rank_by_hand():
    s = torch.tensor([2.0, 1.0, 0.0])  # ||X||_F = sqrt(5); error after k = 1 is 1 / sqrt(5)
    assert output_rank(s, 0.5).item() == 1  # 0.447 <= 0.5
    assert output_rank(s, 0.4).item() == 2
    assert output_rank(s, 0.999).item() == 1  # k = 0 leaves the whole norm
    assert output_rank(torch.zeros(3), 0.1).item() == 0


def test_output_rank_is_the_eckart_young_rank_of_pv():
    """The smallest k whose truncated SVD of X = PV has relative error <= tau."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 12, 5)) * np.geomspace(1, 0.05, 5)  # decaying columns
    s = torch.from_numpy(np.linalg.svd(x, compute_uv=False))
    for tau in (0.05, 0.1, 0.3):
        got = output_rank(s, tau).numpy()
        for i in range(len(x)):
            u, sv, vt = np.linalg.svd(x[i], full_matrices=False)
            errors = [
                np.linalg.norm(x[i] - (u[:, :k] * sv[:k]) @ vt[:k]) / np.linalg.norm(x[i])
                for k in range(6)
            ]
            assert got[i] == next(k for k, e in enumerate(errors) if e <= tau)


def test_rank_measures_are_ordered_and_bounded():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(3, 2, 16, 16) * 3, dim=-1)
    v = torch.randn(3, 2, 16, 4, dtype=torch.float64)
    s_p = torch.linalg.svdvals(p.double())
    s_pv = torch.linalg.svdvals(p.double() @ v)
    m = rank_measures(s_p, s_pv, 16, 16, 0.1)
    assert m.shape == (3, 2, len(ALL_MEASURES))
    r90, r99, eff, stable, out, c_quarter, c_fixed = m.unbind(-1)
    assert (r90 <= r99).all() and (r99 <= 16).all() and (r90 >= 1).all()
    assert ((eff >= 1) & (eff <= 16)).all() and ((stable >= 1) & (stable <= 16)).all()
    assert ((out >= 1) & (out <= 4)).all()  # PV is 16 x 4: rank at most d = 4
    assert torch.allclose(c_fixed, torch.ones_like(c_fixed))  # c at index n is 1
    assert ((c_quarter > 0) & (c_quarter < 1)).all()
    with pytest.raises(LowrankError, match="fixed index"):
        rank_measures(s_p, s_pv, 16, 17, 0.1)


# --- fits, AIC, bootstrap, verdicts ---------------------------------------------------------


def test_aic_of_least_squares():
    assert aic(2.0, 4) == pytest.approx(4 * math.log(0.5) + 6)


def test_fits_recover_exact_models():
    n = np.array([32, 64, 128, 256, 512.0])
    log = fit("log", n, 2 + 3 * np.log(n))
    assert log.params == pytest.approx((2, 3)) and log.rss < 1e-12
    power = fit("power", n, 1.5 * n**0.4)
    assert power.params == pytest.approx((1.5, 0.4), rel=1e-6)
    assert power.predict(1024) == pytest.approx(1.5 * 1024**0.4, rel=1e-6)


def _documents(model, ns, docs=16, noise=0.05, seed=0):
    """(S, D) values: the model at every n, a level per document (the cluster), and noise."""
    rng = np.random.default_rng(seed)
    n = np.asarray(ns, dtype=float)
    level = 1 + 0.1 * rng.standard_normal(docs)  # documents differ by a factor
    return model(n)[:, None] * level[None, :] + noise * rng.standard_normal((len(n), docs))


NS5 = (32, 64, 128, 256, 512)


def test_verdict_names_a_logarithm():
    values = _documents(lambda n: 1 + 2 * np.log(n), NS5)
    v = verdict("rank90", "model", NS5, values, bootstrap_indices(16, 300, 0))
    assert v.label == "logarithmic" and v.text() == "logarithmic"
    assert v.delta_aic >= 2 and v.aic_support >= 0.95 and v.heldout_log < v.heldout_power
    assert "AIC favours a + b ln n by" in v.evidence()


def test_verdict_names_a_power_law_with_a_bootstrap_interval():
    values = _documents(lambda n: 0.5 * n**0.6, NS5)
    v = verdict("rank90", "layer 1", NS5, values, bootstrap_indices(16, 300, 1))
    assert v.label == "power law"
    lo, hi = v.beta_interval
    assert lo <= 0.6 <= hi and hi - lo < 0.1
    assert v.text() == f"power law, beta = {plus_minus(v.beta, (hi - lo) / 2)}"
    assert v.heldout_relative <= 0.1


def test_plus_minus_shows_the_digits_the_interval_needs():
    assert plus_minus(0.4123, 0.05) == "0.41 ± 0.05"
    assert plus_minus(1.0204, 0.0041) == "1.020 ± 0.004"


def test_verdict_cannot_tell_a_saturating_curve():
    """Preferred over a power law, but a curve that levels off toward a cap is no logarithm:
    the log fit to the smaller n misses the largest by more than 10%."""
    ns = (32, 64, 128, 256, 512, 1024)
    values = _documents(lambda n: 30 * (1 - np.exp(-n / 100)), ns, noise=0.1)
    v = verdict("output_rank", "model", ns, values, bootstrap_indices(16, 200, 3))
    assert v.heldout_relative > 0.1 and v.label == "cannot tell"


def test_verdict_cannot_tell_when_the_data_do_not_separate_the_models():
    # a small exponent over a short range: n^0.05 and 1 + 0.05 ln n are nearly the same curve
    values = _documents(lambda n: 5 * n**0.05, (64, 128, 256), noise=0.5)
    v = verdict("rank90", "model", (64, 128, 256), values, bootstrap_indices(16, 300, 2))
    assert v.label == "cannot tell" and v.text() == "cannot tell with these n"


def test_bootstrap_resamples_whole_documents():
    idx = bootstrap_indices(5, 200, 7)
    assert idx.shape == (200, 5) and idx.min() >= 0 and idx.max() < 5
    assert (idx == bootstrap_indices(5, 200, 7)).all()
    with pytest.raises(LowrankError, match="three lengths"):
        verdict("rank90", "model", (8, 16), np.ones((2, 5)), idx)


# --- the sink, memory ----------------------------------------------------------------------------


def test_sink_keeps_float64_singular_values_of_pv():
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(2, 3, 10, 10), dim=-1)
    value = torch.randn(2, 3, 10, 4)
    sink = ScalingCollector(2, 1, 3, 10)
    sink(AttentionCall(0, probs, value, value, value, None, torch.nn.Identity()))
    want = np.linalg.svd(probs.double().numpy() @ value.double().numpy(), compute_uv=False)
    assert sink.outputs is not None and sink.outputs.dtype == torch.float64
    assert np.abs(sink.outputs[:, 0].numpy() - want).max() <= 1e-12
    spectra = np.linalg.svd(probs.double().numpy(), compute_uv=False)
    assert np.abs(sink.spectra[:, 0].numpy() - spectra).max() <= 1e-9


def test_no_layer_keeps_its_p_after_its_call(bert_dir):
    """Memory stays flat in depth: each layer's P is gone before the next layer runs."""
    loaded = load_model(str(bert_dir))
    inner = ScalingCollector(2, loaded.num_layers, loaded.num_heads, 32)
    refs: list[weakref.ref] = []

    def sink(call: AttentionCall) -> None:
        gc.collect()
        assert all(r() is None for r in refs), "an earlier layer's P is still alive"
        refs.append(weakref.ref(call.probs))
        inner(call)

    ids = torch.randint(1000, 2000, (2, 32))
    with torch.inference_mode(), capture(loaded.model, sink):
        loaded.model(input_ids=ids)
    assert len(refs) == loaded.num_layers


def test_batch_follows_the_memory_budget(bert_dir):
    loaded = load_model(str(bert_dir))
    cpu = torch.device("cpu")

    def est(batch: int) -> int:
        return estimate_bytes(batch, 2048, 3, 24, 8, 2, cuda=False)

    per_sequence = est(2) - est(1)
    assert est(5) - est(1) == 4 * per_sequence  # linear in the batch, no term in depth
    assert per_sequence >= 3 * 3 * 2048**2 * 4  # scores, masked scores and P, float32
    small, est_small = choose_batch(loaded, 2048, 1, 16, cpu)
    assert small == 1 and est_small > 1  # nothing fits: one at a time
    batch, est = choose_batch(loaded, 512, 64 * 1024**2, 16, cpu)
    assert 1 < batch <= 16 and est <= 64 * 1024**2
    bigger, _ = choose_batch(loaded, 512, 128 * 1024**2, 16, cpu)
    assert bigger >= batch
    assert choose_batch(loaded, 64, 2**40, 5, cpu)[0] == 5  # capped by the documents


# --- the command ----------------------------------------------------------------------------------


def _scaling(args, **kw):
    return CliRunner().invoke(main, ["scaling", *args], **kw)


@pytest.fixture(scope="module")
def tiny_scaling(bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "run"
    args = [
        "--model",
        str(bert_dir),
        "--dataset",
        "sample-imdb",
        "--seq-len",
        ",".join(map(str, NS)),
        "--num-sequences",
        str(DOCS),
        "--bootstrap",
        "100",
        "--out",
        str(out),
    ]
    res = _scaling(args)
    assert res.exit_code == 0, res.output
    return out, res


def test_scaling_writes_one_spectrum_run_per_n(tiny_scaling, bert_dir):
    out, res = tiny_scaling
    loaded = load_model(str(bert_dir))
    ids = {}
    for n in NS:
        run = SpectrumResult.read(out / f"n{n}")
        assert run.config["format"] == "lowrank-spectrum" and run.seq_len == n
        assert run.config["causal"] is False and run.stats.count == DOCS
        assert run.config["sequence_policy"]["policy"] == "matched offsets"
        ids[n] = run.input_ids
        # the same statistics as the spectrum pipeline on the same sequences ...
        from lowrank.inputs.corpora import Sequences

        seqs = Sequences(run.input_ids, np.full(DOCS, n))
        # at the run's own batch size: float32 forward passes of other batch shapes differ
        # by rounding (~1e-8 in c), which the run's numbers must not hide behind
        batch = int(run.config["batch_size"])
        spectrum = analyse(loaded, seqs, run.stats.index, batch_size=batch).stats
        assert np.abs(run.stats.cumulative.mean - spectrum.cumulative.mean).max() <= 1e-12
        assert np.abs(run.stats.summaries.mean - spectrum.summaries.mean).max() <= 1e-12
        # ... and as output_attentions=True with numpy's SVD
        ref = reference_cumulative(loaded.model, run.input_ids, np.full(DOCS, n))
        assert np.abs(run.stats.cumulative.mean - ref.mean(axis=0)).max() <= 1e-6
    for n in NS:  # nested: every n reads a prefix of the same tokens
        assert (ids[n][:, 1 : n - 1] == ids[NS[-1]][:, 1 : n - 1]).all()
    assert "documents have the 62 tokens n = 64 needs; analysing 4" in res.output


def test_scaling_summary_matches_the_runs(tiny_scaling):
    out, res = tiny_scaling
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "lowrank-scaling" and meta["ns"] == list(NS)
    assert meta["causal"] is False and meta["documents"]["fit"] == DOCS
    assert meta["runs"] == {str(n): f"n{n}" for n in NS}
    assert "--seq-len 8,16,24,32,64 " in meta["command"]  # the command reproduces the run
    assert meta["format_version"] == 2 and meta["window_policy"]["policy"] == "matched"
    assert meta["window_policy"]["starts"] == meta["sequence_policy"]["window_starts"]
    run = ScalingResult.read(out)
    layers = run.arrays["rank90"].shape[2]
    for s, n in enumerate(NS):
        spectrum = SpectrumResult.read(out / f"n{n}")
        for k, name in ((1, "rank90"), (2, "rank99"), (3, "effective_rank"), (4, "stable_rank")):
            per_doc = run.arrays[name][s]  # (W, L, H)
            assert np.allclose(per_doc.mean(axis=0), spectrum.stats.summaries.mean[..., k])
        assert np.allclose(run.arrays["rank90_mean"][-1, s], run.arrays["rank90"][s].mean())
        out_rank = run.arrays["output_rank"][s]
        assert (out_rank >= 1).all() and (out_rank <= 8).all()  # head dim d = 24 / 3
        c = spectrum.stats.cumulative.mean  # (L, H, n): c at n/4 and at the fixed index 8
        assert np.allclose(run.arrays["c_at_quarter"][s].mean(axis=0), c[..., n // 4 - 1])
        assert np.allclose(run.arrays["c_at_fixed"][s].mean(axis=0), c[..., 7])
    assert int(run.arrays["head_dim"]) == 8 and meta["verdict_rule"]["min_lengths"] == 5
    frame = run.summary()
    assert len(frame) == len(MEASURES) * (layers + 1)
    labels = {"logarithmic", "power law", "saturating", "none fits", "cannot tell"}
    for m in MEASURES:
        for group in run.groups:
            record = meta["verdicts"][m][group]
            assert record["verdict"] in labels and record["text"] == run.verdict(m, group)
            assert set(record["models"]) == {"log", "power", "saturating"}
        # the output rank's level is bounded by d = 8
        assert (run.arrays["output_rank_saturating_params"][:, 0] <= 8 + 1e-9).all()
    assert "held-out error" in res.output and "% vs the 10% cut (" in res.output
    assert "points inside" in res.output or "points outside" in res.output
    assert "position control (n = 24): the same tokens at positions 40-63" in res.output


def test_fewer_than_five_lengths_measure_but_give_no_verdict(bert_dir):
    """Three lengths used to name 'power law' or 'logarithmic' (issue 25): now the means and
    fits stay, and every verdict says why there is none, in one line, recorded too."""
    import lowrank

    res = lowrank.scaling(
        str(bert_dir), dataset="sample-imdb", seq_len=(8, 16, 32), num_sequences=4,
        bootstrap=50, progress=False, position_control=False,
    )  # fmt: skip
    assert set(res.arrays["rank90_label"]) == {"no verdict"}
    assert res.verdict("rank90", "layer 1") == "no verdict: 3 lengths, a verdict needs 5"
    assert res.config["verdicts"]["output_rank"]["model"] == {
        "verdict": "no verdict",
        "text": "no verdict: 3 lengths, a verdict needs 5",
        "lengths": 3,
        "min_lengths": 5,
    }
    assert np.isfinite(res.arrays["rank90_log_params"]).all()  # the fits are still drawn
    assert np.isnan(res.arrays["rank90_curvature"]).all()
    report = res.report()
    assert "No verdict: 3 lengths, a verdict needs 5" in report
    assert "held-out error" not in report and "power law" not in report
    assert res.config["position_control"] == {"n": 16, "skipped": "turned off"}


def test_scaling_refuses_when_no_document_is_long_enough(bert_dir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("A short text of a few words.\n")
    args = ["--model", str(bert_dir), "--data", str(text), "--seq-len", "8,16,32"]
    res = _scaling([*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith("error: no document has the 30 tokens") and "the longest has" in line


def test_scaling_options_are_checked_in_one_line(bert_dir, tmp_path):
    for args, message in (
        (["--seq-len", "8,16"], "at least three lengths"),
        (["--seq-len", "8,16,32", "--fixed-index", "9"], "exceeds the smallest n = 8"),
        (["--seq-len", "8,16,128"], "exceeds the 64 positions"),
    ):
        res = _scaling(["--model", str(bert_dir), "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 2, res.output
        assert message in res.output and "Traceback" not in res.output


def test_precision_stops_each_n_and_fits_the_shared_documents(bert_dir, tmp_path):
    out = tmp_path / "precise"
    args = ["--model", str(bert_dir), "--dataset", "sample-imdb", "--seq-len", "8,16,32"]
    args += ["--num-sequences", "14", "--batch-size", "5", "--precision", "0.5"]
    res = _scaling([*args, "--bootstrap", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "run.json").read_text())
    for n in ("8", "16", "32"):
        run_meta = json.loads((out / f"n{n}" / "run.json").read_text())
        assert run_meta["precision"]["stopped_early"] is True
        assert run_meta["num_sequences"] == 10  # two batches of 5 reach the loose target
    assert meta["documents"]["fit"] == 10


@pytest.mark.slow
def test_scaling_figures_are_drawn(tiny_scaling):

    out, _ = tiny_scaling
    written = ScalingResult.read(out).draw()
    names = {p.name for p in written}
    assert {f"scaling_{m}.pdf" for m in MEASURES} <= names
    assert {"scaling_c_curves.pdf", "scaling_c_curves.png"} <= names
    assert all(p.stat().st_size > 1000 for p in written)


def test_dtype_float32_runs_on_the_cpu_and_half_precision_is_refused_in_one_line(
    bert_dir, tmp_path
):
    import lowrank

    base = ["--model", str(bert_dir), "--dataset", "sample-imdb", "--seq-len", "8,16,32"]
    base += ["--num-sequences", "2", "--bootstrap", "50", "--no-position-control"]
    done = _scaling([*base, "--dtype", "float32", "--out", str(tmp_path / "f32")])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "f32" / "run.json").read_text())["dtype"] == "float32"
    for dtype in ("float16", "bfloat16"):
        res = _scaling([*base, "--dtype", dtype, "--device", "cpu", "--out", str(tmp_path / dtype)])
        assert res.exit_code == 2 and "Traceback" not in res.output
        (line,) = [x for x in res.output.splitlines() if x.startswith("error:")]
        assert line == f"error: --dtype {dtype} needs --device cuda; use float32 on the CPU"
        assert not (tmp_path / dtype).exists()  # nothing written
    with pytest.raises(LowrankError, match=r"^dtype='float16' needs device cuda"):
        lowrank.scaling(str(bert_dir), seq_len=(8, 16, 32), dtype="float16", device="cpu")
