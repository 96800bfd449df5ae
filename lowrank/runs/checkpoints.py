"""Checkpoints of a partial run: each rank's accumulators, written atomically, validated
on resume.

The accumulators are the family's own (a spectrum run's moments, ...); a :class:`Codec` the
family hands over turns them into named arrays and back, checking what it reads, so this
module knows no family.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from lowrank.core.options import switch
from lowrank.errors import LowrankError
from lowrank.runs.arrays import ArraySpec, check_arrays
from lowrank.runs.folders import (
    CHECKPOINT_JSON,
    CHECKPOINT_NPZ,
    read_checkpoint_info,
    restart_advice,
)
from lowrank.runs.manifest import FINGERPRINT, difference, file_record
from lowrank.runs.npz import read_npz
from lowrank.runs.writing import bytes_writer, json_bytes, write_files

T = TypeVar("T")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; ``str(exc)`` says what was kept and how to resume.

    Attributes:
        checkpoint: the checkpoint file holding the finished sequences, or None.
    """

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return str(self.args[0])


class Codec(Protocol[T]):
    """How a family's accumulators are stored in a checkpoint."""

    def encode(self, part: T) -> dict[str, np.ndarray]:
        """One rank's accumulators as named arrays."""
        ...

    def decode(
        self, path: Path, split: list[dict[str, np.ndarray]], identity: dict[str, Any]
    ) -> list[T]:
        """Each rank's accumulators from its arrays (rank order), checked first: raise a
        LowrankError naming ``path`` and the array at fault."""
        ...

    def count(self, part: T) -> int:
        """Sequences one rank's accumulators hold."""
        ...


def write_checkpoint(
    out: Path,
    identity: dict[str, Any],
    parts: list[T],
    next_index: int,
    total: int,
    command: str,
    codec: Codec[T],
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Save each rank's accumulators and the next sequence index atomically (npz, then json).

    ``parts`` are in rank order, one per rank; together they hold sequences
    ``[0, next_index)``. One part is stored under the run folder's array names, several under
    ``rank{r}.``-prefixed ones. The npz is written first, then checkpoint.json with the
    npz's size and sha256 (``npz``): a resume refuses an npz edited or damaged since, or
    one a crash between the two writes left beside the previous json. A failed write
    leaves the previous checkpoint as it was. ``fingerprint`` (of every sequence of
    the run and the model, :mod:`lowrank.runs.manifest`) is kept in checkpoint.json, so that
    a resume on other inputs is refused.
    """
    arrays: dict[str, Any] = {
        "next_index": np.array(next_index),
        "world_size": np.array(len(parts)),
    }
    if len(parts) == 1:
        arrays |= codec.encode(parts[0])
    else:
        for rank, part in enumerate(parts):
            arrays |= {f"rank{rank}.{k}": v for k, v in codec.encode(part).items()}
    info = {
        "identity": identity,
        "next_index": next_index,
        "total": total,
        "world_size": len(parts),
        "command": command,
        **({"fingerprint": fingerprint} if fingerprint is not None else {}),
    }
    # the json names the npz's size and sha256, so the npz is built in memory first (a
    # SmolLM2 keys checkpoint: 0.45 GB); both are then written all-or-nothing as before
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    npz = buffer.getvalue()
    del buffer
    info["npz"] = {"bytes": len(npz), "sha256": hashlib.sha256(npz).hexdigest()}
    write_files(
        out,
        [
            (CHECKPOINT_NPZ, bytes_writer(npz)),
            (CHECKPOINT_JSON, bytes_writer(json_bytes(info))),
        ],
    )


def read_checkpoint(
    out: Path, identity: dict[str, Any], codec: Codec[T], sequences: int | None = None
) -> tuple[list[T], int] | None:
    """Each rank's accumulators (rank order) and the next index of a partial run, if any.

    Both files are validated before use: the json's schema, the npz's arrays (by the
    ``codec``: dtypes, shapes, ranges), and the counts (together at most ``next_index``,
    which is at most the run's ``total`` and, when given, ``sequences``).

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
        _check_record(path, info.get("npz"))
        data = read_npz(path, unnamed_limit=False)
        total = min(t for t in (info.get("total"), sequences, 2**62) if t is not None)
        parts, next_index = _checkpoint_parts(path, data, info, identity, total, codec)
    except LowrankError as exc:
        raise LowrankError(f"{exc}{restart_advice()}") from None
    return parts, next_index


def check_checkpoint_inputs(out: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to continue the checkpoint in ``out`` from inputs whose ``fingerprint``
    (:mod:`lowrank.runs.manifest`) differs from the one it recorded: a corpus file edited
    in place, other weights under the same path; ``--overwrite`` beside ``--resume`` too."""
    changed = difference(read_checkpoint_info(out).get(FINGERPRINT), fingerprint)
    if changed:
        raise LowrankError(
            f"the checkpoint in '{out}' was made from other inputs ({changed}): pass "
            f"{switch('overwrite')} (not {switch('resume')}) to start again"
        )


def _check_record(path: Path, record: Any) -> None:
    """Refuse an npz whose size or sha256 is not the one its checkpoint.json recorded
    (checkpoints written before the record existed pass)."""
    if not isinstance(record, dict) or not path.is_file():
        return
    if file_record(path) != {"bytes": record.get("bytes"), "sha256": record.get("sha256")}:
        raise LowrankError(
            f"'{path}' is not the file its {CHECKPOINT_JSON} describes (edited, damaged, or "
            "left by an interrupted write)"
        )


def _checkpoint_parts(
    path: Path,
    data: dict[str, np.ndarray],
    info: dict[str, Any],
    identity: Any,
    total: int,
    codec: Codec[T],
) -> tuple[list[T], int]:
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
    parts = codec.decode(path, split, identity if isinstance(identity, dict) else {})
    if sum(codec.count(p) for p in parts) > next_index:
        counts = " + ".join(str(codec.count(p)) for p in parts)
        raise LowrankError(f"'{path}' counts {counts} sequences, more than its {next_index}")
    return parts, next_index


def clear_checkpoint(out: Path) -> None:
    for name in (CHECKPOINT_JSON, CHECKPOINT_NPZ):
        (out / name).unlink(missing_ok=True)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (schedulers, `kill`) like Ctrl-C, so partial results are saved."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
