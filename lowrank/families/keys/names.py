"""The names of the keys family's arrays and axes, torch-free (figures and findings read a
saved run without loading torch or transformers)."""

from __future__ import annotations

import numpy as np

TOPK_METRICS = ("recall", "mass", "error")
"""Top-k's metrics, in the order of the last axis of ``topk_sequence_means``."""
BASES = ("pca_calibration", "pca_evaluation", "random_orthogonal")
"""Top-k's bases, in array order: basis 0 is the reference of the paired differences."""
RANK_NAMES = {
    "query_pre": "query_rank90_pre",
    "query_post": "query_rank90_post",
    "key_pre": "key_rank90_pre",
    "key_post": "key_rank90_post",
    "value": "value_rank90",
}
"""The PCA rank array of each captured tensor."""


def per_sequence_mean(arrays: dict[str, np.ndarray], basis: int, metric: str) -> np.ndarray:
    """(N, R, K) each sequence's mean over layers and heads of a top-k metric, from
    ``topk_sequence_means`` (N, S, R, K, L, 3)."""
    rows = arrays["topk_sequence_means"][:, basis]  # (N, R, K, L, 3)
    return np.asarray(np.nanmean(rows[..., TOPK_METRICS.index(metric)], axis=-1))
