"""One spectrum job and the steps every process of it takes, alone or as a torchrun rank.

:class:`Job` holds a run's options and progress; the functions below prepare its start
(:func:`start_states`, from a checkpoint of any world size), run the pipeline
(:func:`analyse_job`), and finish it (:func:`finish`: the result, the run folder, the
figures). :mod:`lowrank.families.spectrum.workflow` runs them in one process and
:mod:`lowrank.families.spectrum.team` on the ranks of a torchrun launch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.families.spectrum.format import FORMAT
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import CODEC, stats_arrays
from lowrank.inputs.config import InputConfig, heatmap_index
from lowrank.inputs.prepared import Prepared
from lowrank.inputs.routes import layers_alive
from lowrank.runs.checkpoints import check_checkpoint_inputs, write_checkpoint
from lowrank.runs.manifest import FINGERPRINT, fingerprint_of, model_digest
from lowrank.runs.provenance import package_versions
from lowrank.runs.writing import check_out_dir, write_run

if TYPE_CHECKING:
    from lowrank.inputs.objects import DataInput, ModelInput

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Model and data as the user gave them (names, paths or objects; see
    :mod:`lowrank.inputs.objects`)."""

    model: ModelInput = "minilm"
    tokenizer: Any = None
    data: DataInput = None
    attention_mask: Any = None

    @property
    def in_memory(self) -> bool:
        from lowrank.inputs.objects import is_memory_data, is_memory_model

        return is_memory_model(self.model) or is_memory_data(self.data)

    def prepare(self, config: InputConfig) -> Prepared:
        from lowrank.inputs.objects import prepare_any

        return prepare_any(
            self.model, self.tokenizer, self.data, config, attention_mask=self.attention_mask
        )

    def identity(self, prep: Prepared) -> dict[str, Any]:
        from lowrank.inputs.objects import memory_identity

        return memory_identity(self.model, self.data, prep)


@dataclass
class Job:
    """One spectrum run: its options, and the checkpoint it last saved."""

    config: InputConfig
    inputs: Inputs
    out: Path | None
    identity: dict[str, Any]
    overwrite: bool
    resume: bool
    precision: float | None
    command: str
    checkpoint_every: int | None
    clock: Callable[[], float]
    versions: dict[str, str] | None  # None: this lowrank's, read when the run is written
    created: str
    plot: bool
    progress: bool
    started: float
    auto_batch: bool = False  # out of memory: halve the batch instead of stopping
    keep_per_sequence: bool = False  # also store every sequence's singular values
    label: str | None = None  # the run's display name (run.json "label"), when given
    batch: int | None = None  # the batch size that fits, once decided (fitted_batch)
    saved: int = 0  # sequences in the last checkpoint written (0: none)
    resumed_from: dict[str, int] | None = None
    figures: list[Path] = field(default_factory=list)
    model_digest: str | None = None  # the model's revision or weights digest (check_inputs)
    fingerprint: dict[str, Any] | None = None  # of every prepared sequence, for checkpoints
    locked: bool = False  # this rank took the lock of out (torchrun's rank 0)


def check_inputs(job: Job, prep: Prepared, found: Any, check: bool = True) -> None:
    """Fingerprint what the run is made from (:mod:`lowrank.runs.manifest`) and refuse to
    continue a checkpoint, or to replace a complete run of these options, made from other
    inputs: a corpus file whose text changed, a model folder holding other weights.

    Args:
        found: the checkpoint a resume read (None: none).
        check: False on the ranks that do not write the folder (fingerprint only).

    Raises:
        LowrankError: naming what differs and how to start again.
    """

    seqs = prep.sequences
    job.model_digest = model_digest(prep.meta(job.config)["model"])
    job.fingerprint = fingerprint_of(seqs.input_ids, seqs.attention_mask, job.model_digest)
    out = job.out
    if out is None or not check:
        return
    if found is not None:  # continued, --overwrite or not: its inputs must be these
        check_checkpoint_inputs(out, job.fingerprint)
        return
    if job.overwrite:
        return
    old = _run_meta(out)
    count = old.get("num_sequences")
    if isinstance(count, int) and 0 <= count <= len(seqs.lengths):
        mine = fingerprint_of(seqs.input_ids[:count], seqs.attention_mask[:count], job.model_digest)
        check_out_dir(out, job.identity, job.overwrite, job.resume, fingerprint=mine)


def _run_meta(out: Path) -> dict[str, Any]:
    import json

    try:
        meta = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def start_states(
    job: Job, prep: Prepared, world: int, found: tuple[list[Any], int] | None
) -> list[tuple[Any, int]] | None:
    """Each rank's statistics and the next sequence, from a checkpoint of any world size.

    The same world size continues each rank's own accumulators (the run ends as if never
    stopped); another one merges them onto rank 0 and deals the rest anew (exact to float64
    rounding).
    """
    from lowrank.families.spectrum.stats import SpectrumStats
    from lowrank.runs.distributed import merge_in_order

    if found is None:
        if job.resume:
            log.warning(
                f"{flag('resume')}: no checkpoint in '{job.out}', starting from the first sequence"
            )
        return None
    parts, next_index = found
    job.resumed_from = {"next_index": next_index, "world_size": len(parts)}
    n_seq = len(prep.sequences.lengths)
    log.info(f"resuming at sequence {next_index + 1} of {n_seq}")
    if len(parts) != world:
        log.info(
            f"the checkpoint was written by {len(parts)} rank(s), this run has {world}: rank 0 "
            "takes its merged statistics and the remaining sequences are dealt anew"
        )
        merged = merge_in_order(parts)
        layers, heads, n = merged.cumulative.shape
        empty = SpectrumStats.empty(layers, heads, n, merged.index)
        parts = [merged] + [empty] * (world - 1)
    return [(stats, next_index) for stats in parts]


def warn_index(n: int) -> None:
    index = heatmap_index(n)
    if index != 128:
        log.warning(f"n = {n} < 512: the heatmap reads c at index n/4 = {index}, not 128")


def fitted_batch(job: Job, prep: Prepared) -> int:
    """The batch size that fits the free memory
    (:func:`lowrank.families.spectrum.batching.fit_batch`), decided once per job: a batch larger
    than the run's sequences counts as that many."""
    from lowrank.families.spectrum.batching import fit_batch

    if job.batch is None:
        wanted = max(1, min(job.config.batch_size, len(prep.sequences.lengths)))
        # the outputs route holds every layer's P of a batch at once, the others one layer's
        heads = prep.loaded.num_heads * layers_alive(prep.loaded.model)
        job.batch = fit_batch(wanted, heads, job.config.seq_len, prep.device, job.auto_batch)
    return job.batch


def analyse_job(
    job: Job, prep: Prepared, start: Any, progress: Callable[[int], Any], team: Any
) -> Any:
    from lowrank.families.spectrum.pipeline import analyse

    n_seq = len(prep.sequences.lengths)
    index = heatmap_index(job.config.seq_len)
    out = job.out

    def save(parts: list[Any], next_index: int) -> None:
        if out is not None:
            write_checkpoint(
                out, job.identity, parts, next_index, n_seq, job.command, CODEC, job.fingerprint
            )
            job.saved = next_index

    # torchrun ranks deal the batches by --batch-size, so they keep it (a rank's batch that
    # runs out of memory is still halved inside the rank with --auto-batch)
    batch = job.config.batch_size if team is not None else fitted_batch(job, prep)
    return analyse(
        prep.loaded,
        prep.sequences,
        index,
        batch,
        prep.device,
        precision=job.precision,
        precision_indices=figure_indices(job.config.seq_len),
        progress=progress,
        start=start,
        checkpoint=save if out is not None else None,
        checkpoint_due=checkpoint_policy(job.checkpoint_every, job.clock),
        warn=log.warning,
        team=team,
        auto_batch=job.auto_batch,
        keep_per_sequence=job.keep_per_sequence,
    )


def finish(
    job: Job, prep: Prepared, stats: Any, result: Any, ranks: dict[str, Any], lead: bool
) -> SpectrumResult:
    """The result; on the lead rank with an ``out``, also the run folder (committed whole,
    in one step that also drops the checkpoint) and the figures drawn."""
    config, out, precision = job.config, job.out, job.precision
    if lead:
        for note in result.notes:
            log.warning(note)
    used = result.sequences_used
    sequences = prep.sequences
    arrays = stats_arrays(stats) | {"input_ids": sequences.input_ids[:used]}
    if (sequences.lengths[:used] < config.seq_len).any():
        arrays["attention_mask"] = sequences.attention_mask[:used]
    if result.per_sequence is not None:
        arrays["singular_values_per_sequence"] = result.per_sequence[:used]
    shard = sequences.policy.get("shard")
    meta: dict[str, Any] = {
        **FORMAT.header(),
        "command": job.command,
        "created": job.created,
        "identity": job.identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": used,
        "heatmap_index": heatmap_index(config.seq_len),
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        **ranks,
        **({"label": job.label} if job.label is not None else {}),
        "resumed_from": job.resumed_from,
        "precision": precision_record(precision, result, config.seq_len),
        "versions": job.versions or package_versions(),
        "analysis_seconds": round(result.seconds, 3),
        "elapsed_seconds": round(job.clock() - job.started, 3),
    }
    meta[FINGERPRINT] = fingerprint_of(
        arrays["input_ids"], arrays.get("attention_mask"), job.model_digest
    )
    res = SpectrumResult(meta, arrays, None, seconds=result.seconds)
    if out is None or not lead:
        return res
    # one step from the last checkpoint (or the old run) to the new run; under the lock,
    # a run another process committed meanwhile is not replaced without overwrite
    write_run(out, meta, arrays, npz=FORMAT.npz, overwrite=job.overwrite)  # drops the checkpoint
    res.path = out
    if job.plot:
        res.draw()
    return res


def share(rank: int, prep: Prepared, result: Any) -> dict[str, Any]:
    """What one rank did, for run.json's ``ranks``."""
    import socket

    return {
        "rank": rank,
        "host": socket.gethostname(),
        "device": _device_name(prep),
        "threads": None if prep.device.type == "cuda" else cpu_threads(),
        "batches": result.batches,
        "num_sequences": result.own_sequences,
        "compute_seconds": round(result.compute_seconds, 3),
    }


def _device_name(prep: Prepared) -> str:
    import torch

    if prep.device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return str(prep.device)


def cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


def progress_bar(job: Job, prep: Prepared, starts: Any, disable: bool = False) -> Any:
    """The progress bar over all ranks' sequences (rank 0's only; none with progress off)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=len(prep.sequences.lengths),
        initial=starts[0][1] if starts else 0,
        unit="seq",
        desc="spectrum",
        disable=disable or not job.progress,
    )


def select_shard(sequences: Any, index: int, count: int) -> Any:
    """The ``index``-th (1-based) of ``count`` contiguous, disjoint parts of the sequences."""
    from lowrank.inputs.corpora import Sequences

    if not 1 <= index <= count:
        raise LowrankError(
            f"{named('shard', index)}/{count}: the index must be between 1 and {count}"
        )
    total = len(sequences.lengths)
    if count > total:
        raise LowrankError(f"{named('shard', index)}/{count}: only {total} sequences to split")
    part = np.array_split(np.arange(total), count)[index - 1]
    policy = sequences.policy | {
        "shard": [index, count],
        "shard_rows": [int(part[0]), int(part[-1]) + 1],
    }
    return Sequences(sequences.input_ids[part], sequences.lengths[part], policy)


def checkpoint_policy(every: int | None, clock: Callable[[], float]) -> Callable[[int], bool]:
    """Due after ``every`` sequences, or (default) after each minute of work."""
    if every is not None:
        return lambda done: done >= every
    last = [clock()]

    def due(done: int) -> bool:
        if clock() - last[0] >= 60:
            last[0] = clock()
            return True
        return False

    return due


def precision_record(precision: float | None, result: Any, n: int) -> dict[str, Any] | None:
    """run.json's ``precision``: the target, the 95% half-width reached over the mean c
    values the figures read, those indices, and whether the run stopped early."""
    if precision is None:
        return None
    return {
        "target": precision,
        "achieved_half_width": result.half_width,
        "indices": figure_indices(n),
        "stopped_early": result.stopped_early,
    }


def figure_indices(n: int) -> list[int]:
    """1-based curve points the figures read: the heatmap index and n/8, n/4, n/2."""
    return sorted({heatmap_index(n), *(max(1, n // d) for d in (8, 4, 2))})
