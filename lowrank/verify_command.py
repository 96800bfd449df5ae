"""``lowrank verify``: Theorem 1 (and 2) bounds against failure rates measured on attention."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from lowrank.capture import AttentionCall, capture
from lowrank.config import SpectrumConfig
from lowrank.errors import LowrankError
from lowrank.projection import seeded_generator
from lowrank.runs import check_out_dir, write_csv, write_run
from lowrank.theorems import (
    Row,
    check_eps,
    jl_failures,
    jl_inner_failure_bound,
    jl_norm_failure_bound,
    smallest_k,
    synthetic_attention,
    theorem1_failure_bound,
    theorem1_failures,
    theorem1_k,
    theorem2_failures,
    theorem2_k,
)
from lowrank.workflows import prepare

VERIFY_FORMAT = "lowrank-verify"


def measure_real(
    loaded: Any,
    ids: np.ndarray,
    ks: list[int],
    eps: list[float],
    batch_size: int,
    seed: int,
    with_theorem2: bool,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], int, int, int]:
    """Failure counts on captured attention: one fresh R per (sequence, layer, head, k).

    Returns:
        theorem 1 counts per k (E,), theorem 2 counts per k, theorem 1 trials, theorem 2
        trials, head dimension d.
    """
    t1 = {k: np.zeros(len(eps), dtype=np.int64) for k in ks}
    t2 = {k: np.zeros(len(eps), dtype=np.int64) for k in ks}
    trials = {"t1": 0, "t2": 0, "d": 0}
    state = {"batch": 0}

    def sink(call: AttentionCall) -> None:
        b, h, n, d = call.value.shape
        p = call.probs.reshape(b * h, n, n)
        v = call.value.reshape(b * h, n, d)
        trials["t1"] += b * h * d
        trials["t2"] += b * h * n
        trials["d"] = d
        for k in ks:
            gen = seeded_generator(seed, state["batch"], call.layer, k)
            t1[k] += theorem1_failures(p, v, k, eps, gen)
            if with_theorem2:
                q = call.query.reshape(b * h, n, d)
                key = call.key.reshape(b * h, n, d)
                t2[k] += theorem2_failures(q, key, v, k, eps, gen)

    for lo in range(0, len(ids), batch_size):
        with torch.inference_mode(), capture(loaded.model, sink):
            loaded.model(input_ids=torch.from_numpy(ids[lo : lo + batch_size]))
        state["batch"] += 1
    return t1, t2, trials["t1"], trials["t2"], trials["d"]


def run_verify(
    config: SpectrumConfig,
    eps: list[float],
    ks: list[int],
    temperatures: list[float],
    synthetic_count: int,
    jl_trials: int,
    target: float,
    with_theorem2: bool,
    seed: int,
    out: Path,
    overwrite: bool,
    plot: bool,
    command: str,
    versions: dict[str, str],
    created: str,
) -> Path:
    for e in eps:
        check_eps(e)
    n = config.seq_len
    bad = [k for k in ks if not 0 < k <= n]
    if bad:
        raise LowrankError(f"--k {bad[0]} is outside 1..n = {n}: choose k <= --seq-len")
    if not 0 < target < 1:
        raise LowrankError(f"--target {target} is outside (0, 1)")
    identity = config.identity() | {
        "eps": eps,
        "k": ks,
        "temperatures": temperatures,
        "seed": seed,
        "synthetic_count": synthetic_count,
    }
    check_out_dir(out, identity, overwrite)
    prep = prepare(config)
    rows: list[Row] = []
    click.echo("measuring real attention ...", err=True)
    t1, t2, trials1, trials2, d = measure_real(
        prep.loaded, prep.sequences.input_ids, ks, eps, config.batch_size, seed, with_theorem2
    )
    for k in ks:
        for i, e in enumerate(eps):
            rows.append(Row("real", e, k, int(t1[k][i]), trials1, theorem1_failure_bound(n, k, e)))
            if with_theorem2:
                rows.append(Row("theorem2 real", e, k, int(t2[k][i]), trials2, None))
    from tqdm import tqdm

    for t in tqdm(temperatures, desc="synthetic", unit="T", file=sys.stderr):
        gen = seeded_generator(seed, 1, int(t * 1000))
        p, v = synthetic_attention(n, d, t, synthetic_count, gen)
        for k in ks:
            counts = theorem1_failures(p, v, k, eps, seeded_generator(seed, 2, int(t * 1000), k))
            for i, e in enumerate(eps):
                rows.append(
                    Row(
                        f"synthetic T={t:g}",
                        e,
                        k,
                        int(counts[i]),
                        synthetic_count * d,
                        theorem1_failure_bound(n, k, e),
                    )
                )
    for k in ks:
        norms, inner = jl_failures(n, k, eps, jl_trials, seeded_generator(seed, 3, k))
        for i, e in enumerate(eps):
            rows.append(Row("jl-norm", e, k, int(norms[i]), jl_trials, jl_norm_failure_bound(e, k)))
            rows.append(
                Row("jl-inner", e, k, int(inner[i]), jl_trials, jl_inner_failure_bound(e, k))
            )
    needed = _needed(rows, eps, n, d, target)
    _write(
        out,
        rows,
        needed,
        config,
        prep,
        identity,
        eps,
        ks,
        temperatures,
        target,
        seed,
        command,
        versions,
        created,
    )
    _print(rows, needed, target)
    click.echo(f"run folder: {out}  (verify.csv, verify.json, verify.npz, run.json)")
    if plot:
        from lowrank.figures_verify import plot_verify_folder

        for path in plot_verify_folder(out):
            click.echo(f"figure: {path}")
    return out


def _needed(
    rows: list[Row], eps: list[float], n: int, d: int, target: float
) -> list[dict[str, Any]]:
    table = []
    for source in dict.fromkeys(r.source for r in rows):
        mine = [r for r in rows if r.source == source]
        for e in eps:
            measured = smallest_k(mine, e, target)
            theory = theorem2_k(n, d, e) if source.startswith("theorem2") else theorem1_k(n, e)
            if source.startswith("jl"):
                # the k at which the JL bound itself drops below the target
                theory = 4 * math.log((2 if source == "jl-inner" else 1) / target) / (e**2 - e**3)
            table.append(
                {
                    "source": source,
                    "eps": e,
                    "measured_k": measured,
                    "theory_k": theory,
                    "ratio": theory / measured if measured else None,
                }
            )
    return table


def _write(
    out: Path,
    rows: list[Row],
    needed: list[dict[str, Any]],
    config: SpectrumConfig,
    prep: Any,
    identity: dict[str, Any],
    eps: list[float],
    ks: list[int],
    temperatures: list[float],
    target: float,
    seed: int,
    command: str,
    versions: dict[str, str],
    created: str,
) -> None:
    records = [
        asdict(r)
        | {"rate": r.rate, "ci_low": r.interval[0], "ci_high": r.interval[1], "verdict": r.verdict}
        for r in rows
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "verify.csv", records)
    (out / "verify.json").write_text(
        json.dumps({"rows": records, "k_needed": needed}, indent=2) + "\n", encoding="utf-8"
    )
    sources = list(dict.fromkeys(r.source for r in rows))
    shape = (len(sources), len(eps), len(ks))
    arrays = {name: np.full(shape, np.nan) for name in ("rate", "ci_low", "ci_high", "bound")}
    arrays["failures"] = np.zeros(shape, dtype=np.int64)
    arrays["trials"] = np.zeros(shape, dtype=np.int64)
    for rec in records:
        idx = (sources.index(rec["source"]), eps.index(rec["eps"]), ks.index(rec["k"]))
        for name in ("rate", "ci_low", "ci_high", "failures", "trials"):
            arrays[name][idx] = rec[name]
        arrays["bound"][idx] = np.nan if rec["bound"] is None else rec["bound"]
    arrays |= {"eps": np.array(eps), "ks": np.array(ks), "sources": np.array(sources)}
    meta = {
        "format": VERIFY_FORMAT,
        "format_version": 1,
        "command": command,
        "created": created,
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": len(prep.sequences.lengths),
        "eps": eps,
        "k": ks,
        "temperatures": temperatures,
        "target_delta": target,
        "verify_seed": seed,
        "theta_constants": 1,
        "versions": versions,
    }
    write_run(out, meta, arrays, npz="verify.npz")


def _print(rows: list[Row], needed: list[dict[str, Any]], target: float) -> None:
    click.echo(
        f"\n{'source':<18}{'eps':>5}{'k':>6}  {'failure rate [95% CI]':<30}{'bound':>10}  verdict"
    )
    for r in rows:
        lo, hi = r.interval
        bound = "-" if r.bound is None else f"{r.bound:.3g}"
        click.echo(
            f"{r.source:<18}{r.eps:>5g}{r.k:>6}  {r.rate:.4f} [{lo:.4f}, {hi:.4f}]"
            f"{'':<6}{bound:>10}  {r.verdict}"
        )
    click.echo(f"\nk needed for a failure rate below {target}: measured vs theory")
    click.echo(f"{'source':<18}{'eps':>5}{'measured k':>12}{'theory k':>12}{'theory/measured':>17}")
    for row in needed:
        measured = "> max k" if row["measured_k"] is None else str(row["measured_k"])
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        click.echo(
            f"{row['source']:<18}{row['eps']:>5g}{measured:>12}{row['theory_k']:>12.0f}{ratio:>17}"
        )
