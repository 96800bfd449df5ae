"""``lowrank.scaling``: does the rank of attention grow like log n? The Python front door."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from lowrank.errors import LowrankError
from lowrank.inputs.config import DatasetName, Device, DType
from lowrank.inputs.options import (
    MAX_GIB,
    MIN_SEQ_LEN,
    check_choices,
    check_float,
    check_fraction,
    check_int,
    check_list,
    check_positive,
    check_seed,
)
from lowrank.lengths.result import ScalingResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.memory import DataInput, ModelInput

__all__ = ["ScalingResult", "scaling"]


def scaling(
    model: ModelInput = "minilm",
    tokenizer: PreTrainedTokenizerBase | None = None,
    data: DataInput = None,
    *,
    dataset: DatasetName | None = None,
    split: str = "test",
    seq_len: Sequence[int] = (32, 64, 128, 256, 512),
    num_sequences: int = 16,
    seed: int | None = None,
    tau: float = 0.1,
    fixed_index: int | None = None,
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    precision: float | None = None,
    batch_size: int | None = None,
    memory_budget: float | None = None,
    device: Device = "auto",
    dtype: DType | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> ScalingResult:
    """Rank of attention against the sequence length n, on the same documents at every n.

    Every document long enough for the largest n is cut to its first n tokens for every n;
    each n is a spectrum run. Per n, layer and head: the ranks for 90% and 99% of the
    normalised cumulative sum, effective and stable rank, c at n/4 and at a fixed index,
    and the rank k the head output needs (``||PV - (PV)_k|| / ||PV|| <= tau``). Each rank
    measure is fitted with ``a + b ln n`` and ``a n^beta`` per layer and for the model, and a
    verdict is named only when AIC and the held-out largest n agree in 95% of bootstrap
    resamples of documents (see ``lowrank scaling --help``).

    Args:
        model: a preset name, hub id, local folder, or a ``transformers.PreTrainedModel``
            (left exactly as found).
        tokenizer: the tokenizer of a model object (or one replacing a named model's own).
        data: ``--data`` (a path), or texts: a list or any iterable of strings (documents).
            Token ids are refused: each document is cut to every n.
        seq_len: the lengths n (``--seq-len``), at least three; sorted (with a log line)
            when given out of order.
        dtype: ``--dtype``; None is float32 for a model loaded by name and the model's own
            dtype for a model object.
        out: the run folder to write (``<out>/n<n>/``, ``scaling.npz``, ``run.json``); None
            writes nothing.
        overwrite: replace another run in ``out``.
        plot: also draw the scaling figures into ``<out>/figures`` (needs ``out``).
        progress: a tqdm bar per n; False silences it.
        command: the command line ``run.json`` records (the CLI passes its own); None
            records this call.

    The other options are those of ``lowrank scaling`` (``--num-sequences``, ``--seed``,
    ``--tau``, ``--fixed-index``, ``--bootstrap``, ``--bootstrap-seed``, ``--precision``,
    ``--batch-size``, ``--memory-budget``, ``--device``, ``--dataset``, ``--split``), with
    the same defaults and checks.

    Returns:
        a :class:`ScalingResult`: arrays named as in ``scaling.npz`` (e.g. ``rank90`` [S, D,
        L, H], ``output_rank_mean`` [G, S]), ``summary(at=n)``, ``report()``, ``plot()``,
        ``save()``; ``runs[n]`` holds the spectrum run of each n.

    Raises:
        LowrankError: any bad option or input, with the CLI's one-line message.
    """
    options = dict(locals())
    from lowrank.inputs.config import SpectrumConfig
    from lowrank.inputs.memory import (
        is_memory_data,
        is_memory_model,
        is_token_data,
        model_label,
        settle_config,
    )
    from lowrank.lengths.workflow import ScalingSpec, run_scaling, scaling_identity
    from lowrank.runs.provenance import Provenance
    from lowrank.runs.writing import check_out_dir

    if seed is not None:
        check_seed("--seed", seed)
    check_fraction("--tau", tau)
    if fixed_index is not None:
        check_int("--fixed-index", fixed_index, low=1)
    check_int("--bootstrap", bootstrap, low=50)
    check_seed("--bootstrap-seed", bootstrap_seed)
    if precision is not None:
        check_positive("--precision", precision)
    if batch_size is not None:
        check_int("--batch-size", batch_size, low=1)
    if memory_budget is not None:
        check_float("--memory-budget", memory_budget, low=0.0, open_low=True, high=MAX_GIB)
    check_choices("--device", [device], get_args(Device))
    if dtype is not None:
        check_choices("--dtype", [dtype], get_args(DType))
    if dataset is not None:
        check_choices("--dataset", [dataset], get_args(DatasetName))
    check_int("--num-sequences", num_sequences, low=2)
    ns = check_list(
        "--seq-len", [seq_len] if isinstance(seq_len, int) else seq_len, low=MIN_SEQ_LEN
    )
    if plot and out is None:
        raise LowrankError("plot draws into the run folder: give out= as well")
    if is_memory_data(data) and is_token_data(data):
        raise LowrankError(
            "scaling cuts each document to every n, so it needs texts, a path or a dataset as "
            "data, not token ids"
        )
    spec = ScalingSpec(
        ns=ns,
        tau=tau,
        fixed_index=fixed_index,
        bootstrap=bootstrap,
        bootstrap_seed=bootstrap_seed,
        batch_size=batch_size,
        memory_budget=memory_budget,
    )
    spec.check()
    config = SpectrumConfig(
        model=model_label(model),
        dataset=dataset,
        data=None if data is None or is_memory_data(data) else os.fspath(data),  # type: ignore[arg-type]
        split=split,
        seq_len=max(ns),
        num_sequences=num_sequences,
        batch_size=batch_size or 1,
        seed=seed,
        policy="document",
        device=device,
        dtype=dtype or "float32",
    )
    config = settle_config(config, model, data, dtype=dtype)
    if out is not None and not is_memory_data(data):
        identity = scaling_identity(config, spec)
        if is_memory_model(model):
            identity["model_object"] = f"{type(model).__name__}:{model_label(model)}"
        check_out_dir(Path(out), identity, overwrite)
    provenance = Provenance.of(scaling, options, command)
    res = run_scaling(model, tokenizer, data, config, spec, precision, provenance, progress)
    if out is not None:
        res.save(out, overwrite=overwrite)
        if plot:
            res.figures = res.write_figures()
    return res
