"""Checkpoints of a partial ``lowrank spectrum`` run: written atomically, validated on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.arrays import check_arrays, stats_array_spec
from lowrank.runs.folders import (
    CHECKPOINT_JSON,
    CHECKPOINT_NPZ,
    RESTART_ADVICE,
    read_checkpoint_info,
    read_npz,
    stats_arrays,
    stats_from_arrays,
)
from lowrank.runs.stats import SpectrumStats
from lowrank.runs.writing import bytes_writer, json_bytes, write_files

# --- checkpoints --------------------------------------------------------------------------


def write_checkpoint(
    out: Path,
    identity: dict[str, Any],
    parts: list[SpectrumStats],
    next_index: int,
    total: int,
    command: str,
) -> None:
    """Save each rank's accumulators and the next sequence index atomically (npz, then json).

    ``parts`` are in rank order, one per rank; together they hold sequences
    ``[0, next_index)``. One part is stored under the run folder's array names, several under
    ``rank{r}.``-prefixed ones. The npz carries ``next_index`` and ``world_size`` itself, so a
    crash between the two renames leaves a checkpoint that is still consistent. A failed
    write leaves the previous checkpoint as it was.
    """
    arrays: dict[str, Any] = {
        "next_index": np.array(next_index),
        "world_size": np.array(len(parts)),
    }
    if len(parts) == 1:
        arrays |= stats_arrays(parts[0])
    else:
        for rank, stats in enumerate(parts):
            arrays |= {f"rank{rank}.{k}": v for k, v in stats_arrays(stats).items()}
    info = {
        "identity": identity,
        "next_index": next_index,
        "total": total,
        "world_size": len(parts),
        "command": command,
    }
    write_files(
        out,
        [
            (CHECKPOINT_NPZ, lambda fh: np.savez(fh, **arrays)),
            (CHECKPOINT_JSON, bytes_writer(json_bytes(info))),
        ],
    )


def read_checkpoint(
    out: Path, identity: dict[str, Any], sequences: int | None = None
) -> tuple[list[SpectrumStats], int] | None:
    """Each rank's accumulators (rank order) and the next index of a partial run, if any.

    Both files are validated before use: the json's schema, the npz's arrays (dtype, the
    one shape every part shares, finite moments, non-negative m2 and counts), and the
    counts (together at most ``next_index``, which is at most the run's ``total`` and, when
    given, ``sequences``).

    Raises:
        LowrankError: a checkpoint of another configuration, or a damaged one (one line
            naming the file, the array or field, and how to start again).
    """
    if not (out / CHECKPOINT_JSON).is_file():
        return None
    info = read_checkpoint_info(out)
    if info["identity"] != identity:
        raise LowrankError(f"the checkpoint in '{out}' belongs to another configuration")
    path = out / CHECKPOINT_NPZ
    try:
        data = read_npz(path)
        total = min(t for t in (info.get("total"), sequences, 2**62) if t is not None)
        parts, next_index = _checkpoint_parts(path, data, info, identity, total)
    except LowrankError as exc:
        raise LowrankError(f"{exc}{RESTART_ADVICE}") from None
    return parts, next_index


def _checkpoint_parts(
    path: Path, data: dict[str, np.ndarray], info: dict[str, Any], identity: Any, total: int
) -> tuple[list[SpectrumStats], int]:
    from lowrank.runs.arrays import ArraySpec

    head = {
        "next_index": ArraySpec("int", (), minimum=0, maximum=total, required=False),
        "world_size": ArraySpec("int", (), minimum=1, maximum=2**16, required=False),
    }
    check_arrays(path, data, head)
    world = int(data.get("world_size", 1))
    next_index = int(data.get("next_index", info["next_index"]))
    if next_index > total:
        raise LowrankError(f"'{path}': next_index {next_index} is above the {total} sequences")
    if world == 1:
        split = [data]
    else:
        split = [
            {k.partition(".")[2]: v for k, v in data.items() if k.startswith(f"rank{r}.")}
            for r in range(world)
        ]
    first = split[0].get("cumulative_mean")
    if first is None or first.ndim != 3:
        raise LowrankError(f"'{path}' lacks a [layers, heads, n] cumulative_mean")
    layers, heads, n = first.shape
    seq_len = identity.get("seq_len") if isinstance(identity, dict) else None
    if isinstance(seq_len, int) and n != seq_len:
        raise LowrankError(f"'{path}': cumulative_mean has n = {n}, the run has {seq_len}")
    index = None
    for rank, arrays in enumerate(split):
        where = path if world == 1 else Path(f"{path}, rank {rank},")
        check_arrays(where, arrays, stats_array_spec(layers, heads, n, index=index))
        index = int(arrays["heatmap_index"])
    parts = [stats_from_arrays(arrays) for arrays in split]
    if sum(p.count for p in parts) > next_index:
        counts = " + ".join(str(p.count) for p in parts)
        raise LowrankError(f"'{path}' counts {counts} sequences, more than its {next_index}")
    return parts, next_index


def clear_checkpoint(out: Path) -> None:
    for name in (CHECKPOINT_JSON, CHECKPOINT_NPZ):
        (out / name).unlink(missing_ok=True)
