"""``lowrank project``: projection errors against k on captured attention.

:func:`run_project` measures (nothing is written or printed); :func:`project_report` is the
text the CLI prints, rebuilt from run.json and projection.npz alone, so a saved run reports
exactly as the fresh one did.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.project.approximation import (
    METRICS,
    THEOREM1_REFERENCES,
    THEOREM2_REFERENCES,
    ProjectionSpec,
    summarize,
)
from lowrank.families.project.format import FORMAT
from lowrank.maths.intervals import MIN_SEQUENCES, MeanInterval, mean_interval
from lowrank.maths.sketches import BASELINES, JL_METHODS
from lowrank.maths.stats import holm
from lowrank.runs.writing import json_value

if TYPE_CHECKING:
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.models import LoadedModel
    from lowrank.inputs.prepared import Prepared


def run_project(
    prep: Prepared,
    config: InputConfig,
    spec: ProjectionSpec,
    sharings: tuple[str, ...],
    model_effect: bool,
    heatmap_k: int | None,
    identity: dict[str, Any],
    provenance: dict[str, Any],
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Measure Theorem 1/2 errors (and the model-level effect) on prepared sequences.

    Options are checked by the caller (:func:`lowrank.families.project.api.project`); nothing is
    written here. ``identity`` is what run.json records as the run's identity (see
    :func:`project_identity`); ``provenance`` holds its ``command``, ``created`` and
    ``versions``, and ``start``, the ``time.perf_counter()`` the elapsed time counts from.

    Returns:
        ``(meta, arrays)``: the run.json dict and the projection.npz arrays. ``arrays`` holds
        ``{kind}_{row}[_{metric}]_samples`` of shape [K, layers, heads, sequences x draws],
        their ``_mean``, ``_median`` and ``_p95`` over the last axis ([K, layers, heads]),
        ``ks`` [K], ``methods``, ``estimators``, ``metrics``, ``rows_theorem1``,
        ``rows_theorem2`` and ``input_ids`` [N, n].
    """
    from tqdm.auto import tqdm

    from lowrank.families.project.approximation import mask_tokens, measure
    from lowrank.families.project.approximation import model_effect as effect

    start = provenance.get("start", time.perf_counter())
    loaded, seqs = prep.loaded, prep.sequences
    n_seq = len(seqs.lengths)
    with tqdm(total=n_seq, unit="seq", desc="project", disable=not progress) as bar:
        samples = measure(loaded, seqs, spec, config.batch_size, prep.device, bar.update)
    arrays: dict[str, np.ndarray] = {
        "ks": np.array(spec.ks),
        "methods": np.array(spec.methods),
        "estimators": np.array(spec.estimators),
        "metrics": np.array(METRICS),
        "rows_theorem1": np.array(spec.rows("theorem1")),
        "rows_theorem2": np.array(spec.rows("theorem2")),
        "input_ids": seqs.input_ids,
    }
    for key, value in samples.items():
        arrays[f"{key}_samples"] = value
        for stat, table in summarize(value.astype(np.float64)).items():
            arrays[f"{key}_{stat}"] = table
    tests = baseline_tests(samples, spec, n_seq)
    effects: list[dict[str, Any]] = []
    mode = None
    if model_effect:
        model, mlm, mode = loaded.model, None, "hidden states"
        mlm_model = _masked_lm(loaded)
        tok = loaded.tokenizer
        if mlm_model is not None and tok is not None and tok.mask_token_id is not None:
            model, mode = mlm_model, "masked-LM loss and hidden states"
            special = set(tok.all_special_ids)
            mlm = mask_tokens(seqs.input_ids, tok.mask_token_id, special, seed=spec.seed)
        runs = len(BASELINES) + sum(
            len(spec.ks) * (len(sharings) if m in JL_METHODS else 1)
            for m in spec.methods
            if m != "svd"
        )
        with tqdm(total=runs, unit="model", desc="model effect", disable=not progress) as bar:
            results = effect(
                model, seqs, spec, sharings, config.batch_size, prep.device, mlm, bar.update
            )
        effects = [asdict(r) for r in results]
        effect_verdicts(effects)
    meta: dict[str, Any] = {
        **FORMAT.header(),
        "command": provenance["command"],
        "created": provenance["created"],
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": n_seq,
        "projection": asdict(spec),
        "sharing": list(sharings),
        "heatmap_k": heatmap_k or spec.ks[len(spec.ks) // 2],
        "estimators": {
            "paper": "P M with M = R^T R (JL; E[R^T R] = I) or n E^T E / tr(E^T E) (pooling)",
            "projector": "P E^+ E, the orthogonal projector onto the row space of E",
        },
        "intervals": INTERVALS,
        "baseline_tests": tests,
        "model_effect": {"mode": mode, "results": effects} if model_effect else None,
        "versions": provenance["versions"],
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    return json_ready(meta), arrays


def project_identity(
    config: InputConfig, spec: ProjectionSpec, sharings: tuple[str, ...]
) -> dict[str, Any]:
    """The fields that define a project run's numbers, as stored in run.json (JSON types,
    so a rerun of the same configuration compares equal to the stored one)."""
    identity = config.identity() | {"projection": asdict(spec), "sharing": list(sharings)}
    return json_ready(identity)


def json_ready(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as it reads back from JSON: tuples become lists, paths strings."""
    return json.loads(json.dumps(value, default=json_value))


def _masked_lm(loaded: LoadedModel) -> Any | None:
    """The checkpoint's masked-LM model, when it has a trained head (None for in-memory
    models that are not one, and for checkpoints without one)."""
    from lowrank.inputs.models import load_masked_lm

    model = loaded.model
    if type(model).__name__.endswith("ForMaskedLM"):
        return model
    if loaded.source.kind not in ("package", "local", "hub"):
        return None  # an in-memory model without its head: nothing to load it from
    return load_masked_lm(loaded)


INTERVALS = (
    "95% intervals over sequences: each sequence is one cluster (its layers, heads and draws "
    "are averaged first, as they share the text); Student-t on the scale that maps the "
    "quantity's range onto the line (logit for the scale-free error in [0, 1] and the cosine "
    "in [-1, 1], log for the relative error in [0, inf)), mapped back, so both ends stay in "
    f"the range; none below {MIN_SEQUENCES} sequences. Paired differences against the "
    "baselines use the same clusters (plain Student-t), two-sided, Holm-corrected over every "
    "test of the run"
)
RANGES: dict[str, tuple[float, float]] = {
    "error": (0.0, math.inf),
    "scale-free": (0.0, 1.0),
    "cosine": (-1.0, 1.0),
}
"""The range of each metric: relative errors are ratios of norms, the scale-free error is
sqrt(1 - cos^2) (within [0, 1] once the best rescale is taken), cosines lie in [-1, 1]."""


def cluster_interval(values: np.ndarray, metric: str) -> MeanInterval:
    """The mean of per-sequence ``values`` of ``metric`` and its 95% interval inside the
    metric's range (:data:`RANGES`, :func:`lowrank.maths.intervals.mean_interval`).

    Sequences whose value is NaN (a row that does not apply) are left out; values a float32
    rounding puts just outside the range are clipped to it. No finite value: NaN mean.
    """
    lo, hi = RANGES[metric]
    x = np.asarray(values, dtype=np.float64)
    x = np.clip(x[np.isfinite(x)], lo, hi)
    if x.size == 0:
        return MeanInterval(math.nan, math.nan, math.nan, 0, "", "no finite value")
    return mean_interval(x, lo, hi)


KIND_TITLE = {
    "theorem1": (
        "Theorem 1, linear estimators P~ = P M of P on the value columns w: "
        "||P~w - Pw||_2 / ||Pw||_2 per column, averaged over columns"
    ),
    "theorem2": (
        "Theorem 2, head output O = PV against the Linformer head softmax(Q (E K)^T / sqrt(d)) "
        "F V: ||O~ - O||_F / ||O||_F (Frobenius over the head's n x d output)"
    ),
}
METRIC_TITLE = {
    "error": "raw relative error",
    "scale-free": (
        "scale-free error: min over alpha of ||alpha O~ - O|| / ||O|| (Theorem 1: one alpha per "
        "column w; Theorem 2: one per head output; lower is better)"
    ),
    "cosine": "cosine similarity with the exact output (per column w / per head output)",
}
ROW_NOTE = {
    "svd": "best rank-k of P (Eckart-Young: a floor for ||P~ - P||, not for the output)",
    "output-floor": "output floor ||PV - (PV)_k|| / ||PV|| (no rank-k output beats it)",
    "zero": "baseline: zero attention",
    "uniform": "baseline: uniform attention (rows of P = 1/n)",
}


def sequence_clusters(samples: np.ndarray, n_seq: int) -> np.ndarray:
    """(K, N) per-sequence means of (K, L, H, N * draws) samples: one value per cluster."""
    k, layers, heads, s = samples.shape
    per = samples.astype(np.float64).reshape(k, layers, heads, n_seq, s // n_seq)
    return np.nanmean(per, axis=(1, 2, 4))


def _paired_p(diff: np.ndarray) -> float:
    """Two-sided one-sample t-test p-value that the mean of ``diff`` is 0."""
    from scipy import stats

    if diff.size < 2 or not np.isfinite(diff).all():
        return 1.0
    if diff.std() == 0:
        return 1.0 if diff.mean() == 0 else 0.0
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def baseline_tests(
    samples: dict[str, np.ndarray], spec: ProjectionSpec, n_seq: int, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Every method row against both trivial baselines, per kind, k and metric (raw and
    scale-free error), paired over sequences, Holm-corrected over all tests.

    ``diff`` is signed so that positive favours the method (baseline error - method error).
    A cell's verdict: ``beats both`` when it is significantly better than zero and uniform
    attention, ``loses`` when significantly worse than either, ``inconclusive`` otherwise.
    """
    records: list[dict[str, Any]] = []
    for kind in ("theorem1", "theorem2"):
        refs = THEOREM1_REFERENCES if kind == "theorem1" else THEOREM2_REFERENCES
        for row in spec.rows(kind):
            if row in refs:
                continue
            for metric in ("error", "scale-free"):
                suffix = "" if metric == "error" else f"_{metric}"
                mine = sequence_clusters(samples[f"{kind}_{row}{suffix}"], n_seq)
                for baseline in BASELINES:
                    base = sequence_clusters(samples[f"{kind}_{baseline}{suffix}"], n_seq)
                    for ki, k in enumerate(spec.ks):
                        diff = base[ki] - mine[ki]
                        iv = mean_interval(diff) if np.isfinite(diff).all() else None
                        records.append(
                            {
                                "kind": kind,
                                "row": row,
                                "metric": metric,
                                "k": int(k),
                                "baseline": baseline,
                                "mean_diff": float(np.mean(diff)),
                                "ci": _ends(iv),
                                "p": _paired_p(diff),
                            }
                        )
    for rec, adj in zip(records, holm([float(r["p"]) for r in records]), strict=True):
        rec["p_holm"] = adj
        rec["significant"] = adj < alpha
    return records


def _ends(iv: MeanInterval | None) -> list[float | None]:
    """[low, high] of an interval for run.json, None where there is none."""
    if iv is None or not math.isfinite(iv.low):
        return [None, None]
    return [iv.low, iv.high]


def cell_verdicts(tests: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], str]:
    """(kind, row, metric, k) -> '+' (beats both baselines), '-' (loses to one), '~'."""
    cells: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for t in tests:
        cells.setdefault((t["kind"], t["row"], t["metric"], t["k"]), []).append(t)
    out = {}
    for key, pair in cells.items():
        if any(t["significant"] and t["mean_diff"] < 0 for t in pair):
            out[key] = "-"
        elif all(t["significant"] and t["mean_diff"] > 0 for t in pair):
            out[key] = "+"
        else:
            out[key] = "~"
    return out


def effect_verdicts(effects: list[dict[str, Any]], alpha: float = 0.05) -> None:
    """Add ``verdict`` to every projected configuration: its per-sequence cosine and
    scale-free error against both baselines', paired over sequences, Holm over all tests.

    ``beats both`` / ``loses`` / ``inconclusive`` as in :func:`cell_verdicts`; a
    configuration loses when either metric is significantly worse than either baseline.
    """
    baselines = {e["method"]: e for e in effects if e["k"] is None}
    tests: list[tuple[dict[str, Any], float, float]] = []
    for e in effects:
        if e["k"] is None:
            continue
        for base in baselines.values():
            for metric, sign in (("cosine", 1.0), ("scale_free", -1.0)):
                diff = sign * (
                    np.array(e["per_sequence"][metric]) - np.array(base["per_sequence"][metric])
                )
                tests.append((e, float(diff.mean()), _paired_p(diff)))
    adjusted = holm([p for _, _, p in tests])
    results: dict[int, list[tuple[float, float]]] = {}
    for (e, diff, _), p in zip(tests, adjusted, strict=True):
        results.setdefault(id(e), []).append((diff, p))
    for e in effects:
        if e["k"] is None:
            e["verdict"] = "baseline"
            continue
        pairs = results[id(e)]
        if any(p < alpha and d < 0 for d, p in pairs):
            e["verdict"] = "loses"
        elif all(p < alpha and d > 0 for d, p in pairs):
            e["verdict"] = "beats both"
        else:
            e["verdict"] = "inconclusive"
    for e in effects:
        e["verdict_tests"] = len(tests)


def project_report(
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    path: Path | None = None,
    figures: list[Path] | None = None,
) -> str:
    """The text ``lowrank project`` prints: per kind, metric, row and k the mean over
    sequences with its 95% interval inside the metric's range (cluster = sequence;
    :func:`cluster_interval`; the mean alone below 3 sequences, as the header says), the
    verdicts against the trivial baselines, the row notes, the model-level effect, then the
    run folder and the figures when given. Runs of earlier formats report their intervals
    recomputed from their samples."""
    ks = [int(k) for k in arrays["ks"]]
    n_seq = int(meta["num_sequences"])
    tests = meta.get("baseline_tests") or []
    effects = (meta.get("model_effect") or {}).get("results") or []

    def rows(kind: str) -> list[str]:
        key = f"rows_{kind}"
        return [str(r) for r in arrays[key if key in arrays else "methods"]]

    lines: list[str] = []
    echo = lines.append
    width = 24 if n_seq >= MIN_SEQUENCES else 10
    header = "  " + f"{'row':<22}" + "".join(f"{'k=' + str(k):>{width}}" for k in ks)
    verdicts = cell_verdicts(tests)
    for kind in ("theorem1", "theorem2"):
        echo(f"\n{KIND_TITLE[kind]}")
        if n_seq >= MIN_SEQUENCES:
            echo(
                f"  mean over sequences, draws, layers, heads [95% interval over {n_seq} "
                "sequences, cluster = sequence, inside the quantity's range]"
            )
        else:
            echo(
                f"  mean over sequences, draws, layers, heads (N = {n_seq}: too few sequences "
                f"for an interval; needs {MIN_SEQUENCES})"
            )
        for metric in METRICS:
            suffix = "" if metric == "error" else f"_{metric}"
            echo(f"  -- {METRIC_TITLE[metric]}")
            echo(header)
            for row in rows(kind):
                key = f"{kind}_{row}{suffix}_samples"
                if key not in arrays:
                    continue  # format_version 1 runs kept no samples of this metric
                clusters = sequence_clusters(arrays[key], n_seq)
                cells = [_cell(cluster_interval(clusters[ki], metric)) for ki in range(len(ks))]
                echo(f"  {row:<22}" + "".join(f"{c:>{width}}" for c in cells))
        echo(
            "  -- against the trivial baselines (raw/scale-free; + beats zero and uniform "
            "attention, - loses to one, ~ inconclusive; paired over sequences, Holm over "
            f"{len(tests)} tests)"
        )
        echo(header)
        for row in rows(kind):
            if (kind, row, "error", ks[0]) not in verdicts:
                continue
            marks = [
                f"{verdicts[(kind, row, 'error', k)]}/{verdicts[(kind, row, 'scale-free', k)]}"
                for k in ks
            ]
            echo(f"  {row:<22}" + "".join(f"{m:>16}" for m in marks))
    notes = [f"{r}: {ROW_NOTE[r]}" for r in ROW_NOTE if r in [*rows("theorem2"), "svd"]]
    notes.append(
        "method[paper] = P R^T R (Theorem 1's construction; n E^T E / tr(E^T E) for pooling), "
        "method[projector] = P E^+ E; both see the same draw of R"
    )
    echo("\nrows: " + "\n      ".join(notes))
    if effects:
        lines += _effect_lines(effects)
    if path is not None:
        echo(f"run folder: {path}  ({path / 'run.json'}, {path / FORMAT.npz})")
    lines += [f"figure: {figure}" for figure in figures or []]
    return "\n".join(lines)


def _cell(iv: MeanInterval) -> str:
    """``0.912 [0.874, 0.941]``, or the mean alone where there is no interval."""
    if not math.isfinite(iv.mean):
        return "n/a"
    if not math.isfinite(iv.low):
        return f"{iv.mean:.3f}"
    return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def _ci_text(ci: list[float | None] | tuple[float | None, ...], digits: int = 4) -> str:
    """``[0.1234, 0.2345]`` or ``(no interval)``."""
    lo, hi = ci
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "(no interval)"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _effect_lines(effects: list[dict[str, Any]]) -> list[str]:
    """The model-effect table of the report, with the verdicts grouped."""
    n_seq = len(effects[0]["per_sequence"]["cosine"])
    interval = (
        "[95% interval over sequences, inside the range]"
        if n_seq >= MIN_SEQUENCES
        else f"(N = {n_seq}: too few sequences for an interval; needs {MIN_SEQUENCES})"
    )
    lines = [
        "\nmodel effect: every layer's attention replaced; final hidden states against the "
        f"exact model (mean over sequences {interval}); one draw of E, F per "
        "configuration (--proj-seed), so the intervals are conditional on that draw",
        f"  {'method':<12} {'sharing':<19} {'k':>5}  {'relative error':<26}"
        f"{'scale-free':>11}  {'cosine':<26} {'vs baselines':<12}",
    ]
    for e in effects:
        loss = ""
        if e["mlm_loss"] is not None:
            loss = f"  MLM loss {e['mlm_loss']:.3f} (exact {e['mlm_loss_exact']:.3f})"
        k = "-" if e["k"] is None else str(e["k"])
        rel = f"{e['relative_error']:.4f} {_ci_text(e['relative_error_ci'])}"
        cos = f"{e['cosine']:.4f} {_ci_text(e['cosine_ci'])}"
        lines.append(
            f"  {e['method']:<12} {e['sharing']:<19} {k:>5}  {rel:<26}"
            f"{e['scale_free']:>11.4f}  {cos:<26} {e['verdict']:<12}{loss}"
        )
    lines.append(
        "  vs baselines: each configuration against zero and uniform attention on cosine "
        "and scale-free error, paired over sequences, two-sided t, Holm over "
        f"{effects[0]['verdict_tests']} tests"
    )
    for verdict in ("beats both", "loses", "inconclusive"):
        groups: dict[str, list[str]] = {}
        for e in effects:
            if e.get("verdict") == verdict:
                groups.setdefault(f"{e['method']}/{e['sharing']}", []).append(str(e["k"]))
        names = [f"{name} (k = {','.join(kk)})" for name, kk in groups.items()]
        lines.append(f"    {verdict}: " + ("; ".join(names) or "none"))
    return lines
