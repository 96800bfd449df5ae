"""compare's verdicts that survive another text (lowrank issue 25), each with a constructed
case where the old verdict was wrong; format 2 and format-1 folders; ``dtype``."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lowrank
from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.compare.collect import CompareCollector
from lowrank.families.compare.finding import finding_text, versus_text
from lowrank.families.compare.result import CompareResult
from lowrank.families.compare.spec import CompareSpec, parity_tolerance
from lowrank.families.compare.verdicts import equal_cost, resampling_units, sparse_vs_lowrank
from lowrank.hooks.calls import AttentionCall
from lowrank.maths.stats import rank_correlation
from tests.helpers import tiny_model_folder

ROWS = ["lowrank-oracle", "sparse-oracle"]


def _arrays(entropy: np.ndarray, low: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
    """compare's arrays for two families at one budget, from [S, L, H] per-sequence values
    (the same errors on both metrics)."""
    per = np.stack([low, sparse], axis=1)[:, :, None]  # (S, F=2, K=1, L, H)
    per = np.stack([per, per], axis=-1)  # (S, F, K, L, H, 2)
    return {
        "per_sequence_error": per,
        "entropy_per_sequence": entropy,
        "entropy_mean": entropy.mean(0),
        "probs_error_mean": per[..., 0].mean(0),
        "output_error_mean": per[..., 1].mean(0),
    }


# --- issue 25, item 2: the interval resamples layers (with their heads) and sequences -------


def test_a_relation_carried_by_one_layer_is_not_a_finding():
    """Layer 1's heads have both the highest entropy and the largest advantage of low-rank;
    within every other layer there is no relation. Resampling heads as if independent (the
    old verdict) excludes 0: "rises with entropy". Resampling layers with their heads does
    not: a text without layer 1's heads shows nothing."""
    rng = np.random.default_rng(3)
    s, layers, heads = 8, 6, 12
    entropy, advantage = np.empty((layers, heads)), np.empty((layers, heads))
    entropy[0], advantage[0] = rng.uniform(0.85, 1.0, heads), rng.uniform(3, 4, heads)
    entropy[1:] = rng.uniform(0.0, 0.8, (layers - 1, heads))
    advantage[1:] = rng.normal(0, 1, (layers - 1, heads))
    noise = np.exp(rng.normal(0, 0.05, (2, s, layers, heads)))
    low, sparse = 0.3 * np.exp(-advantage)[None] * noise[0], 0.3 * noise[1]
    ent = entropy[None] + rng.normal(0, 0.01, (s, layers, heads))
    old = rank_correlation(ent.mean(0).ravel(), np.log(sparse.mean(0) / low.mean(0)).ravel())
    assert old["low"] > 0  # the old verdict: "rises with entropy"
    record = sparse_vs_lowrank(_arrays(ent, low, sparse), ROWS, 0, "probs_error", per_layer=True)
    assert record is not None
    rho = record["entropy_spearman"]
    assert rho["rho"] == pytest.approx(old["rho"])  # the same estimate ...
    assert rho["low"] <= 0 <= rho["high"]  # ... whose interval now contains 0
    assert rho["resampling"]["resampled"] == ["sequences", "layers"]
    assert len(rho["per_layer"]) == layers and max(np.abs(rho["per_layer"][1:])) < 0.7
    assert np.isfinite(rho["per_layer_low"]).all()  # per-layer intervals at the focus budget


# --- issue 25, item 1: no threshold fitted to the same heads --------------------------------


def test_a_perfect_cut_on_the_means_does_not_survive_half_the_sequences():
    """On the means, sparse wins exactly the heads below entropy 0.6 (the old finding's
    threshold); per sequence, the heads near 0.6 flip. The in-sample cut makes no error,
    the cut fitted on half the sequences errs on the other half, and the finding says the
    cut was fitted to the same heads."""
    rng = np.random.default_rng(4)
    s, layers, heads = 8, 6, 12
    entropy = rng.uniform(0.2, 1.0, (layers, heads))
    noise = rng.uniform(-0.9, 0.9, (s, layers, heads))
    noise -= noise.mean(0)  # the means are exactly monotone in entropy
    mean_sparse = 0.2 * np.exp(2 * (entropy - 0.6))  # below low-rank's 0.2 iff entropy < 0.6
    low, sparse = np.full((s, layers, heads), 0.2), mean_sparse[None] * (1 + noise)
    arrays = _arrays(np.broadcast_to(entropy, (s, layers, heads)).copy(), low, sparse)
    record = sparse_vs_lowrank(arrays, ROWS, 0, "probs_error")
    assert record is not None
    sep = record["separability"]
    assert sep["cut"]["errors_in_sample"] == 0 and 0.55 < sep["cut"]["threshold"] < 0.65
    errors, scored = sep["crossfit_errors"]
    assert errors > 0 and scored == 2 * layers * heads
    assert sep["auc_side"] == 1.0 and sep["sparse_side"] == "lower entropy"
    text = " ".join(versus_text(record, 32, None))
    assert "fitted to these same heads, misclassifies 0 of 72" in text
    assert f"misclassifies {errors} of {scored} heads of the other half" in text
    assert "exactly" not in text


# --- issue 25, item 3: the oracles are oracles for the matrix metric only ----------------------


def test_the_output_floor_is_below_the_low_rank_oracle_on_the_output():
    """With d = 2 <= b, the best rank-b P~ for the output reaches PV exactly (floor 0), while
    the Eckart-Young 'oracle' (best for ||P~ - P||) does not: it is no oracle there."""
    gen = torch.Generator().manual_seed(5)
    n, d, heads = 24, 2, 2
    q, k, v = (torch.randn(1, heads, n, d, generator=gen, dtype=torch.float64) * 2 for _ in "qkv")
    p = torch.softmax(q @ k.mT * d**-0.5, -1)
    spec = CompareSpec(budgets=(1, 4), families=("lowrank-oracle", "sparse-oracle", "nystrom"))
    sink = CompareCollector(spec, 1, heads, n)
    sink(AttentionCall(0, p.float(), q.float(), k.float(), v.float(), None, torch.nn.Module()))
    arrays = sink.arrays()
    floor, low = (
        arrays["output_floor"],
        arrays["output_error_mean"][spec.rows.index("lowrank-oracle")],
    )
    assert np.allclose(floor[1], 0, atol=1e-12)  # b = 4 >= d
    assert (low[1] > 1e-3).all()  # the "oracle" is not optimal for the output
    assert (floor <= arrays["output_error_mean"][spec.rows.index("nystrom")] + 1e-12).all()
    assert (floor[0] > 0).all() and (floor[0] <= low[0] + 1e-12).all()


def test_the_finding_names_the_metric_the_oracles_are_optimal_on():
    rng = np.random.default_rng(6)
    entropy = rng.uniform(0, 1, (4, 3, 4))
    low, sparse = rng.uniform(0.1, 1, (2, 4, 3, 4))
    arrays = _arrays(entropy, low, sparse)
    for metric, optimal in (("probs_error", True), ("output_error", False)):
        record = sparse_vs_lowrank(arrays, ROWS, 0, metric)
        assert record is not None and record["metric"] == metric
        assert record["oracles_optimal"] is optimal
        text = versus_text(record, 32, 0.0)[0]
        assert ("both oracles are optimal" in text) == optimal
        assert ("reaches the output floor, median 0.0000" in text) == (not optimal)


# --- issue 25, item 4: equal stored numbers and equal scores ---------------------------------


def test_at_equal_stored_numbers_the_majority_flips():
    """At equal b low-rank wins every head; a rank-b factorisation stores 2nb numbers, the
    same as top-2b values, and at that cost sparse wins every head."""
    rows = ["lowrank-oracle", "sparse-oracle", "sparse-oracle-renorm", "zero", "uniform"]
    table = np.full((len(rows), 2, 2, 3), np.nan)  # (F, K = budgets 8, 16, L, H)
    table[0] = 0.3  # low-rank at b = 8 and 16
    table[1, 0], table[1, 1] = 0.4, 0.2  # sparse: worse at b = 8, better at b = 16
    arrays = {"probs_error_mean": table, "output_error_mean": table}
    entries = equal_cost(arrays, rows, 64, [8, 16])
    values_only = [e for e in entries if not e["indices"] and e["metric"] == "probs_error"]
    (pair,) = [e for e in values_only if e["budget_a"] == 8]
    assert pair["budget_b"] == 16 and pair["ratio"] == 1.0
    assert (pair["a_wins"], pair["b_wins"]) == (0, 6)  # sparse at top-16 wins every head
    (same,) = [
        e for e in entries if e["indices"] and e["budget_a"] == 8 and e["metric"] == "probs_error"
    ]
    assert (same["budget_a"], same["budget_b"], same["a_wins"]) == (8, 8, 6)  # equal b


# --- everywhere: no interval from too few sequences or layers --------------------------------


def test_two_sequences_and_two_layers_give_no_interval_and_say_why():
    """The old verdict printed a bootstrap interval over heads whatever N; with two sequences
    and two layers there are too few clusters, and the finding says so."""
    assert resampling_units(2, 2)[0] is None
    assert resampling_units(3, 2)[0] == "sequences" and resampling_units(1, 6)[0] == "layers"
    rng = np.random.default_rng(7)
    entropy = rng.uniform(0, 1, (2, 2, 6))
    low, sparse = rng.uniform(0.1, 1, (2, 2, 2, 6))
    record = sparse_vs_lowrank(_arrays(entropy, low, sparse), ROWS, 0, "probs_error")
    assert record is not None
    assert math.isnan(record["entropy_spearman"]["low"])
    assert record["separability"]["resampling"]["method"] == "none"
    text = " ".join(versus_text(record, 8, None))
    assert "(no interval: sequences not resampled (2 sequences" in text


# --- the run: format 2, format 1, dtype --------------------------------------------------------


@pytest.fixture(scope="module")
def bert3_dir(tmp_path_factory):
    """A tiny BERT with 3 layers: enough layers for the layer bootstrap."""
    from transformers import BertConfig, BertModel

    return tiny_model_folder(
        tmp_path_factory.mktemp("tiny-bert3"), BertModel, BertConfig, seed=3,
        hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=64, initializer_range=0.4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run3(bert3_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp3") / "run"
    families = "lowrank-oracle,sparse-oracle,local-global,nystrom"
    res = lowrank.compare(
        str(bert3_dir), seq_len=32, num_sequences=3, budget=(4, 8), families=families,
        dtype="float32", out=out, progress=False,
    )  # fmt: skip
    return res, out


def test_the_finding_resamples_sequences_and_layers_and_says_what_it_rests_on(run3):
    res, out = run3
    meta = json.loads((out / "run.json").read_text())
    finding = meta["finding"]
    assert finding["resampled"] == ["sequences", "layers"] and finding["not_resampled"] == ""
    assert finding["metrics"] == ["output_error", "probs_error"] and finding["budget"] == 8
    assert (finding["sequences"], finding["layers"], finding["heads"]) == (3, 3, 12)
    assert finding["corpus"] == "wiki sample (embedded)" and finding["seq_len"] == 32
    versus = meta["findings"][1]["sparse_vs_lowrank"]["probs_error"]
    assert versus["entropy_spearman"]["resampling"]["resampled"] == ["sequences", "layers"]
    assert np.isfinite(versus["entropy_spearman"]["per_layer_low"]).all()  # focus budget
    other = meta["findings"][0]["sparse_vs_lowrank"]["probs_error"]["entropy_spearman"]
    assert all(x is None or math.isnan(x) for x in other["per_layer_low"])  # not the focus
    assert res.sparse_vs_lowrank(at=8, metric="probs_error") == versus
    assert res.report().count("Rests on one model") == 1
    assert meta["config"]["dtype"] == "float32" and meta["identity"]["dtype"] == "float32"


def _downgrade(folder) -> None:
    """Turn a format-2 folder into what format 1 wrote: a text finding, no per-sequence
    arrays, no output floor, the old ``sparse_vs_lowrank``."""
    meta = json.loads((folder / "run.json").read_text())
    meta["format_version"] = 1
    meta["finding"] = "At b = 8, on output error (mean over 3 seq.): the old text."
    meta.pop("manifest", None)  # format 1 was written before run.json listed its files
    for entry in meta["findings"]:
        entry["sparse_vs_lowrank"] = {"sparse": 1, "lowrank": 2, "entropy_spearman": {"rho": 0.5}}
    (folder / "run.json").write_text(json.dumps(meta))
    with np.load(folder / "compare.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if "per_sequence" not in k and "floor" not in k}
    np.savez_compressed(folder / "compare.npz", **arrays)


def test_a_format_1_folder_still_loads_summarises_and_draws(run3, tmp_path):
    _, out = run3
    old = tmp_path / "old"
    shutil.copytree(out, old)
    _downgrade(old)
    run = lowrank.load(old)
    assert isinstance(run, CompareResult) and "the old text" in run.report()
    assert "floor" not in run.report()
    assert len(run.summary()) == 12
    record = run.sparse_vs_lowrank(metric="probs_error")  # from the means: layers only
    assert record["entropy_spearman"]["resampling"]["resampled"] == ["layers"]
    assert {p.name for p in run.draw(tmp_path / "figs")} >= {"ratio_vs_entropy_b8.png"}
    res = CliRunner().invoke(main, ["summary", str(old)])
    assert res.exit_code == 0 and "lowrank-oracle" in res.output


@pytest.mark.parametrize(
    ("version", "finding", "message"),
    [(1, {"text": "x"}, "format-2 record"), (2, "old text", "must be an object")],
)
def test_a_finding_of_the_wrong_version_is_refused(run3, tmp_path, version, finding, message):
    _, out = run3
    folder = tmp_path / "bad"
    shutil.copytree(out, folder)
    meta = json.loads((folder / "run.json").read_text())
    meta["format_version"], meta["finding"] = version, finding
    (folder / "run.json").write_text(json.dumps(meta))
    with pytest.raises(LowrankError, match=message):
        lowrank.load(folder)


def test_half_precision_is_refused_on_the_cpu_in_one_line(bert_dir, tmp_path):
    out = tmp_path / "o"
    args = ["compare", "--model", str(bert_dir), "--seq-len", "32", "--budget", "4,8"]
    res = CliRunner().invoke(main, [*args, "--dtype", "float16", "--out", str(out)])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--dtype float16" in errors[0] and "cuda" in errors[0]
    assert not out.exists()
    with pytest.raises(LowrankError, match=r"^dtype='bfloat16'"):
        lowrank.compare(str(bert_dir), seq_len=32, budget=(4, 8), dtype="bfloat16", device="cpu")


def test_half_precision_tensors_are_measured_in_float64():
    """Captured float16 tensors (a float16 model on CUDA, or a float16 model object) are
    converted to float64: the errors equal those from the same values given in float64,
    and the parity check allows the float16 rounding of P (which 1e-4 would refuse)."""
    gen = torch.Generator().manual_seed(8)
    n, d = 32, 8
    q, k, v = (torch.randn(2, 3, n, d, generator=gen).half() * 3 for _ in "qkv")
    scores = (q.double() @ k.double().mT * d**-0.5).half()  # the model's float16 scores
    p = torch.softmax(scores, dim=-1, dtype=torch.float32).half()
    spec = CompareSpec(budgets=(4, 8))
    sinks = [CompareCollector(spec, 1, 3, n) for _ in range(2)]
    sinks[0](AttentionCall(0, p, q, k, v, None, torch.nn.Module()))
    q64, k64, v64 = q.double(), k.double(), v.double()
    exact = torch.softmax(q64 @ k64.mT * d**-0.5, dim=-1)
    sinks[1](AttentionCall(0, exact, q64, k64, v64, None, torch.nn.Module()))
    half, full = (s.arrays() for s in sinks)
    assert np.array_equal(half["output_error_mean"], full["output_error_mean"], equal_nan=True)
    assert half["output_error_mean"].dtype == np.float64
    assert sinks[0].dtype == "float16" and sinks[1].dtype == "float64"
    assert 1e-4 < sinks[0].gap <= sinks[0].tolerance
    assert parity_tolerance("float32", 100.0) == 1e-4
    assert parity_tolerance("bfloat16", 10.0) > parity_tolerance("float16", 10.0)


def test_finding_text_is_wrapped_and_ends_with_what_it_rests_on(run3):
    res, _ = run3
    text = res.config["finding"]["text"]
    assert all(len(line) <= 100 for line in text.splitlines())
    assert text.splitlines()[0].startswith("At b = 8, 3 layers x 4 heads")
    assert "Rests on one model (" in text and "3 sequences of 32 tokens" in text
    shape = res.arrays["entropy_per_sequence"].shape
    again = finding_text(
        res.config["findings"][1], res.config["equal_cost"], res.config, shape, None
    )
    assert again.splitlines()[0] == text.splitlines()[0]
