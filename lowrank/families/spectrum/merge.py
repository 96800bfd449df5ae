"""Combine spectrum runs of disjoint shards into one run (Chan's parallel moments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowrank.core.options import flag
from lowrank.errors import LowrankError
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import stats_arrays
from lowrank.runs.manifest import FINGERPRINT, fingerprint_of, model_digest

# What must agree for two runs to describe the same experiment.
_SAME = ("seq_len", "num_layers", "num_heads", "heatmap_index")


def _describe(run: SpectrumResult) -> dict[str, Any]:
    identity = dict(run.config.get("identity", {}))
    identity.pop("shard", None)
    return {
        "model": (run.config["model"].get("path"), run.config["model"].get("revision")),
        "corpus": (
            run.config["corpus"].get("dataset"),
            run.config["corpus"].get("source"),
            run.config["corpus"].get("split"),
        ),
        "policy": {
            k: v
            for k, v in run.config.get("sequence_policy", {}).items()
            if k in ("policy", "special_tokens", "order", "keep_short")
        },
        "identity": identity,
        **{k: run.config.get(k) for k in _SAME},
    }


PER_SEQUENCE = "singular_values_per_sequence"


def merge_runs(runs: list[SpectrumResult]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and arrays of the merged run; shards are combined in shard order.

    Raises:
        LowrankError: runs of different models, corpora, n or policies, or repeated shards.
    """
    if len(runs) < 2:
        raise LowrankError("lowrank merge needs at least two run folders")
    first = _describe(runs[0])
    for run in runs[1:]:
        other = _describe(run)
        for key, value in first.items():
            if other[key] != value:
                raise LowrankError(
                    f"cannot merge '{run.path}' with '{runs[0].path}': they differ in {key} "
                    f"({other[key]} vs {value})"
                )
    shards = [run.config.get("shard") for run in runs]
    if any(s is None for s in shards):
        raise LowrankError(
            "lowrank merge combines shards of one run (made with --shard i/N); "
            f"'{runs[shards.index(None)].path}' is not a shard"
        )
    # each shard is {"index": i, "count": N}, 1 <= i <= N (checked by the run.json schema)
    indices = [s["index"] for s in shards]  # type: ignore[index]
    counts = {s["count"] for s in shards}  # type: ignore[index]
    if len(counts) != 1:
        raise LowrankError(f"the runs split the sequences differently ({sorted(counts)} shards)")
    if len(set(indices)) != len(indices):
        raise LowrankError(f"shard {max(indices, key=indices.count)} is given twice")
    order = sorted(range(len(runs)), key=lambda i: indices[i])
    stats = runs[order[0]].stats
    for i in order[1:]:
        stats = stats.merge(runs[i].stats)
    arrays = stats_arrays(stats) | {
        "input_ids": np.concatenate([runs[i].input_ids for i in order]),
    }
    masks = [runs[i].attention_mask for i in order]
    if any(m is not None for m in masks):
        arrays["attention_mask"] = np.concatenate(
            [
                m if m is not None else np.ones_like(runs[i].input_ids)
                for m, i in zip(masks, order, strict=True)
            ]
        )
    kept = [runs[i].arrays.get(PER_SEQUENCE) for i in order]
    if any(k is not None for k in kept):
        if any(k is None for k in kept):
            bare = runs[order[[k is None for k in kept].index(True)]].path
            raise LowrankError(
                f"'{bare}' kept no per-sequence spectra and other parts did: merge parts run "
                f"alike (all with {flag('keep_per_sequence')} or none)"
            )
        arrays[PER_SEQUENCE] = np.concatenate(kept)  # type: ignore[arg-type]
    meta = dict(runs[order[0]].config)
    meta.pop("manifest", None)  # the first part's files: writing lists the merged run's
    if "input_ids" in arrays:  # what the merged numbers were computed from: every part's ids
        model = meta.get("model")
        digest = model_digest(model) if isinstance(model, dict) else None
        meta[FINGERPRINT] = fingerprint_of(
            arrays["input_ids"], arrays.get("attention_mask"), digest
        )
    else:
        meta.pop(FINGERPRINT, None)
    total = counts.pop()
    meta |= {
        "num_sequences": stats.count,
        "shard": None,
        "merged_from": [
            {"path": str(runs[i].path), "shard": indices[i], "num_sequences": runs[i].stats.count}
            for i in order
        ],
        "complete": sorted(indices) == list(range(1, total + 1)),
        "identity": first["identity"],
        "analysis_seconds": sum(float(runs[i].config.get("analysis_seconds", 0)) for i in order),
    }
    return meta, arrays


def read_parts(folders: list[Path]) -> list[SpectrumResult]:
    """Read every part of a merge, all before anything is written.

    Raises:
        LowrankError: ``part 2 'runs/b': ...``, naming the first damaged part and why.
    """
    runs = []
    for i, folder in enumerate(folders, 1):
        try:
            runs.append(SpectrumResult.read(folder))
        except LowrankError as exc:
            raise LowrankError(f"part {i} '{folder}': {exc}") from None
    return runs


def merge_folders(folders: list[Path]) -> tuple[dict[str, Any], dict[str, np.ndarray], bool]:
    """Metadata and arrays of the merge of ``folders``, and whether every shard is there
    (nothing is written: every part is read and checked first)."""
    meta, arrays = merge_runs(read_parts(folders))
    return meta, arrays, bool(meta["complete"])
