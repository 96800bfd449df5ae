"""The arrays of keys.npz, from the statistics of the three passes.

Names follow the issue and Loki/ShadowKV: ``key_rank90_pre`` [layers, kv_heads] is the
number of principal components of the pre-RoPE keys that carry the rank fraction (90%) of
their explained variance, and so on; the definition each array uses is in its name or in
:data:`DEFINITIONS` (run.json ``definitions``).
"""

from __future__ import annotations

import numpy as np
import torch

from lowrank.families.keys import maths
from lowrank.families.keys.accumulate import KINDS, LOGIT_NAMES, Arrays, KeysStats
from lowrank.families.keys.names import BASES, RANK_NAMES, TOPK_METRICS
from lowrank.families.keys.topk import TopkStats

LOGIT_ARRAYS = {
    "logits_post_energy": "logits_post_rank90_energy",
    "logits_pre_energy": "logits_pre_rank90_energy",
    "logits_post_nuclear": "logits_post_rank90_nuclear",
    "probs_nuclear": "probs_rank90_nuclear",
}
DEFINITIONS = {
    "variance": "PCA of the centred vectors pooled over every valid token: components whose "
    "explained variance (covariance eigenvalues, sum of sigma^2 of the centred matrix) reaches "
    "the fraction; Loki's and sklearn's. Arrays *_rank90*, *_cumvar, calibration_*.",
    "energy": "sum_{j<=i} sigma_j^2 / sum_j sigma_j^2 of the uncentred matrix; ShadowKV's. "
    "Arrays layer_rank90_energy (one sequence's n x (H_kv d) keys or values), "
    "logits_*_rank90_energy (one head's n x n logits QK^T), weights_rank90_energy "
    "(W_Q^h W_K^g^T).",
    "nuclear": "sum_{j<=i} sigma_j / sum_j sigma_j; the Linformer paper's c and lowrank "
    "spectrum's rank90. Arrays probs_rank90_nuclear (P), logits_post_rank90_nuclear, "
    "weights_rank90_nuclear.",
}
RANK_CONVENTION = (
    "a count of components, 1..d: the smallest i whose cumulative share reaches the fraction. "
    "Loki's pca_analysis reports argmax(cumsum(ratio) > fraction), a 0-based index with a "
    "strict inequality: one less than the count except when a share equals the fraction "
    "exactly (key_loki_index_pre/post reproduce it)."
)
LEVEL = 0.95


def pca_arrays(stats: KeysStats, replicates: int, seed: int) -> Arrays:
    """Ranks, Loki's index, curves and bootstrap intervals of the five pooled PCAs.

    Returns:
        per tensor: the rank (L, Hx) int, ``_low``/``_high`` (L, Hx), ``_layer_low/high``
        (L,) of the mean over heads, ``_all_low/high`` () of the mean over every cell;
        ``{kind}_cumvar`` (L, Hx, d) with ``_low``/``_high``; ``key_loki_index_pre/post``
        (L, Hkv); ``bootstrap_groups_used`` ().
    """
    out: Arrays = {}
    for kind, moments in stats.pca.items():
        ev = moments.explained_variance()
        name = RANK_NAMES[kind]
        out[name] = maths.rank_at(ev, stats.fraction).numpy()
        out[f"{kind}_cumvar"] = maths.cumulative_share(ev).numpy()
        if kind in ("key_pre", "key_post"):
            out[f"key_loki_index_{kind[4:]}"] = maths.loki_index(ev, stats.fraction).numpy()
        if replicates > 0:
            iv = moments.intervals(replicates, seed, stats.fraction, LEVEL)
        else:
            shape = out[name].shape
            nan = np.full(shape, np.nan)
            iv = {"rank_low": nan, "rank_high": nan, "groups": np.array(0)}
            iv |= {"layer_low": nan[:, 0], "layer_high": nan[:, 0]}
            iv |= {"all_low": np.array(np.nan), "all_high": np.array(np.nan)}
            iv |= {"curve_low": out[f"{kind}_cumvar"] * np.nan}
            iv["curve_high"] = iv["curve_low"]
        for side in ("low", "high"):
            out[f"{name}_{side}"] = iv[f"rank_{side}"]
            out[f"{name}_layer_{side}"] = iv[f"layer_{side}"]
            out[f"{name}_all_{side}"] = np.asarray(iv[f"all_{side}"], dtype=np.float64)
            out[f"{kind}_cumvar_{side}"] = iv[f"curve_{side}"]
        out["bootstrap_groups_used"] = np.asarray(iv["groups"], dtype=np.int64)
    return out


def calibration_arrays(stats: KeysStats) -> Arrays:
    """``calibration_<rank name>`` (L, Hx): the PCA ranks on the calibration text."""
    ranks = stats.ranks()
    return {f"calibration_{RANK_NAMES[k]}": ranks[f"{k}_rank"] for k in KINDS}


def sequence_arrays(stats: KeysStats) -> Arrays:
    """Per-sequence ranks (whole layer, logits, P) and the mean energy curves."""
    ids, layer = stats.layer_rank.arrays()  # (N, 3, L)
    _, logits = stats.logit_rank.arrays()  # (N, L, H, 4)
    out: Arrays = {"sequence_ids": ids, "layer_rank90_energy": layer}
    out["layer_cumenergy_mean"] = stats.layer_curve.mean
    out["layer_cumenergy_std"] = stats.layer_curve.std()
    for i, name in enumerate(LOGIT_NAMES):
        out[LOGIT_ARRAYS[name]] = logits[..., i]
    out["logit_cumenergy_mean"] = stats.logit_curve.mean
    out["logit_cumenergy_std"] = stats.logit_curve.std()
    return out


def weight_arrays(spectra: torch.Tensor, fraction: float) -> Arrays:
    """``weights_singular_values`` (L, H, d) of each head's W_Q^h W_K^g^T, and its energy and
    nuclear ranks (L, H)."""
    return {
        "weights_singular_values": spectra.numpy(),
        "weights_rank90_energy": maths.rank_at(spectra**2, fraction).numpy(),
        "weights_rank90_nuclear": maths.rank_at(spectra, fraction).numpy(),
    }


def topk_arrays(stats: TopkStats) -> Arrays:
    """Top-k means and standard errors over sequences (S, R, K, L, H) per metric, over all
    sampled queries, over binding queries, and paired against basis 0 (``topk_gap_*``); the
    per-sequence means over heads (N, S, R, K, L, 3); the sink's mass and the binding share.
    """
    out: Arrays = {
        "topk_bases": np.array(BASES[: stats.bases]),
        "topk_ranks": np.array(stats.ranks, dtype=np.int64),
        "topk_budgets": np.array(stats.budgets, dtype=np.float64),
    }
    for part, prefix in (("metrics", "topk_"), ("binding", "topk_"), ("paired", "topk_gap_")):
        moments = stats.parts[part]
        with np.errstate(invalid="ignore", divide="ignore"):
            sem = moments.std() / np.sqrt(moments.count)
        suffix = "_binding" if part == "binding" else ""
        for i, metric in enumerate(TOPK_METRICS):
            out[f"{prefix}{metric}{suffix}_mean"] = np.where(
                moments.count[..., i] > 0, moments.mean[..., i], np.nan
            )
            out[f"{prefix}{metric}{suffix}_sem"] = sem[..., i]
    _, rows = stats.per_sequence.arrays()
    out["topk_sequence_means"] = rows
    out["topk_sink_mass"] = stats.parts["sink"].mean
    out["topk_bound_share"] = stats.parts["bound"].mean
    return out
