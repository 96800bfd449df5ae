"""``lowrank compare``: the command's workflow and its conclusions.

:mod:`lowrank.families.compare.collect` measures; here the winners per head and budget are picked,
the low-rank against sparse advantage is related to each head's entropy (Spearman's rho with a
bootstrap interval), Scatterbrain is set against its two parts, and the result is put together
(:class:`~lowrank.families.compare.result.CompareResult`; nothing is written here).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.compare.collect import (
    HEAD_STATS,
    PARITY_TOLERANCE,
    CompareSpec,
    measure,
)
from lowrank.families.compare.format import FORMAT
from lowrank.families.compare.methods import (
    ACCOUNTING,
    BASELINES,
    CAUSAL_OK,
    METRICS,
    budget_cost,
    scatterbrain_split,
)
from lowrank.families.compare.result import METRIC_KEY, METRIC_LABEL, CompareResult
from lowrank.inputs.config import InputConfig
from lowrank.maths.stats import rank_correlation

if TYPE_CHECKING:
    from lowrank.inputs.objects import DataInput, ModelInput
    from lowrank.runs.provenance import Provenance


# --- conclusions ---------------------------------------------------------------------------


def winners(table: np.ndarray, rows: tuple[str, ...], exclude: tuple[str, ...] = ()) -> np.ndarray:
    """Index (into ``rows``) of the family with the least error; baselines and ``exclude``
    (e.g. :data:`ORACLES`, for the families that need only Q and K) left out.

    Args:
        table: (F, K, L, H) mean errors, NaN where not applicable.

    Returns:
        (K, L, H) int, -1 where no family applies.
    """
    candidates = [i for i, r in enumerate(rows) if r not in BASELINES + exclude]
    if not candidates:
        return np.full(table.shape[1:], -1)
    sub = table[candidates]
    finite = np.isfinite(sub).any(axis=0)
    best = np.argmin(np.where(np.isfinite(sub), sub, np.inf), axis=0)
    return np.where(finite, np.asarray(candidates)[best], -1)


def findings(arrays: dict[str, np.ndarray], spec: CompareSpec) -> list[dict[str, Any]]:
    """Per budget: winner counts, sparse against low-rank and its relation to entropy, and
    Scatterbrain against the better of its two parts."""
    rows = spec.rows
    key = METRIC_KEY[spec.metric]
    table = arrays[f"{key}_mean"]  # (F, K, L, H)
    best = winners(table, rows)
    practical = winners(table, rows, spec.oracles)
    entropy = arrays["entropy_mean"].ravel()
    index = {r: i for i, r in enumerate(rows)}
    out = []
    for ki, b in enumerate(spec.budgets):
        entry: dict[str, Any] = {
            "budget": b,
            "metric": key,
            "heads": int(best[ki].size),
            "winners": _counts(best[ki], rows),
            "winners_from_q_k": _counts(practical[ki], rows),
        }
        if "lowrank-oracle" in index and "sparse-oracle" in index:
            low = table[index["lowrank-oracle"], ki].ravel()
            sparse = table[index["sparse-oracle"], ki].ravel()
            if np.isfinite(low).any():
                with np.errstate(divide="ignore", invalid="ignore"):
                    advantage = np.log(sparse / low)  # > 0: low-rank is better
                entry["sparse_vs_lowrank"] = {
                    "sparse": int((sparse < low).sum()),
                    "lowrank": int((low < sparse).sum()),
                    "entropy_spearman": rank_correlation(entropy, advantage, seed=spec.seed),
                }
        sb = _scatterbrain_parts(spec, index)
        if sb is not None:
            parts = np.fmin(table[index[sb[0]], ki], table[index[sb[1]], ki]).ravel()
            mine = table[index["scatterbrain"], ki].ravel()
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = mine / parts
            if np.isfinite(ratio).any():
                entry["scatterbrain"] = {
                    "parts": list(sb),
                    "split": list(scatterbrain_split(b, spec.split)),
                    "beats_both": int((ratio < 1).sum()),
                    "median_ratio": float(np.nanmedian(ratio)),
                }
        out.append(entry)
    return out


def _counts(best: np.ndarray, rows: tuple[str, ...]) -> dict[str, int]:
    counts = {rows[i]: int((best == i).sum()) for i in np.unique(best) if i >= 0}
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _scatterbrain_parts(spec: CompareSpec, index: dict[str, int]) -> tuple[str, str] | None:
    sparse = "lsh" if spec.support == "lsh" else "sparse-oracle-renorm"
    if all(name in index for name in ("scatterbrain", sparse, "performer")):
        return sparse, "performer"
    return None


def finding_text(entry: dict[str, Any], num_sequences: int) -> str:
    """One paragraph stating the finding at one budget."""
    b, heads = entry["budget"], entry["heads"]
    parts = [f"At b = {b}, on {METRIC_LABEL[entry['metric']]} (mean over {num_sequences} seq.):"]
    versus = entry.get("sparse_vs_lowrank")
    if versus is not None:
        parts.append(
            f"the sparse oracle beats the low-rank oracle on {versus['sparse']} of {heads} "
            f"heads, low-rank wins on {versus['lowrank']};"
        )
        c = versus["entropy_spearman"]
        if not math.isfinite(c["rho"]):
            parts.append("its relation to entropy is undefined (too few heads).")
        elif c["low"] <= 0 <= c["high"]:
            parts.append(
                "the advantage of low-rank over sparse, log(err sparse / err low-rank), shows "
                f"no clear relationship with entropy (Spearman rho = {c['rho']:.2f}, 95% "
                f"bootstrap CI {c['low']:.2f} to {c['high']:.2f} contains 0)."
            )
        else:
            trend = "rises" if c["rho"] > 0 else "falls"
            parts.append(
                f"the advantage of low-rank over sparse, log(err sparse / err low-rank), "
                f"{trend} with entropy (Spearman rho = {c['rho']:.2f}, 95% bootstrap CI "
                f"{c['low']:.2f} to {c['high']:.2f}, over {c['points']} heads)."
            )
    ranked = ", ".join(f"{name} {count}" for name, count in entry["winners"].items())
    parts.append(f"Best family per head: {ranked}.")
    if entry["winners_from_q_k"]:
        ranked = ", ".join(f"{n} {c}" for n, c in entry["winners_from_q_k"].items())
        parts.append(f"Among the families that need only Q and K: {ranked}.")
    sb = entry.get("scatterbrain")
    if sb is not None:
        s, m = sb["split"]
        kind = "top-score" if sb["parts"][0].startswith("sparse") else sb["parts"][0]
        verdict = "beats" if sb["median_ratio"] < 1 else "does not beat"
        parts.append(
            f"Scatterbrain ({s} {kind} keys + {m} features) {verdict} the better of "
            f"{sb['parts'][0]} and {sb['parts'][1]} at the same budget: better on "
            f"{sb['beats_both']} of {heads} heads, median error ratio {sb['median_ratio']:.2f}."
        )
    return " ".join(parts)


# --- the command ---------------------------------------------------------------------------


def compare_identity(config: InputConfig, spec: CompareSpec) -> dict[str, Any]:
    """``identity`` of a compare run.json (before any in-memory inputs add theirs)."""
    return config.identity() | {"compare": asdict(spec)}


def run_compare(
    model: ModelInput,
    tokenizer: Any,
    data: DataInput,
    config: InputConfig,
    spec: CompareSpec,
    provenance: Provenance,
    workers: int | None = None,
    progress: bool = True,
) -> CompareResult:
    """``lowrank compare`` in memory: measure every family on the prepared sequences (a model
    object is left as found) and conclude; nothing is written or printed."""
    from tqdm.auto import tqdm

    from lowrank.inputs.objects import memory_identity, prepared_inputs

    start = time.perf_counter()
    with prepared_inputs(model, tokenizer, data, config) as prep:
        seqs = prep.sequences
        n_seq, n = len(seqs.lengths), config.seq_len
        with tqdm(total=n_seq, unit="seq", desc="compare", disable=not progress) as bar:
            sink = measure(
                prep.loaded, seqs, spec, config.batch_size, prep.device, bar.update, workers
            )
    identity = compare_identity(config, spec) | memory_identity(model, data, prep)
    arrays = sink.arrays()
    table = arrays[f"{METRIC_KEY[spec.metric]}_mean"]
    arrays |= {
        "families": np.array(spec.rows),
        "budgets": np.array(spec.budgets),
        "metrics": np.array(METRICS),
        "head_stats": np.array(HEAD_STATS),
        "winner": winners(table, spec.rows),
        "winner_from_q_k": winners(table, spec.rows, spec.oracles),
        "applicable": np.array([not sink.causal or r in CAUSAL_OK for r in spec.rows]),
        "input_ids": seqs.input_ids,
    }
    found = findings(arrays, spec)
    focus = spec.budgets.index(spec.focus_budget)
    text = finding_text(found[focus], n_seq)
    meta: dict[str, Any] = {
        **FORMAT.header(),
        "command": provenance.command,
        "created": provenance.created,
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": n_seq,
        "compare": asdict(spec),
        "families": list(spec.rows),
        "oracles": list(spec.oracles),
        "causal": bool(sink.causal),
        "not_applicable": [r for r in spec.rows if sink.causal and r not in CAUSAL_OK],
        "winner_metric": METRIC_KEY[spec.metric],
        "focus_budget": spec.focus_budget,
        "budget_accounting": {
            r: {
                "rule": ACCOUNTING[r],
                "per_budget": [
                    budget_cost(r, n, b, spec.rounds, spec.globals_, spec.split)
                    | (
                        {"reads": "all scores Q K^T"}
                        if r in spec.oracles and r == "scatterbrain"
                        else {}
                    )
                    for b in spec.budgets
                ],
            }
            for r in spec.rows
        },
        "parity_tolerance": PARITY_TOLERANCE,
        "findings": found,
        "finding": text,
        "versions": provenance.versions,
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    return CompareResult(meta, arrays)
