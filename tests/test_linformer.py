"""Linformer module: exact branch, masks, sharing; Table 3 ratios from fake timings."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.families.efficiency.linformer import (
    ExactSelfAttention,
    LinformerSelfAttention,
    exact_twin,
    linformer_encoder,
)
from lowrank.families.efficiency.timing import Measurement, crossover, largest_batch, speedup_table


def _identity_linformer(hidden: int = 16, heads: int = 2, n: int = 10) -> LinformerSelfAttention:
    layer = LinformerSelfAttention(hidden, heads, n, n, "headwise")
    with torch.no_grad():
        layer.e.copy_(torch.eye(n)[None])
        assert layer.f is not None
        layer.f.copy_(torch.eye(n)[None])
    return layer


@pytest.mark.parametrize("kind", ["eager", "sdpa"])
def test_linformer_with_identity_projections_equals_exact_attention(kind):
    torch.manual_seed(0)
    lin = _identity_linformer()
    exact = ExactSelfAttention(16, 2, kind)
    exact.load_state_dict({k: v for k, v in lin.state_dict().items() if k not in ("e", "f")})
    x = torch.randn(3, 10, 16)
    torch.testing.assert_close(lin(x), exact(x), atol=1e-5, rtol=1e-5)


def test_padded_keys_stay_out():
    torch.manual_seed(1)
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10)
    mask[:, 7:] = 0
    changed = x.clone()
    changed[:, 7:] = torch.randn(2, 3, 16) * 10  # whatever the padding holds
    lin = LinformerSelfAttention(16, 2, 10, 4, "none")
    torch.testing.assert_close(lin(x, mask)[:, :7], lin(changed, mask)[:, :7])
    exact = ExactSelfAttention(16, 2, "eager")
    torch.testing.assert_close(exact(x, mask)[:, :7], exact(changed, mask)[:, :7])
    # a zeroed key still scores 0 inside the softmax (as in the reference Linformer): padding
    # carries no content, but unlike exact masking it is not removed from the normalisation
    ident = _identity_linformer()
    exact.load_state_dict({k: v for k, v in ident.state_dict().items() if k not in ("e", "f")})
    assert not torch.allclose(ident(x, mask)[:, :7], exact(x, mask)[:, :7], atol=1e-3)


def test_sharing_strategies_and_the_exact_twin():
    enc = linformer_encoder(layers=3, hidden=16, heads=2, ffn=32, max_len=12, k=4)
    es = {id(b.attention.e) for b in enc.blocks}
    assert len(es) == 1  # layerwise: one matrix for the whole stack
    per_head = LinformerSelfAttention(16, 2, 12, 4, "none")
    assert per_head.e.shape == (2, 4, 12) and per_head.f is not None
    kv = LinformerSelfAttention(16, 2, 12, 4, "key-value")
    assert kv.f is None
    twin = exact_twin(enc, "sdpa")
    for a, b in zip(enc.blocks, twin.blocks, strict=True):
        torch.testing.assert_close(a.attention.query.weight, b.attention.query.weight)
        torch.testing.assert_close(a.mlp[0].weight, b.mlp[0].weight)
    x = torch.randn(1, 12, 16)
    assert twin(x).shape == enc(x).shape == (1, 12, 16)


def _m(method, n, k, seconds, peak):
    return Measurement(method, n, k, 1, seconds, peak, 3)


def test_table_ratios_from_fake_timings():
    records = [
        _m("exact", 512, None, 2.0, 800),
        _m("sdpa", 512, None, 1.0, 100),
        _m("linformer", 512, 64, 4.0, 400),
        _m("linformer", 512, 128, 8.0, 800),
        _m("exact", 1024, None, 8.0, 3200),
        _m("sdpa", 1024, None, 2.0, 200),
        _m("linformer", 1024, 64, 2.0, 400),
        _m("linformer", 1024, 128, 4.0, 400),
        _m("exact", 2048, None, 32.0, 12800),
        _m("linformer", 2048, 64, 4.0, 800),
        _m("linformer", 2048, 128, 4.0, 800),
    ]
    table = speedup_table(records)

    def cell(n, k):
        return {key: table[(n, k)][key] for key in ("speedup", "memory_saving")}

    assert cell(512, 64) == {"speedup": 0.5, "memory_saving": 2.0}
    assert cell(1024, 64) == {"speedup": 4.0, "memory_saving": 8.0}
    assert cell(2048, 128) == {"speedup": 8.0, "memory_saving": 16.0}
    assert crossover(table, 64) == 1024
    assert crossover(table, 128) == 1024  # 4.0 s vs 8.0 s: faster from 1024 on
    vs_sdpa = speedup_table(records, "sdpa")
    assert vs_sdpa[(1024, 64)]["speedup"] == 1.0 and (2048, 64) not in vs_sdpa
    assert crossover(vs_sdpa, 64) is None


def test_largest_batch_is_the_last_power_of_two_that_fits():
    assert largest_batch(lambda b: b <= 12) == 8
    assert largest_batch(lambda b: False) == 1
    assert largest_batch(lambda b: True, limit=64) == 64


def test_efficiency_command_small_grid(tmp_path):
    out = tmp_path / "eff"
    res = CliRunner().invoke(
        main,
        [
            "efficiency",
            "--n",
            "64,128",
            "--k",
            "16",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--ffn",
            "64",
            "--layers",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--plot",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "efficiency.json").read_text())
    methods = {(r["method"], r["n"], r["k"]) for r in data["records"]}
    assert methods == {
        ("exact", 64, None),
        ("sdpa", 64, None),
        ("linformer", 64, 16),
        ("exact", 128, None),
        ("sdpa", 128, None),
        ("linformer", 128, 16),
    }
    cell = next(r for r in data["tables"]["exact"] if r["n"] == 128)
    rec = {(r["method"], r["n"]): r for r in data["records"]}
    # the median over the interleaved rounds of the within-round ratio
    pairs = zip(
        rec[("exact", 128)]["round_seconds_per_token"],
        rec[("linformer", 128)]["round_seconds_per_token"],
        strict=True,
    )
    assert cell["speedup"] == pytest.approx(statistics.median(e / x for e, x in pairs))
    assert "speed-up in time per token" in res.output
    assert json.loads((out / "run.json").read_text())["hardware"]["device"] == "cpu"
    assert (out / "figures" / "speedup_vs_n.png").is_file()


def test_efficiency_memory_budget_picks_the_largest_batch_that_fits(tmp_path):
    out = tmp_path / "budget"
    small = ["--hidden", "32", "--heads", "2", "--ffn", "64", "--layers", "1"]
    timing = ["--repeats", "1", "--warmup", "0", "--device", "cpu"]
    args = [
        "efficiency",
        "--n",
        "64",
        "--k",
        "16",
        *small,
        *timing,
        "--memory-budget",
        "0.03",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "efficiency.json").read_text())
    batches = {r["method"]: r["batch"] for r in data["records"]}
    # about 0.11 MB per sequence for explicit attention at n = 64: 30 MiB holds a few hundred
    assert all(b >= 32 and b & (b - 1) == 0 for b in batches.values())
    assert all(b < 4096 for b in batches.values())  # the budget, not the cap, stopped it
    assert json.loads((out / "run.json").read_text())["memory_budget_gib"] == 0.03


def test_efficiency_bad_input(tmp_path):
    res = CliRunner().invoke(
        main, ["efficiency", "--hidden", "30", "--heads", "4", "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 2 and "not a multiple" in res.output
    res = CliRunner().invoke(
        main,
        ["efficiency", "--batch-size", "2", "--memory-budget", "1", "--out", str(tmp_path / "e")],
    )
    assert res.exit_code == 2 and "either --batch-size or --memory-budget" in res.output
