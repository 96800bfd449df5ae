"""The Python API of ``lowrank spectrum`` and ``lowrank merge``.

>>> import lowrank
>>> res = lowrank.spectrum("minilm", num_sequences=8, seq_len=128)   # doctest: +SKIP
>>> res.summary().head()                                              # doctest: +SKIP

:func:`spectrum` takes the CLI's options (same names with underscores, same defaults, same
checks and one-line :class:`~lowrank.LowrankError` messages), and besides a model name or
folder an in-memory ``transformers`` model with its tokenizer, and besides a corpus path
texts or token ids (see :mod:`lowrank.inputs.objects`). It returns a
:class:`~lowrank.families.spectrum.result.SpectrumResult` and writes a run folder only when given
``out``. The CLI command is a thin layer over it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lowrank.core.options import flag
from lowrank.errors import LowrankError
from lowrank.families.spectrum.format import FORMAT
from lowrank.families.spectrum.options import OPTIONS
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.inputs.config import (
    PAPER_NUM_SEQUENCES,
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    DType,
    Policy,
)
from lowrank.runs.provenance import python_call

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.objects import DataInput, ModelInput

Backend = Literal["gloo", "nccl"]
log = logging.getLogger(__name__)

__all__ = ["SpectrumResult", "merge", "spectrum"]


def spectrum(
    model: ModelInput = "minilm",
    tokenizer: PreTrainedTokenizerBase | None = None,
    data: DataInput = None,
    *,
    seq_len: int = PAPER_SEQ_LEN,
    num_sequences: int = PAPER_NUM_SEQUENCES,
    precision: float | None = None,
    batch_size: int = 8,
    auto_batch: bool = False,
    seed: int | None = None,
    device: Device = "auto",
    dtype: DType | None = None,
    policy: Policy = "auto",
    keep_short: bool = False,
    dataset: DatasetName | None = None,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int | None = None,
    shard: str | tuple[int, int] | None = None,
    plot: bool = False,
    label: str | None = None,
    keep_per_sequence: bool = False,
    progress: bool = True,
    attention_mask: Any = None,
    backend: Backend | None = None,
    verbose: bool = False,
    command: str | None = None,
) -> SpectrumResult:
    """Singular-value spectra of every attention matrix P (the paper's Figure 1).

    For each sequence, layer and head: the singular values s of P [n, n], the normalized
    cumulative curve c_i = sum_{j<=i} s_j / sum_j s_j, and summaries (c at the heatmap
    index, ranks for 90% and 99%, effective and stable rank); means and standard deviations
    over sequences are the result's arrays (``res.cumulative_mean`` [layers, heads, n]).

    Args:
        model: a preset (``"minilm"``, the embedded all-MiniLM-L6-v2; ``"roberta-base"``,
            ...), a hub id, a folder written by ``save_pretrained``, or a
            ``transformers.PreTrainedModel`` object (left exactly as found afterwards).
        tokenizer: the model object's tokenizer (needed for texts).
        data: None (the embedded sample, or ``dataset``), a corpus path (the CLI's
            ``--data``), a list or iterable of strings (packed into windows of n tokens; read
            lazily), or token ids [N, n] (tensor or array, or a tokenizer's output with
            ``input_ids`` and ``attention_mask``; n is then their width).
        seq_len: n, tokens per sequence, special tokens included (the paper: 512).
        num_sequences: sequences to analyse, capped by what the data holds (the paper's
            10,000).
        precision: stop once the 95% half-width of every mean c value the figures use is
            below this; num_sequences stays the cap.
        batch_size: sequences per forward pass.
        auto_batch: a batch that does not fit the free memory (estimated before the first
            batch) is cut to the largest that fits, and one that still runs out of memory is
            halved, instead of stopping with a :class:`LowrankError` naming the batch size
            to use. The batch size changes the numbers only by float32 rounding in the
            forward pass (measured on MiniLM: c within 1e-7 across batch sizes).
        seed: analyse a seeded random sample of the sequences instead of the first ones.
        device: ``auto`` (CUDA when present; for a model object, where it already is),
            ``cpu`` or ``cuda``.
        dtype: ``float32`` (default for a model loaded by name), ``float16`` or
            ``bfloat16`` (CUDA); for a model object, its own dtype (never converted).
        policy, keep_short, dataset, split: as the CLI's ``--policy``, ``--keep-short``,
            ``--dataset`` and ``--split``.
        out: the run folder to write (None: nothing is written; the CLI defaults to
            ``runs/<model>-<dataset>``).
        overwrite: replace a run folder of another configuration.
        resume: continue the partial run saved in ``out``.
        checkpoint_every: save the accumulators in ``out`` every N sequences (default:
            after each minute of work).
        shard: ``"i/N"`` or ``(i, N)``: the i-th (1-based) of N contiguous, disjoint parts
            of the sequences; combine the parts with :func:`merge`.
        plot: draw the run's figures into ``<out>/figures`` (needs ``out``).
        label: the run's name in figures and tables (default: model and corpus names).
        keep_per_sequence: also keep every sequence's singular values,
            ``singular_values_per_sequence`` [N, layers, heads, n] (float32, in spectrum.npz
            with ``out``), for statistics of your own; one process, not resumed.
        progress: show a progress bar (``tqdm.auto``).
        attention_mask: [N, n] 0/1 mask for token ids given as a bare tensor.
        backend, verbose: under torchrun, the torch.distributed backend and whether every
            rank logs its messages.
        command: the command run.json records (the CLI passes its command line; default:
            this Python call).

    Returns:
        The run as a :class:`~lowrank.families.spectrum.result.SpectrumResult` (``res.path`` is
        ``out``, or None).

    Raises:
        LowrankError: a bad option or input, in the CLI's one-line form.
        RunInterrupted: Ctrl-C or SIGTERM; the finished sequences are in
            ``<out>/checkpoint.npz`` and ``resume=True`` continues them.
    """
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.families.spectrum.workflow import Inputs, run_spectrum
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.objects import settle_config

    config = settle_config(InputConfig.of(values), model, data, dtype=dtype)
    folder = values["out"]
    if folder is None:
        for name in ("resume", "plot"):
            if values[name]:
                raise LowrankError(f"{flag(name)} needs a run folder: give out=")
    return run_spectrum(
        config,
        Inputs(model, tokenizer, data, attention_mask),
        out=folder,
        overwrite=overwrite,
        plot=plot,
        precision=values["precision"],
        command=command if command is not None else python_call(spectrum, call),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        shard=values["shard"],
        resume=resume,
        checkpoint_every=checkpoint_every,
        backend=backend,
        verbose=verbose,
        progress=progress,
        auto_batch=auto_batch,
        label=label,
        keep_per_sequence=keep_per_sequence,
    )


def merge(
    parts: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    *,
    command: str | None = None,
) -> SpectrumResult:
    """Combine the shards of one run (``spectrum(..., shard=(i, N))``) exactly.

    Means and variances merge with Chan et al.'s parallel formula, so the merged run equals
    the run over all sequences at once (up to float64 rounding). A set missing some shards
    merges with a warning (logged) and covers their sequences only.

    Args:
        parts: the shards' run folders, in any order.
        out: the folder for the merged run (None: nothing written).
        overwrite: replace a run folder of another configuration.
        command: the command run.json records (default: this Python call).

    Raises:
        LowrankError: fewer than two parts, runs of different models, corpora, n or
            sequence policies, a shard given twice, or a damaged folder.
    """
    from lowrank.families.spectrum.merge import merge_folders
    from lowrank.runs.locks import hold
    from lowrank.runs.writing import check_out_dir, check_writable, write_run

    given = [parts] if isinstance(parts, str | os.PathLike) else parts
    if (
        not isinstance(given, Iterable)
        or isinstance(given, bytes)
        or not all(isinstance(p, str | os.PathLike) for p in given)
    ):
        raise LowrankError(
            f"parts={parts!r}: give the shards' run folders as a list of paths or strings"
        )
    folders = [Path(p) for p in given]
    if out is not None:
        check_writable(Path(out))  # before reading the parts
    meta, arrays, complete = merge_folders(folders)
    meta["identity"] = meta["identity"] | {"merged": True}
    meta["command"] = command or (
        f"lowrank.merge([{', '.join(repr(str(f)) for f in folders)}]"
        + (f", out={str(out)!r})" if out is not None else ")")
    )
    folder = Path(out) if out is not None else None
    if folder is not None:
        with hold(folder):  # one writer per folder
            check_out_dir(folder, meta["identity"], overwrite)
            write_run(folder, meta, arrays, npz=FORMAT.npz, overwrite=overwrite)
    if not complete:
        log.warning(
            "not every shard of the run was given; the merged run covers "
            f"{meta['num_sequences']} sequences"
        )
    return SpectrumResult(meta, arrays, folder)
