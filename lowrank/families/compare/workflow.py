"""``lowrank compare``: the command's workflow and its conclusions.

:mod:`lowrank.families.compare.collect` measures; here the winners per head and budget are
picked, the sparse oracle is set against the low-rank oracle on both metrics
(:mod:`lowrank.families.compare.verdicts`: separability by entropy and the rank correlation,
intervals over sequences and layers, comparisons at equal cost), Scatterbrain against its two
parts, and the result is put together (:class:`~lowrank.families.compare.result.CompareResult`;
nothing is written here).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.compare.collect import HEAD_STATS, CompareCollector, measure
from lowrank.families.compare.finding import finding_record
from lowrank.families.compare.format import FORMAT
from lowrank.families.compare.methods import (
    ACCOUNTING,
    BASELINES,
    CAUSAL_OK,
    METRICS,
    budget_cost,
    scatterbrain_split,
)
from lowrank.families.compare.result import METRIC_KEY, CompareResult
from lowrank.families.compare.spec import CompareSpec
from lowrank.families.compare.verdicts import (
    EQUAL_COST_RULE,
    ORACLES_OPTIMAL_FOR,
    PER_SEQUENCE_METRICS,
    equal_cost,
    sparse_vs_lowrank,
)
from lowrank.inputs.config import InputConfig
from lowrank.maths.budgets import cost

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


def findings(
    arrays: dict[str, np.ndarray], spec: CompareSpec, focus_only_intervals: bool = True
) -> list[dict[str, Any]]:
    """Per budget: winner counts (at equal b), the sparse oracle against the low-rank oracle on
    both metrics (:func:`~lowrank.families.compare.verdicts.sparse_vs_lowrank`: separability
    by entropy and the rank correlation, with cluster-bootstrap intervals; per-layer
    intervals at the focus budget only, unless ``focus_only_intervals`` is False), and
    Scatterbrain against the better of its two parts."""
    rows = spec.rows
    key = METRIC_KEY[spec.metric]
    table = arrays[f"{key}_mean"]  # (F, K, L, H)
    best = winners(table, rows)
    practical = winners(table, rows, spec.oracles)
    index = {r: i for i, r in enumerate(rows)}
    out = []
    for ki, b in enumerate(spec.budgets):
        entry: dict[str, Any] = {
            "budget": b,
            "metric": key,
            "heads": int(best[ki].size),
            "at": "equal b (costs differ by up to 2x; see equal_cost)",
            "winners": _counts(best[ki], rows),
            "winners_from_q_k": _counts(practical[ki], rows),
        }
        per_layer = b == spec.focus_budget or not focus_only_intervals
        versus = {
            metric: record
            for metric in PER_SEQUENCE_METRICS
            if (record := sparse_vs_lowrank(arrays, list(rows), ki, metric, spec.seed, per_layer))
            is not None
        }
        if versus:
            entry["sparse_vs_lowrank"] = versus
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
        "oracles_optimal_for": ORACLES_OPTIMAL_FOR,
        "causal": bool(sink.causal),
        "not_applicable": [r for r in spec.rows if sink.causal and r not in CAUSAL_OK],
        "winner_metric": METRIC_KEY[spec.metric],
        "focus_budget": spec.focus_budget,
        "budget_accounting": accounting(spec, n),
        "equal_cost_rule": EQUAL_COST_RULE,
        "output_floor_rule": OUTPUT_FLOOR_RULE,
        "parity_tolerance": parity_record(sink),
    }
    meta |= conclusions(arrays, spec, meta)
    meta |= {
        "versions": provenance.versions,
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    return CompareResult(meta, arrays)


def accounting(spec: CompareSpec, n: int) -> dict[str, Any]:
    """run.json's ``budget_accounting``: per family its rule and, per budget, its parameter,
    stored numbers and scores as compare counts them (values only), and under
    :data:`lowrank.maths.budgets.RULE` (``stored_with_indices``, ``scores_computed``)."""
    out: dict[str, Any] = {
        r: {
            "rule": ACCOUNTING[r],
            "per_budget": [
                budget_cost(r, n, b, spec.rounds, spec.globals_, spec.split)
                | (
                    {"reads": "all scores Q K^T"}
                    if r in spec.oracles and r == "scatterbrain"
                    else {}
                )
                | _counted(r, n, b, spec)
                for b in spec.budgets
            ],
        }
        for r in spec.rows
    }
    return out


OUTPUT_FLOOR_RULE = (
    "min over P~ of rank <= b of ||P~V - PV||_F / ||PV||_F: the tail of PV's singular values "
    "(Eckart-Young), 0 once b >= rank(PV) <= d; a floor for every family whose P~ has rank "
    "<= b (lowrank-oracle, linformer, performer, nystrom), not for the sparse and windowed ones"
)


def _counted(family: str, n: int, b: int, spec: CompareSpec) -> dict[str, int]:
    c = cost(family, n, b, True, spec.rounds, spec.globals_, spec.split)
    return {"stored_with_indices": c.stored, "scores_computed": c.scores}


def parity_record(sink: CompareCollector) -> dict[str, Any] | float:
    """run.json's ``parity_tolerance``: the allowed and the largest measured gap between the
    captured P and softmax(Q K^T / sqrt(d)) rebuilt in float64, and the captured dtype."""
    return {"allowed": sink.tolerance, "measured": sink.gap, "dtype": sink.dtype}


def conclusions(
    arrays: dict[str, np.ndarray], spec: CompareSpec, meta: dict[str, Any]
) -> dict[str, Any]:
    """run.json's ``findings`` (per budget), ``equal_cost`` and the ``finding`` record at the
    focus budget (its text is what the command prints)."""
    found = findings(arrays, spec)
    equal = equal_cost(arrays, list(spec.rows), int(meta["seq_len"]), list(spec.budgets))
    focus = spec.budgets.index(spec.focus_budget)
    floor = arrays["output_floor"][focus]
    median = float(np.nanmedian(floor)) if np.isfinite(floor).any() else None
    shape = arrays["entropy_per_sequence"].shape
    record = finding_record(found[focus], equal, meta, shape, median)
    return {"findings": found, "equal_cost": equal, "finding": record}
