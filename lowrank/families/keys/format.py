"""The run format of the keys family: run.json and keys.npz of ``lowrank keys``.

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lowrank.families.keys import FAMILY
from lowrank.runs.arrays import ArraySpec, length
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Count, Open, Positive

NPZ = "keys.npz"
_RANKED = ("query_rank90_pre", "query_rank90_post", "key_rank90_pre", "key_rank90_post")
_KINDS = ("query_pre", "query_post", "key_pre", "key_post", "value")
_LOGITS = ("logits_post_rank90_energy", "logits_pre_rank90_energy", "logits_post_rank90_nuclear")
_METRICS = ("recall", "mass", "error")


class CalibrationInfo(Open):
    dataset: str
    num_sequences: Count
    seq_len: Positive


class TopkInfo(Open):
    bases: list[str]
    ranks: list[int]
    budgets: list[float]
    queries_per_sequence: Positive
    keep_first: bool


class BootstrapInfo(Open):
    replicates: Count
    groups: Positive
    groups_used: Count


class KeysMeta(AnalysisMeta):
    """``lowrank keys``."""

    seq_len: Positive
    num_sequences: Count
    kv_heads: Positive
    head_dim: Positive
    rank_fraction: float
    rotary: bool
    calibration: CalibrationInfo
    topk: TopkInfo
    bootstrap: BootstrapInfo
    definitions: dict[str, str]


def _heads(name: str, heads: int, kv: int) -> int:
    return heads if name.startswith("query") else kv


def keys_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """keys.npz, with L layers, H query heads, Hkv KV heads, head dimension d, N sequences
    of n tokens, S top-k bases, R ranks r and K budgets:

    - PCA (explained variance): ``query_rank90_pre/post`` [L, H], ``key_rank90_pre/post``,
      ``value_rank90`` [L, Hkv] (counts in 1..d), each with ``_low``/``_high`` (bootstrap,
      NaN without), ``_layer_low``/``_layer_high`` [L], ``_all_low``/``_all_high`` [];
      ``<kind>_cumvar`` [L, Hx, d] in [0, 1] with ``_low``/``_high``;
      ``key_loki_index_pre/post`` [L, Hkv] in 0..d-1; ``calibration_<rank>`` as the ranks;
    - whole layer (energy): ``sequence_ids`` [N], ``layer_rank90_energy`` [N, 3, L] in
      1..Hkv d (key_pre, key_post, value), ``layer_cumenergy_mean/_std`` [3, L, Hkv d];
    - logits: ``logits_{post,pre}_rank90_energy``, ``logits_post_rank90_nuclear`` [N, L, H]
      in 1..d, ``probs_rank90_nuclear`` [N, L, H] in 1..n (NaN when not measured),
      ``logit_cumenergy_mean/_std`` [L, H, d]; ``weights_singular_values`` [L, H, d] and
      ``weights_rank90_energy/_nuclear`` [L, H] (absent when the weights are not found);
    - top-k: ``topk_bases`` [S], ``topk_ranks`` [R] in 1..d, ``topk_budgets`` [K] in (0, 1],
      ``topk_{recall,mass,error}[_binding]_{mean,sem}`` and ``topk_gap_*`` [S, R, K, L, H],
      ``topk_sequence_means`` [N, S, R, K, L, 3], ``topk_sink_mass`` [L, H],
      ``topk_bound_share`` [K, L];
    - ``input_ids`` [N, n] and ``attention_mask`` [N, n] where padded;
      ``calibration_input_ids`` [N_cal, n_cal].
    """
    layers, heads, kv = int(meta["num_layers"]), int(meta["num_heads"]), int(meta["kv_heads"])
    d, n, seqs = int(meta["head_dim"]), int(meta["seq_len"]), int(meta["num_sequences"])
    s, r, k = (length(arrays, x) for x in ("topk_bases", "topk_ranks", "topk_budgets"))
    spec: dict[str, ArraySpec] = {}
    for name in (*_RANKED, "value_rank90"):
        plane = (layers, _heads(name, heads, kv))
        spec[name] = ArraySpec("int", plane, minimum=1, maximum=d)
        spec[f"calibration_{name}"] = ArraySpec("int", plane, minimum=1, maximum=d)
        for side in ("low", "high"):
            for key, shape in (("", plane), ("_layer", (layers,)), ("_all", ())):
                spec[f"{name}{key}_{side}"] = ArraySpec(
                    "float", shape, finite=False, minimum=1, maximum=d
                )
    for kind in _KINDS:
        cube = (layers, _heads(kind, heads, kv), d)
        spec[f"{kind}_cumvar"] = ArraySpec("float", cube, minimum=0, maximum=1 + 1e-9)
        for side in ("low", "high"):
            spec[f"{kind}_cumvar_{side}"] = ArraySpec(
                "float", cube, finite=False, minimum=0, maximum=1 + 1e-9
            )
    for side in ("pre", "post"):
        spec[f"key_loki_index_{side}"] = ArraySpec("int", (layers, kv), minimum=0, maximum=d - 1)
    spec["bootstrap_groups_used"] = ArraySpec("int", (), minimum=0)
    spec |= _sequence_spec(layers, heads, kv, d, n, seqs)
    spec |= _topk_spec(layers, heads, d, seqs, (s, r, k))
    spec["input_ids"] = ArraySpec("int", (seqs, n), minimum=0)
    spec["attention_mask"] = ArraySpec("mask", (seqs, n), minimum=0, maximum=1, required=False)
    cal = int(meta["calibration"]["num_sequences"]), int(meta["calibration"]["seq_len"])
    spec["calibration_input_ids"] = ArraySpec("int", cal, minimum=0)
    return spec


def _sequence_spec(
    layers: int, heads: int, kv: int, d: int, n: int, seqs: int
) -> dict[str, ArraySpec]:
    per, plane = (seqs, layers, heads), (layers, heads, d)
    spec = {
        "sequence_ids": ArraySpec("int", (seqs,), minimum=0),
        "layer_rank90_energy": ArraySpec("float", (seqs, 3, layers), minimum=1, maximum=kv * d),
        "layer_cumenergy_mean": ArraySpec("float", (3, layers, kv * d), minimum=0, maximum=1.001),
        "layer_cumenergy_std": ArraySpec("float", (3, layers, kv * d), finite=False, minimum=0),
        "probs_rank90_nuclear": ArraySpec("float", per, finite=False, minimum=1, maximum=n),
        "logit_cumenergy_mean": ArraySpec("float", plane, minimum=0, maximum=1.001),
        "logit_cumenergy_std": ArraySpec("float", plane, finite=False, minimum=0),
        "weights_singular_values": ArraySpec("float", plane, minimum=0, required=False),
    }
    for name in _LOGITS:
        spec[name] = ArraySpec("float", per, minimum=1, maximum=d)
    for name in ("weights_rank90_energy", "weights_rank90_nuclear"):
        spec[name] = ArraySpec("int", (layers, heads), minimum=1, maximum=d, required=False)
    return spec


def _topk_spec(
    layers: int, heads: int, d: int, seqs: int, grid: tuple[int | None, ...]
) -> dict[str, ArraySpec]:
    cells = (*grid, layers, heads)
    spec = {
        "topk_bases": ArraySpec("str", (None,)),
        "topk_ranks": ArraySpec("int", (None,), minimum=1, maximum=d),
        "topk_budgets": ArraySpec("float", (None,), minimum=1e-12, maximum=1),
        "topk_sequence_means": ArraySpec(
            "float", (seqs, *grid, layers, 3), finite=False, minimum=0
        ),
        "topk_sink_mass": ArraySpec("float", (layers, heads), minimum=0, maximum=1 + 1e-6),
        "topk_bound_share": ArraySpec("float", (grid[2], layers), minimum=0, maximum=1),
    }
    for metric in _METRICS:
        top = None if metric == "error" else 1 + 1e-6
        for suffix in ("", "_binding"):
            spec[f"topk_{metric}{suffix}_mean"] = ArraySpec(
                "float", cells, finite=False, minimum=0, maximum=top
            )
            spec[f"topk_{metric}{suffix}_sem"] = ArraySpec("float", cells, finite=False, minimum=0)
        spec[f"topk_gap_{metric}_mean"] = ArraySpec("float", cells, finite=False)
        spec[f"topk_gap_{metric}_sem"] = ArraySpec("float", cells, finite=False, minimum=0)
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=1,
    npz=NPZ,
    schema=KeysMeta,
    arrays=keys_array_spec,
)
