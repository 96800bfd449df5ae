"""The Python API of ``lowrank spectrum`` and ``lowrank merge``.

>>> import lowrank
>>> res = lowrank.spectrum("minilm", num_sequences=8, seq_len=128)   # doctest: +SKIP
>>> res.summary().head()                                              # doctest: +SKIP

:func:`spectrum` takes the CLI's options (same names with underscores, same defaults, same
checks and one-line :class:`~lowrank.LowrankError` messages), and besides a model name or
folder an in-memory ``transformers`` model with its tokenizer, and besides a corpus path
texts or token ids (see :mod:`lowrank.inputs.memory`). It returns a
:class:`~lowrank.spectra.result.SpectrumResult` and writes a run folder only when given
``out``. The CLI command is a thin layer over it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from lowrank.errors import LowrankError, require_finite_positive
from lowrank.inputs.config import (
    PAPER_NUM_SEQUENCES,
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    DType,
    Policy,
    SpectrumConfig,
    checked_config,
)
from lowrank.inputs.options import check_choices, check_int
from lowrank.runs.provenance import python_call
from lowrank.spectra.result import SpectrumResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.memory import DataInput, ModelInput

Backend = Literal["gloo", "nccl"]
log = logging.getLogger(__name__)

__all__ = ["SpectrumResult", "merge", "spectrum"]


def spectrum(
    model: ModelInput = "minilm",
    tokenizer: PreTrainedTokenizerBase | None = None,
    data: DataInput = None,
    *,
    seq_len: int = PAPER_SEQ_LEN,
    num_sequences: int | None = None,
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
        num_sequences: sequences to analyse, capped by what the data holds (None: the CLI's
            default, 10,000).
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
        progress: show a progress bar (``tqdm.auto``).
        attention_mask: [N, n] 0/1 mask for token ids given as a bare tensor.
        backend, verbose: under torchrun, the torch.distributed backend and whether every
            rank logs its messages.
        command: the command run.json records (the CLI passes its command line; default:
            this Python call).

    Returns:
        The run as a :class:`~lowrank.spectra.result.SpectrumResult` (``res.path`` is
        ``out``, or None).

    Raises:
        LowrankError: a bad option or input, in the CLI's one-line form.
        RunInterrupted: Ctrl-C or SIGTERM; the finished sequences are in
            ``<out>/checkpoint.npz`` and ``resume=True`` continues them.
    """
    from lowrank.inputs.memory import settle_config
    from lowrank.spectra.workflow import Inputs, run_spectrum

    options = dict(locals())
    if num_sequences is None:
        num_sequences = PAPER_NUM_SEQUENCES
    config = spectrum_config(
        model=model,
        data=data,
        seq_len=seq_len,
        num_sequences=num_sequences,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        policy=policy,
        keep_short=keep_short,
        dataset=dataset,
        split=split,
    )
    config = settle_config(config, model, data, dtype=dtype)
    if precision is not None:
        require_finite_positive("--precision", precision)
    if checkpoint_every is not None:
        check_int("--checkpoint-every", checkpoint_every, low=1)
    if backend is not None:
        check_choices("--backend", [backend], get_args(Backend))
    folder = Path(out) if out is not None else None
    if folder is None:
        for flag, given in (("--resume", resume), ("--plot", plot)):
            if given:
                raise LowrankError(f"{flag} needs a run folder: give out=")
    return run_spectrum(
        config,
        Inputs(model, tokenizer, data, attention_mask),
        out=folder,
        overwrite=overwrite,
        plot=plot,
        precision=precision,
        command=command if command is not None else python_call(spectrum, options),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        shard=parse_shard(shard),
        resume=resume,
        checkpoint_every=checkpoint_every,
        backend=backend,
        verbose=verbose,
        progress=progress,
        auto_batch=bool(auto_batch),
    )


def spectrum_config(
    *,
    model: object,
    data: object,
    seq_len: int,
    num_sequences: int,
    batch_size: int,
    seed: int | None,
    device: str,
    dtype: str | None,
    policy: str,
    keep_short: bool,
    dataset: str | None,
    split: str,
) -> SpectrumConfig:
    """A :class:`SpectrumConfig` from the options, each checked with the CLI's message.

    ``model`` and ``data`` only fill the config's strings (names and paths; objects are
    settled by :func:`lowrank.inputs.memory.settle_config`).
    """
    return checked_config(
        model=model if isinstance(model, str) else "model",
        dataset=dataset,
        data=os.fspath(data) if isinstance(data, str | os.PathLike) else None,
        split=split,
        seq_len=seq_len,
        num_sequences=num_sequences,
        batch_size=batch_size,
        seed=seed,
        policy=policy,
        keep_short=keep_short,
        device=device,
        dtype=dtype or "float32",
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
    from lowrank.runs.merge import merge_folders
    from lowrank.runs.writing import check_out_dir, check_writable, write_run

    folders = [Path(p) for p in ([parts] if isinstance(parts, str | os.PathLike) else parts)]
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
        check_out_dir(folder, meta["identity"], overwrite)
        write_run(folder, meta, arrays)
    if not complete:
        log.warning(
            "not every shard of the run was given; the merged run covers "
            f"{meta['num_sequences']} sequences"
        )
    return SpectrumResult(meta, arrays, folder)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2/8"`` or ``(2, 8)`` -> (2, 8), checked (1 <= i <= N)."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(part) for part in shard.split("/"))
        except ValueError:
            raise LowrankError(f"--shard {shard!r}: write it as i/N, e.g. 2/8") from None
        text = shard
    else:
        try:
            i, n = (check_int("--shard", v) for v in shard)
        except (TypeError, ValueError):
            raise LowrankError(f"--shard {shard!r}: give (i, N), e.g. (2, 8)") from None
        text = f"{i}/{n}"
    if n < 1 or not 1 <= i <= n:
        raise LowrankError(f"--shard {text}: need 1 <= i <= N")
    return i, n
