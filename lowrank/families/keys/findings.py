"""What a keys run finds, read from its arrays alone (so a saved run reports the same).

Each function returns plain numbers with their interval; :func:`report_lines` words them
beside the anchors: Loki (Singhania et al. 2024: about 80 of 128 key dimensions for 90% of the
variance post-RoPE at 7B, 62% of d), ShadowKV (Sun et al. 2024: the pre-RoPE key cache of
Llama-3.1-8B, n x 1024, has energy rank about 160) and the logits-against-weights gap.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from lowrank.families.keys.names import TOPK_METRICS, per_sequence_mean
from lowrank.maths.stats import t_interval
from lowrank.runs.labels import corpus_name

LOKI_POST_SHARE = 0.62  # ~80 of 128 dimensions, post-RoPE (Loki, Fig. 2)
SHADOWKV = (160, 1024)  # pre-RoPE whole-layer energy rank of Llama-3.1-8B (ShadowKV, Fig. 2)
LAYER_KINDS = ("key_pre", "key_post", "value")


def pca_numbers(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean PCA rank over every (layer, KV head), with its bootstrap interval, per tensor;
    and per layer the mean over KV heads of pre- and post-RoPE key ranks."""
    out: dict[str, Any] = {}
    for name in ("key_rank90_pre", "key_rank90_post", "value_rank90"):
        out[name] = _mean_with(arrays, name)
    for name in ("query_rank90_pre", "query_rank90_post"):
        out[name] = _mean_with(arrays, name)
    for name in ("key_rank90_pre", "key_rank90_post"):
        cal = arrays.get(f"calibration_{name}")
        out[f"calibration_{name}"] = None if cal is None else float(cal.mean())
    out["layers"] = [
        {
            "layer": i + 1,
            **{
                side: (
                    float(arrays[f"key_rank90_{side}"][i].mean()),
                    float(arrays[f"key_rank90_{side}_layer_low"][i]),
                    float(arrays[f"key_rank90_{side}_layer_high"][i]),
                )
                for side in ("pre", "post")
            },
        }
        for i in range(arrays["key_rank90_pre"].shape[0])
    ]
    return out


def _mean_with(arrays: dict[str, np.ndarray], name: str) -> tuple[float, float, float]:
    return (
        float(arrays[name].mean()),
        float(arrays[f"{name}_all_low"]),
        float(arrays[f"{name}_all_high"]),
    )


def layer_numbers(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """ShadowKV's view: per kind, the mean over sequences of each layer's energy rank, its
    median over layers and the range over layers."""
    ranks = arrays["layer_rank90_energy"]  # (N, 3, L)
    per_layer = ranks.mean(axis=0)  # (3, L)
    return {
        kind: {
            "median": float(np.median(per_layer[i])),
            "min": float(per_layer[i].min()),
            "max": float(per_layer[i].max()),
            "per_layer": per_layer[i].tolist(),
        }
        for i, kind in enumerate(LAYER_KINDS)
    }


def logit_numbers(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per head means over sequences, summarised by the median and range over heads."""
    out: dict[str, Any] = {}
    for name in ("logits_pre_rank90_energy", "logits_post_rank90_energy", "probs_rank90_nuclear"):
        per_head = np.nanmean(arrays[name], axis=0) if np.isfinite(arrays[name]).any() else None
        out[name] = None if per_head is None else _spread(per_head)
    weights = arrays.get("weights_rank90_energy")
    out["weights_rank90_energy"] = None if weights is None else _spread(weights)
    return out


def _spread(values: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def topk_numbers(arrays: dict[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    """Per basis, the mean over sequences of each sequence's mean over layers and heads
    (S, R, K) with the 95% t-interval over sequences (``low``, ``high``); ``gap``: the same
    of the paired difference basis 1 - basis 0 (evaluated minus calibrated basis)."""
    bases = len(arrays["topk_bases"])
    values = np.stack([per_sequence_mean(arrays, s, metric) for s in range(bases)], axis=1)
    out = {"mean": values.mean(axis=0)}  # (S, R, K)
    out["low"], out["high"] = _t_bounds(values)
    if bases > 1:
        gap = values[:, 1] - values[:, 0]
        out["gap"] = gap.mean(axis=0)
        out["gap_low"], out["gap_high"] = _t_bounds(gap)
    return out


def _t_bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise 95% t-interval over the first axis (sequences)."""
    flat = values.reshape(values.shape[0], -1)
    bounds = np.array([t_interval(flat[:, j]) for j in range(flat.shape[1])])
    shape = values.shape[1:]
    return bounds[:, 0].reshape(shape), bounds[:, 1].reshape(shape)


def _fmt(v: tuple[float, float, float], digits: int = 1) -> str:
    mean, low, high = v
    if not np.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def rank_lines(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> list[str]:
    """The PCA, whole-layer and logits paragraphs of the report (an encoder's pre- and
    post-RoPE numbers are one: it has no rotary embedding)."""
    d, kv = int(meta["head_dim"]), int(meta["kv_heads"])
    share = round(100 * float(meta["rank_fraction"]))
    pca, layer, logit = pca_numbers(arrays), layer_numbers(arrays), logit_numbers(arrays)
    level = "95% bootstrap over sequences" if meta["bootstrap"]["replicates"] else "no bootstrap"
    rotary = bool(meta.get("rotary"))
    lines = [
        f"Keys: PCA components for {share}% of the explained variance (Loki's definition, a "
        f"count; Loki's index is one less), of d = {d}, mean over layers and KV heads "
        f"[{level}]:"
    ]
    if rotary:
        lines.append(
            f"  pre-RoPE {_fmt(pca['key_rank90_pre'])}, post-RoPE "
            f"{_fmt(pca['key_rank90_post'])}, values {_fmt(pca['value_rank90'])}; queries pre "
            f"{_fmt(pca['query_rank90_pre'])}, post {_fmt(pca['query_rank90_post'])}"
        )
    else:
        lines.append(
            f"  keys {_fmt(pca['key_rank90_post'])} (no rotary embedding: pre = post), values "
            f"{_fmt(pca['value_rank90'])}, queries {_fmt(pca['query_rank90_post'])}"
        )
    post = pca["key_rank90_post"][0] / d
    loki = (  # Loki's share is for 90% of the variance: beside another fraction it misleads
        f" (Loki, 7B models: about {100 * LOKI_POST_SHARE:.0f}% post-RoPE)" if share == 90 else ""
    )
    lines.append(
        f"  {'post-RoPE keys need' if rotary else 'keys need'} {100 * post:.0f}% of d{loki}"
    )
    cal_pre, cal_post = pca["calibration_key_rank90_pre"], pca["calibration_key_rank90_post"]
    if cal_pre is not None:
        found = f"pre {cal_pre:.1f}, post {cal_post:.1f}" if rotary else f"keys {cal_post:.1f}"
        lines.append(
            f"  on the calibration text ({corpus_name(meta['calibration'])}, "
            f"{meta['calibration']['num_sequences']} seq.): {found}"
        )
    if rotary:
        lines.append("  layer  pre-RoPE            post-RoPE   (mean over KV heads [bootstrap])")
        for row in pca["layers"]:
            lines.append(f"  {row['layer']:>5}  {_fmt(row['pre']):<19} {_fmt(row['post'])}")
    else:
        lines.append("  layer  keys   (mean over heads [bootstrap])")
        for row in pca["layers"]:
            lines.append(f"  {row['layer']:>5}  {_fmt(row['post'])}")
    width = kv * d
    keys = layer["key_pre"]["median"]
    lines.append(
        f"Whole layer (ShadowKV: energy of each sequence's uncentred n x {width} matrix), median "
        f"over layers of the mean over sequences: {'pre-RoPE ' if rotary else ''}keys {keys:.1f}"
        f" ({100 * keys / width:.0f}% of {width}; ShadowKV, Llama-3.1-8B pre-RoPE: "
        f"{SHADOWKV[0]} of {SHADOWKV[1]}, {100 * SHADOWKV[0] / SHADOWKV[1]:.0f}%)"
        + (f", post-RoPE {layer['key_post']['median']:.1f}" if rotary else "")
        + f", values {layer['value']['median']:.1f}"
    )
    lines.append(_logit_line(logit, d, int(meta["seq_len"]), rotary))
    return lines


def _logit_line(logit: dict[str, Any], d: int, n: int, rotary: bool) -> str:
    parts = ["Logits against weights (energy, per head; median [range] over heads of the mean "
             "over sequences):"]  # fmt: skip
    names = {
        "logits_pre_rank90_energy": "pre-RoPE logits QK^T",
        "logits_post_rank90_energy": "post-RoPE logits",
        "weights_rank90_energy": "W_Q W_K^T",
    }
    if not rotary:
        names = {"logits_post_rank90_energy": "logits QK^T", "weights_rank90_energy": "W_Q W_K^T"}
    for key, label in names.items():
        v = logit[key]
        if v is not None:
            parts.append(f"{label} {v['median']:.1f} [{v['min']:.0f}-{v['max']:.0f}] of {d};")
    probs = logit["probs_rank90_nuclear"]
    if probs is not None:
        parts.append(f"P (nuclear, spectrum's rank90) {probs['median']:.1f} of n = {n}")
    return " ".join(parts).rstrip(";")


def topk_lines(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> list[str]:
    """The top-k table of the report: recall, mass and output error per r and k for the
    calibrated PCA basis, the random basis and exact top-k; at the focus (r nearest d/4, the
    smallest k) the same with 95% t-intervals over sequences, and the transfer gap."""
    ranks, budgets = arrays["topk_ranks"].tolist(), arrays["topk_budgets"].tolist()
    d = int(meta["head_dim"])
    cal = corpus_name(meta["calibration"])
    found = {m: topk_numbers(arrays, m) for m in ("recall", "mass", "error")}
    ks = "  ".join(f"{'k = ' + _fraction(f) + ' n':^22}" for f in budgets)
    lines = [
        f"Top-k from r dimensions (PCA of post-RoPE keys fitted on {cal}), mean over layers and "
        "heads of recall / attention mass / output error:",
        f"  {'basis':<22}{'r':>4}  {ks}",
    ]
    rows = [(s, name) for s, name in ((0, "PCA (calibration)"), (2, "random orthogonal"))]
    for s, name in rows[: len(arrays["topk_bases"])]:
        for ri, r in enumerate(ranks):
            if r < d:
                cells = [_cell(found, s, ri, ki) for ki in range(len(budgets))]
                lines.append(f"  {name:<22}{r:>4}  " + "  ".join(cells))
    if d in ranks:
        cells = [_cell(found, 0, ranks.index(d), ki) for ki in range(len(budgets))]
        lines.append(f"  {'exact top-k':<22}{d:>4}  " + "  ".join(cells))
    ri = min(range(len(ranks)), key=lambda i: (abs(ranks[i] - d / 4), ranks[i]))
    at = f"r = {ranks[ri]}, k = {_fraction(budgets[0])} n"
    for s, name in rows[: len(arrays["topk_bases"])]:
        lines.append(f"At {at}, {name} [95% t over sequences]: {_with(found, s, ri)}")
    bound = float(arrays["topk_bound_share"][0].mean())
    if bound == 0:
        lines.append(f"At {at}, the budget binds no query (k covers every key it sees)")
    elif bound < 1:
        binding = ", ".join(
            f"{m} {np.nanmean(arrays[f'topk_{m}_binding_mean'][s, ri, 0]):.3f}"
            for s, m in itertools.product((0,), TOPK_METRICS)
        )
        lines.append(
            f"At {at}, PCA (calibration), over the queries the budget binds only "
            f"({100 * bound:.0f}%; earlier ones see fewer than k keys): {binding}"
        )
    if d in ranks:
        lines.append(
            f"Exact top-k at k = {_fraction(budgets[0])} n: {_with(found, 0, ranks.index(d))}"
        )
    if "gap" in found["recall"] and ranks[ri] < d:
        gap, low, high = (found["recall"][k][ri, 0] for k in ("gap", "gap_low", "gap_high"))
        interval = (
            f"[{low:+.3f}, {high:+.3f}]"
            if np.isfinite([low, high]).all()
            else "(no interval: too few sequences)"
        )
        lines.append(
            f"Transfer gap (PCA fitted on the evaluated text minus on {cal}), recall at {at}: "
            f"{gap:+.3f} {interval}"
        )
    sink = float(arrays["topk_sink_mass"].mean())
    lines.append(f"Attention on the first token (kept on top of k): {sink:.2f} on average")
    return lines


def _with(found: dict[str, dict[str, np.ndarray]], s: int, ri: int) -> str:
    parts = []
    for metric in ("recall", "mass", "error"):
        mean, low, high = (found[metric][k][s, ri, 0] for k in ("mean", "low", "high"))
        interval = f" [{low:.3f}, {high:.3f}]" if np.isfinite([low, high]).all() else ""
        parts.append(f"{metric} {mean:.3f}{interval}")
    if not interval:
        parts.append("no interval (too few sequences)")
    return ", ".join(parts)


def _cell(found: dict[str, dict[str, np.ndarray]], s: int, ri: int, ki: int) -> str:
    r, m, e = (found[x]["mean"][s, ri, ki] for x in ("recall", "mass", "error"))
    return f"{r:.2f}/{m:.2f}/{e:.2f}".center(22)


def _fraction(f: float) -> str:
    inverse = 1 / f
    return f"1/{inverse:.0f}" if abs(inverse - round(inverse)) < 1e-9 and f < 1 else f"{f:g}"
