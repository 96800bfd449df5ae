"""``lowrank verify``: Theorem 1 (and 2) bounds against failure rates measured on attention.

Every row names its statement (see :data:`lowrank.families.verify.theorems.STATEMENTS`), the
matrices P it ran on, and the vectors w. Rates come with cluster-robust 95% intervals (a cluster is
one draw of R: a matrix with its vectors or query rows), and only statements whose failure
probability a proof bounds get a verdict, Holm-corrected over all of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lowrank.core.random import seeded_generator
from lowrank.errors import LowrankError
from lowrank.families.verify.format import FORMAT
from lowrank.families.verify.theorems import (
    PROMISED,
    STATEMENTS,
    VECTORS,
    Row,
    assign_verdicts,
    jl_exact_failure,
    jl_failures,
    jl_inner_failure_bound,
    jl_norm_failure_bound,
    k_for_failure,
    probe_vectors,
    smallest_k,
    synthetic_attention,
    theorem1_failure_bound,
    theorem1_failures,
    theorem1_k,
    theorem2_failures,
    theorem2_k,
)
from lowrank.hooks.attention import AttentionCall, capture
from lowrank.maths.stats import ClusteredRate

if TYPE_CHECKING:
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.prepared import Prepared

log = logging.getLogger(__name__)

INTERVALS = (
    "Clopper-Pearson on the Korn-Graubard effective sample size; cluster = one draw of R "
    "(a matrix P with its vectors w, or with its n query rows for Theorem 2); conditional on "
    "the measured P, as the theorems quantify over R. JL rows draw a fresh R per trial "
    "(clusters of one: plain Clopper-Pearson)"
)
Counts = dict[tuple[str, str, int], list[np.ndarray]]


def measure_real(
    loaded: Any,
    ids: np.ndarray,
    ks: list[int],
    eps: list[float],
    batch_size: int,
    seed: int,
    delta: float,
    with_theorem2: bool,
) -> tuple[Counts, dict[int, list[np.ndarray]], int]:
    """Per-matrix failure counts on captured attention: one fresh R per (sequence, layer,
    head, k), shared by the matrix's vectors (Theorem 1) or query rows (Theorem 2).

    Returns:
        Theorem 1 counts per (statement, vectors, k) (a list of (M, E) arrays), Theorem 2
        counts per k, and the head dimension d.
    """
    t1: Counts = {}
    t2: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    state = {"batch": 0, "d": 0}

    def sink(call: AttentionCall) -> None:
        b, h, n, d = call.value.shape
        p = call.probs.reshape(b * h, n, n).double()
        v = call.value.reshape(b * h, n, d)
        state["d"] = d
        svd = torch.linalg.svd(p)  # for the witness and the top singular vectors
        vectors = probe_vectors(
            p, v, svd[2], VECTORS, seeded_generator(21, seed, state["batch"], call.layer)
        )
        for k in ks:
            gen = seeded_generator(22, seed, state["batch"], call.layer, k)
            for key, counts in theorem1_failures(p, vectors, k, eps, gen, svd).items():
                t1.setdefault((*key, k), []).append(counts)
            if with_theorem2:
                q = call.query.reshape(b * h, n, d)
                key_ = call.key.reshape(b * h, n, d)
                t2[k].append(theorem2_failures(q, key_, v, k, eps, gen, delta))

    for lo in range(0, len(ids), batch_size):
        with torch.inference_mode(), capture(loaded.model, sink):
            loaded.model(input_ids=torch.from_numpy(ids[lo : lo + batch_size]))
        state["batch"] += 1
    return t1, t2, state["d"]


def _rows_from_counts(
    statement: str,
    source: str,
    vectors: str,
    k: int,
    eps: list[float],
    chunks: list[np.ndarray],
    per_cluster: int,
    bound: Any,
) -> list[Row]:
    counts = np.concatenate(chunks)  # (clusters, E)
    sizes = np.full(len(counts), per_cluster)
    return [
        Row(
            statement,
            source,
            vectors,
            e,
            k,
            ClusteredRate.from_clusters(counts[:, i], sizes),
            bound(e) if bound else None,
        )
        for i, e in enumerate(eps)
    ]


def verify_identity(
    config: InputConfig,
    eps: list[float],
    ks: list[int],
    inverse_temperatures: list[float],
    seed: int,
    synthetic_count: int,
    delta: float,
) -> dict[str, Any]:
    """The fields that define a verify run's numbers, as stored in run.json."""
    identity = config.identity() | {
        "eps": eps,
        "k": ks,
        "inverse_temperatures": inverse_temperatures,
        "seed": seed,
        "synthetic_count": synthetic_count,
        "delta": delta,
    }
    return json.loads(json.dumps(identity))


def run_verify(
    prep: Prepared,
    config: InputConfig,
    eps: list[float],
    ks: list[int],
    inverse_temperatures: list[float],
    synthetic_count: int,
    jl_trials: int,
    target: float,
    with_theorem2: bool,
    seed: int,
    delta: float,
    identity: dict[str, Any],
    provenance: dict[str, Any],
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure every statement's failure rate on prepared real attention, on synthetic
    attention and on random vectors (the JL rows). Options are checked by the caller
    (:func:`lowrank.families.project.api.verify`); nothing is written here.

    Returns:
        ``(meta, arrays, records, k_needed)``: run.json, the verify.npz arrays (each
        [series, eps, k]: ``rate``, ``ci_low``, ``ci_high``, ``bound``, ``exact``,
        ``n_eff``, ``p_holm``, ``failures``, ``trials``, ``clusters``; with ``eps`` [E],
        ``ks`` [K], ``series`` [S] and ``statement`` [S]), one record per row of verify.csv,
        and the "k needed" table of verify.json.
    """
    from tqdm.auto import tqdm

    n = config.seq_len
    log.info("measuring real attention ...")
    t1, t2, d = measure_real(
        prep.loaded,
        prep.sequences.input_ids,
        ks,
        eps,
        config.batch_size,
        seed,
        delta,
        with_theorem2,
    )
    rows: list[Row] = []
    for (statement, vectors, k), chunks in t1.items():
        bound = (lambda e, k=k: theorem1_failure_bound(n, k, e)) if statement in PROMISED else None
        per = d if vectors in ("values", "gaussian") else min(d, n)  # vectors per matrix
        rows += _rows_from_counts(statement, "real", vectors, k, eps, chunks, per, bound)
    if with_theorem2:
        for k, chunks in t2.items():
            rows += _rows_from_counts("theorem2", "real", "-", k, eps, chunks, n, None)
    betas = tqdm(inverse_temperatures, desc="synthetic", unit="beta", disable=not progress)
    for beta in betas:
        bits = int(np.float64(beta).view(np.uint64))  # every distinct beta its own stream
        gen = seeded_generator(23, seed, bits)
        p, v = synthetic_attention(n, d, beta, synthetic_count, gen)
        for k in ks:
            counts = theorem1_failures(
                p, {"values": v}, k, eps, seeded_generator(24, seed, bits, k)
            )
            for (statement, vectors), c in counts.items():
                bound = (
                    (lambda e, k=k: theorem1_failure_bound(n, k, e))
                    if statement in PROMISED
                    else None
                )
                rows += _rows_from_counts(
                    statement, f"synthetic beta={beta:g}", vectors, k, eps, [c], d, bound
                )
    for k in ks:
        jl = jl_failures(n, k, eps, jl_trials, seeded_generator(25, seed, k))
        for statement, fails in jl.items():
            for i, e in enumerate(eps):
                jl_bound = (
                    jl_inner_failure_bound(e, k)
                    if statement == "jl-inner"
                    else jl_norm_failure_bound(e, k)
                )
                exact = (
                    jl_exact_failure(e, k, squared=statement == "jl-norm2")
                    if statement != "jl-inner"
                    else None
                )
                rate = ClusteredRate.from_clusters(fails[:, i], np.ones(len(fails)))
                rows.append(Row(statement, "random", "-", e, k, rate, jl_bound, exact))
    order = {name: i for i, name in enumerate(VECTORS)}
    sources = list(dict.fromkeys(r.source for r in rows))
    statements = list(STATEMENTS)
    rows.sort(
        key=lambda r: (
            statements.index(r.statement),
            sources.index(r.source),
            order.get(r.vectors, -1),
            r.eps,
            r.k,
        )
    )
    tests = assign_verdicts(rows)
    needed = _needed(rows, eps, n, d, target)
    records = [_record(r) for r in rows]
    meta = {
        **FORMAT.header(),
        "command": provenance["command"],
        "created": provenance["created"],
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": len(prep.sequences.lengths),
        "head_dim": d,
        "eps": eps,
        "k": ks,
        "inverse_temperatures": inverse_temperatures,
        "delta": delta,
        "target_delta": target,
        "verify_seed": seed,
        "theta_constants": 1,
        "statements": STATEMENTS,
        "intervals": INTERVALS,
        "multiplicity": f"Holm over the {tests} rows with a promised, non-vacuous bound",
        "versions": provenance["versions"],
    }
    meta = json.loads(json.dumps(meta, default=str))
    records = json.loads(json.dumps(records))  # as verify.json reads back
    return meta, verify_arrays(records, eps, ks), records, json.loads(json.dumps(needed))


def series_of(row: Row) -> str:
    """The label of a row's series (all of its k): ``statement | source | vectors``."""
    return f"{row.statement} | {row.source} | {row.vectors}"


def _needed(
    rows: list[Row], eps: list[float], n: int, d: int, target: float
) -> list[dict[str, Any]]:
    """Per series and eps: the smallest measured k whose rate (point, and certified: upper
    95% bound) is below ``target``, beside the k at which the statement's own bound reaches
    that same level. Statements without a failure bound get no theory k: the paper's
    k = 5 ln n / gap is for a failure probability o(1), not for ``target``."""
    table = []
    for series in dict.fromkeys(series_of(r) for r in rows):
        mine = [r for r in rows if series_of(r) == series]
        for e in eps:
            at_eps = [r for r in mine if r.eps == e]
            measured = smallest_k(at_eps, False, target)
            certified = smallest_k(at_eps, True, target)
            theory = k_for_failure(mine[0].statement, n, e, target)
            table.append(
                {
                    "series": series,
                    "statement": mine[0].statement,
                    "eps": e,
                    "measured_k": measured,
                    "certified_k": certified,
                    "theory_k_at_target": theory,
                    "ratio": theory / certified if theory and certified else None,
                }
            )
    return table


def _record(r: Row) -> dict[str, Any]:
    lo, hi = r.interval
    return {
        "series": series_of(r),
        "statement": r.statement,
        "source": r.source,
        "vectors": r.vectors,
        "eps": r.eps,
        "k": r.k,
        "failures": r.rate.failures,
        "trials": r.rate.trials,
        "clusters": r.rate.clusters,
        "n_eff": r.rate.n_eff,
        "rate": r.rate.rate,
        "ci_low": lo,
        "ci_high": hi,
        "bound": r.bound,
        "exact": r.exact,
        "p_holm": r.p_holm,
        "verdict": r.verdict,
    }


def verify_arrays(
    records: list[dict[str, Any]], eps: list[float], ks: list[int]
) -> dict[str, np.ndarray]:
    """The rows of verify.csv on a grid: each statistic as a [series, eps, k] array (NaN
    where a row has none), with the axes ``series``, ``statement``, ``eps`` and ``ks``."""
    series = list(dict.fromkeys(r["series"] for r in records))
    shape = (len(series), len(eps), len(ks))
    names = ("rate", "ci_low", "ci_high", "bound", "exact", "n_eff", "p_holm")
    arrays = {name: np.full(shape, np.nan) for name in names}
    arrays["failures"] = np.zeros(shape, dtype=np.int64)
    arrays["trials"] = np.zeros(shape, dtype=np.int64)
    arrays["clusters"] = np.zeros(shape, dtype=np.int64)
    for rec in records:
        idx = (series.index(rec["series"]), eps.index(rec["eps"]), ks.index(rec["k"]))
        for name in ("failures", "trials", "clusters", *names):
            arrays[name][idx] = np.nan if rec[name] is None else rec[name]
    arrays |= {
        "eps": np.array(eps),
        "ks": np.array(ks),
        "series": np.array(series),
        "statement": np.array([s.split(" | ")[0] for s in series]),
    }
    return arrays


MEANING = {
    "paper": (
        "the printed bound eps ||Pw|| is smaller than the one the proof controls, so no "
        "rate here contradicts a proven statement; it shows how often the proof's "
        "construction P R^T R misses the paper's wording (the bottom singular vectors, "
        "where ||Pw|| is smallest, are the hard case)"
    ),
    "witness": (
        "the best rank-k approximation is one deterministic low-rank P~ for all w; for a "
        "single fixed w a rank-1 P~ = (Pw) w^T / ||w||^2 is already exact, so a rate above 0 "
        "does not contradict the theorem's existence claim: it says P_k is not within eps in "
        "the paper's relative sense for that share of vectors"
    ),
    "theorem2": (
        "Theorem 2 claims probability 1 - o(1) with unspecified Theta constants in k and no "
        "explicit failure bound, so these are measured rates only"
    ),
}


def head_dim(meta: dict[str, Any], records: list[dict[str, Any]]) -> int:
    """d of a verify run: recorded in run.json, or (older runs) the vectors per matrix of
    the real value columns."""
    if "head_dim" in meta:
        return int(meta["head_dim"])
    for r in records:
        if r["source"] == "real" and r["vectors"] == "values" and r["clusters"]:
            return int(r["trials"]) // int(r["clusters"])
    raise LowrankError("the run records no head dimension and has no real value rows")


def verify_report(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    needed: list[dict[str, Any]],
    path: Path | None = None,
    figures: list[Path] | None = None,
) -> str:
    """The text ``lowrank verify`` prints: per statement its rows (rate, interval, bound,
    verdict), the "k needed" table and the paper's k for reference, then the run folder
    and the figures when given."""
    tests = sum(1 for r in records if r["p_holm"] is not None)
    target, n = meta["target_delta"], int(meta["seq_len"])
    d, eps = head_dim(meta, records), [float(e) for e in meta["eps"]]
    lines: list[str] = []
    echo = lines.append
    echo(f"\nintervals: 95% {INTERVALS}")
    echo(f"verdicts: Holm-corrected over {tests} rows whose bound a proof promises")
    for statement in dict.fromkeys(r["statement"] for r in records):
        echo(f"\n{statement}: {STATEMENTS[statement]}")
        echo(
            f"  {'P':<20}{'w':<16}{'eps':>5}{'k':>5}  {'failure rate [95% CI]':<27}"
            f"{'n_eff':>8}{'bound':>10}{'exact':>10}  verdict"
        )
        mine = [r for r in records if r["statement"] == statement]
        for r in mine:
            bound = "-" if r["bound"] is None else f"{r['bound']:.3g}"
            exact = "-" if r["exact"] is None else f"{r['exact']:.3g}"
            verdict = r["verdict"] if r["verdict"] != "n/a" else "- (no bound)"
            echo(
                f"  {r['source']:<20}{r['vectors']:<16}{r['eps']:>5g}{r['k']:>5}  "
                f"{r['rate']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]  {r['n_eff']:>8.0f}"
                f"{bound:>10}{exact:>10}  {verdict}"
            )
        if statement in MEANING:
            top = max(r["k"] for r in mine)
            at_top = [r for r in mine if r["k"] == top and r["source"] == "real"] or [
                r for r in mine if r["k"] == top
            ]
            rates = ", ".join(
                f"eps={r['eps']:g} ({r['vectors']}): {r['rate']:.3f}"
                for r in at_top
                if r["vectors"] in ("values", "-")
            )
            echo(f"  in plain words: at k = {top}, {rates}; {MEANING[statement]}.")
    echo(
        f"\nk needed for a failure rate below {target}: measured (point; certified = upper "
        "95% bound below it) against the k at which the statement's bound reaches that level"
    )
    echo(
        f"  {'series':<44}{'eps':>5}{'measured':>10}{'certified':>11}{'bound k':>10}"
        f"{'bound/certified':>17}"
    )
    for row in needed:
        measured = "> max k" if row["measured_k"] is None else str(row["measured_k"])
        certified = "> max k" if row["certified_k"] is None else str(row["certified_k"])
        theory = "-" if row["theory_k_at_target"] is None else f"{row['theory_k_at_target']:.0f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        echo(
            f"  {row['series']:<44}{row['eps']:>5g}{measured:>10}{certified:>11}{theory:>10}"
            f"{ratio:>17}"
        )
    paper = ", ".join(f"eps={e:g}: {theorem1_k(n, e):.0f}" for e in eps)
    second = ", ".join(f"eps={e:g}: {theorem2_k(n, d, e):.0f}" for e in eps)
    echo(
        f"  for reference only (failure o(1), not {target}; not comparable with the rows "
        f"above): the paper's Theorem 1 k = 5 ln n / (eps^2 - eps^3) = {paper}; "
        f"Theorem 2 k = min(9 d ln d, 5 ln n) / eps^2 = {second}"
    )
    if path is not None:
        echo(f"run folder: {path}  (verify.csv, verify.json, verify.npz, run.json)")
    lines += [f"figure: {figure}" for figure in figures or []]
    return "\n".join(lines)


__all__ = ["asdict", "run_verify", "verify_report"]
