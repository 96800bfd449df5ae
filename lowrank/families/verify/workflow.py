"""``lowrank verify``: Theorem 1 (and 2) bounds against failure rates measured on attention.

Every row names its statement (see :data:`lowrank.families.verify.theorems.STATEMENTS`), the
matrices P it ran on, and the vectors w. Rates come with cluster-robust 95% intervals (a cluster is
one draw of R: a matrix with its vectors or query rows), and only statements whose failure
probability a proof bounds get a verdict, Holm-corrected over all of them. Beside every event
on real and synthetic attention stand the trivial P~, zero and uniform attention
(:mod:`lowrank.families.verify.baselines`): a verdict says when they meet the bound too.

The work streams (:mod:`lowrank.families.verify.memory` estimates its peak before it starts):
one sequence of one layer at a time, one inverse temperature at a time, JL trials in chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lowrank.core.options import flag
from lowrank.core.random import seeded_generator
from lowrank.errors import LowrankError
from lowrank.families.verify import baselines as trivial
from lowrank.families.verify.format import FORMAT
from lowrank.families.verify.memory import check_memory, release_free_memory
from lowrank.families.verify.report import INTERVALS
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
    theorem2_failures,
    theorem2_setup,
)
from lowrank.hooks.attention import AttentionCall, capture
from lowrank.maths.stats import ClusteredRate
from lowrank.runs.writing import json_value

if TYPE_CHECKING:
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.prepared import Prepared

log = logging.getLogger(__name__)

SEEDS = (
    "R of (sequence, layer, k) from the sequence's index in the run (the same whatever "
    "--batch-size), Gaussian vectors w from (sequence, layer); synthetic P per inverse "
    "temperature; JL vectors then R in fixed chunks per k"
)
Counts = dict[tuple[str, str, int], list[np.ndarray]]


@dataclass
class RealCounts:
    """Per-matrix failure counts on captured attention (each a list of (M, E) arrays).

    Attributes:
        t1: Theorem 1 counts per (statement, vectors, k); t2: Theorem 2 counts per k;
        base: the trivial P~'s counts per (statement, source, vectors, baseline);
        d: the head dimension.
    """

    t1: Counts = field(default_factory=dict)
    t2: dict[int, list[np.ndarray]] = field(default_factory=dict)
    base: trivial.BaseCounts = field(default_factory=dict)
    d: int = 0


def measure_real(
    loaded: Any,
    ids: np.ndarray,
    ks: list[int],
    eps: list[float],
    batch_size: int,
    seed: int,
    delta: float,
    with_theorem2: bool,
    device: torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> RealCounts:
    """Failure counts on captured attention: one fresh R per (sequence, layer, head, k),
    shared by the matrix's vectors (Theorem 1) or query rows (Theorem 2), and the counts of
    the trivial P~ on the same matrices and vectors.

    Each sequence of a layer is checked alone, in float64 on the CPU, its draws seeded by
    its index in the run: the numbers do not depend on ``batch_size``, and the memory of
    the checks does not grow with it. ``progress`` is called with the number of sequences
    of every layer done.
    """
    out = RealCounts(t2={k: [] for k in ks})
    state = {"offset": 0}

    def sink(call: AttentionCall) -> None:
        if with_theorem2 and not (call.probs_from_qk and call.qkv):
            raise LowrankError(
                f"layer {call.layer + 1} ({type(call.module).__name__}) adds terms of its own "
                "to the attention scores (position biases, soft-capping, sinks) or hides Q and "
                "K: Theorem 2's check rebuilds the scores from Q and K; pass "
                f"{'--no-theorem2' if flag('theorem2') != 'theorem2' else 'theorem2=False'} to "
                "check Theorem 1 alone"
            )
        b = call.value.shape[0]
        out.d = call.value.shape[-1]
        for i in range(b):
            _check_sequence(out, call, i, state["offset"] + i, ks, eps, seed, delta, with_theorem2)
            release_free_memory()  # else the heap grows with every sequence checked
        if progress is not None:
            progress(b)

    for lo in range(0, len(ids), batch_size):
        batch = torch.from_numpy(ids[lo : lo + batch_size])
        with torch.inference_mode(), capture(loaded.model, sink):
            loaded.model(input_ids=batch if device is None else batch.to(device))
        state["offset"] += len(batch)
    return out


def _check_sequence(
    out: RealCounts,
    call: AttentionCall,
    i: int,
    index: int,
    ks: list[int],
    eps: list[float],
    seed: int,
    delta: float,
    with_theorem2: bool,
) -> None:
    """Count every event on sequence ``i`` of a captured layer (its H matrices, float64 on
    the CPU), ``index`` its place in the run; everything it allocates is freed on return."""
    causal = bool(getattr(call.module, "is_causal", False))
    p = call.probs[i].detach().double().cpu()  # (H, n, n)
    v = call.value[i].detach().cpu()  # (H, n, d)
    svd = torch.linalg.svd(p)  # for the witness and the top singular vectors
    vectors = probe_vectors(p, v, svd[2], VECTORS, seeded_generator(21, seed, index, call.layer))
    trivial.add_theorem1(out.base, "real", p, vectors, eps, causal)
    q, key = call.query[i].detach().cpu(), call.key[i].detach().cpu()
    setup = theorem2_setup(q, key, v, p, call.scale) if with_theorem2 else None
    if setup is not None:
        trivial.add_theorem2(out.base, setup, eps, causal)
    for k in ks:
        gen = seeded_generator(22, seed, index, call.layer, k)
        for name, counts in theorem1_failures(p, vectors, k, eps, gen, svd).items():
            out.t1.setdefault((*name, k), []).append(counts)
        if setup is not None:
            out.t2[k].append(theorem2_failures(q, key, v, k, eps, gen, delta, setup))


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
    attention and on random vectors (the JL rows), with the trivial P~ beside every event.
    Options are checked by the caller (:func:`lowrank.families.verify.api.verify`); nothing
    is written here. The estimated peak memory is checked first
    (:func:`lowrank.families.verify.memory.check_memory`).

    Returns:
        ``(meta, arrays, records, k_needed)``: run.json (with ``baselines``), the verify.npz
        arrays (each [series, eps, k]: ``rate``, ``ci_low``, ``ci_high``, ``bound``,
        ``exact``, ``n_eff``, ``p_holm``, ``failures``, ``trials``, ``clusters``; with
        ``eps`` [E], ``ks`` [K], ``series`` [S], ``statement`` [S], and the trivial P~'s
        ``baselines`` [2], ``baseline_rate``, ``baseline_ci_low``, ``baseline_ci_high``
        [2, S, E]), one record per row of verify.csv, and the "k needed" table.
    """
    from tqdm.auto import tqdm

    n, loaded = config.seq_len, prep.loaded
    n_seq = len(prep.sequences.lengths)
    batch = min(config.batch_size, n_seq)  # what a forward pass really holds
    peak = check_memory(
        batch, loaded.num_heads, n, max(ks), synthetic_count, jl_trials, prep.device
    )
    total = n_seq * loaded.num_layers
    with tqdm(total=total, desc="real attention", unit="seq-layer", disable=not progress) as bar:
        real = measure_real(
            loaded,
            prep.sequences.input_ids,
            ks,
            eps,
            config.batch_size,
            seed,
            delta,
            with_theorem2,
            prep.device,
            bar.update,
        )
    d = real.d
    sizes = {kind: d if kind in ("values", "gaussian") else min(d, n) for kind in VECTORS}
    sizes["-"] = n  # Theorem 2: a matrix with its n query rows
    rows = _real_rows(real, eps, n, sizes, with_theorem2)
    base = dict(real.base)
    for beta in tqdm(inverse_temperatures, desc="synthetic", unit="beta", disable=not progress):
        rows += _synthetic_rows(beta, n, d, ks, eps, synthetic_count, seed, base)
        release_free_memory()
    for k in tqdm(ks, desc="JL lemma", unit="k", disable=not progress):
        rows += _jl_rows(n, k, eps, jl_trials, seed)
        release_free_memory()
    _sort(rows)
    tests = assign_verdicts(rows)
    trivial_rows = trivial.baseline_rows(base, eps, sizes)
    trivial.qualify(rows, trivial_rows)
    base_records = trivial.baseline_records(trivial_rows, rows, target)
    needed = _needed(rows, eps, n, d, target, base_records)
    records = [_record(r) for r in rows]
    meta = {
        **FORMAT.header(),
        "command": provenance["command"],
        "created": provenance["created"],
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": n_seq,
        "head_dim": d,
        "eps": eps,
        "k": ks,
        "inverse_temperatures": inverse_temperatures,
        "delta": delta,
        "target_delta": target,
        "verify_seed": seed,
        "seeds": SEEDS,
        "theta_constants": 1,
        "statements": STATEMENTS,
        "intervals": INTERVALS,
        "multiplicity": f"Holm over the {tests} rows with a promised, non-vacuous bound",
        "conditional_on": trivial.CONDITIONAL,
        "baseline_rule": trivial.RULE,
        "baselines": base_records,
        "estimated_peak_bytes": peak,
        "versions": provenance["versions"],
    }
    meta = json.loads(json.dumps(meta, default=json_value))
    records = json.loads(json.dumps(records))  # as verify.json reads back
    arrays = verify_arrays(records, eps, ks)
    arrays |= trivial.baseline_arrays(meta["baselines"], [str(s) for s in arrays["series"]], eps)
    return meta, arrays, records, json.loads(json.dumps(needed))


def _real_rows(
    real: RealCounts, eps: list[float], n: int, sizes: dict[str, int], with_theorem2: bool
) -> list[Row]:
    rows: list[Row] = []
    for (statement, vectors, k), chunks in real.t1.items():
        bound = (lambda e, k=k: theorem1_failure_bound(n, k, e)) if statement in PROMISED else None
        rows += _rows_from_counts(statement, "real", vectors, k, eps, chunks, sizes[vectors], bound)
    if with_theorem2:
        for k, chunks in real.t2.items():
            rows += _rows_from_counts("theorem2", "real", "-", k, eps, chunks, n, None)
    return rows


def _synthetic_rows(
    beta: float,
    n: int,
    d: int,
    ks: list[int],
    eps: list[float],
    count: int,
    seed: int,
    base: trivial.BaseCounts,
) -> list[Row]:
    """Theorem 1's statements on ``count`` synthetic matrices at inverse temperature
    ``beta`` (value columns as w), their trivial P~ counted into ``base``."""
    bits = int(np.float64(beta).view(np.uint64))  # every distinct beta its own stream
    p, v = synthetic_attention(n, d, beta, count, seeded_generator(23, seed, bits))
    source = f"synthetic beta={beta:g}"
    trivial.add_theorem1(base, source, p, {"values": v}, eps, causal=False)
    rows: list[Row] = []
    for k in ks:
        gen = seeded_generator(24, seed, bits, k)
        for (statement, vectors), c in theorem1_failures(p, {"values": v}, k, eps, gen).items():
            bound = (
                (lambda e, k=k: theorem1_failure_bound(n, k, e)) if statement in PROMISED else None
            )
            rows += _rows_from_counts(statement, source, vectors, k, eps, [c], d, bound)
    return rows


def _jl_rows(n: int, k: int, eps: list[float], trials: int, seed: int) -> list[Row]:
    """The JL lemma's rows at one k, a fresh R per trial, with their exact probabilities."""
    rows = []
    for statement, fails in jl_failures(n, k, eps, trials, seeded_generator(25, seed, k)).items():
        for i, e in enumerate(eps):
            if statement == "jl-inner":
                jl_bound, exact = jl_inner_failure_bound(e, k), None
            else:
                squared = statement == "jl-norm2"
                jl_bound, exact = jl_norm_failure_bound(e, k), jl_exact_failure(e, k, squared)
            rate = ClusteredRate.from_clusters(fails[:, i], np.ones(len(fails)))
            rows.append(Row(statement, "random", "-", e, k, rate, jl_bound, exact))
    return rows


def _sort(rows: list[Row]) -> None:
    """Statements in the order of :data:`STATEMENTS`, then source, vectors, eps and k."""
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


def series_of(row: Row) -> str:
    """The label of a row's series (all of its k): ``statement | source | vectors``."""
    return f"{row.statement} | {row.source} | {row.vectors}"


def _needed(
    rows: list[Row],
    eps: list[float],
    n: int,
    d: int,
    target: float,
    base_records: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Per series and eps: the smallest measured k whose rate (point, and certified: upper
    95% bound) is below ``target``, beside the k at which the statement's own bound reaches
    that same level, and which trivial P~ reach ``target`` too (``trivial_meets_target``;
    None for series without one). Statements without a failure bound get no theory k: the
    paper's k = 5 ln n / gap is for a failure probability o(1), not for ``target``."""
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
                    "trivial_meets_target": trivial.trivial_meeting(
                        base_records or [], series, e, target
                    ),
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


__all__ = ["run_verify", "verify_arrays", "verify_identity"]
