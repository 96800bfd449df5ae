"""``lowrank.scaling``: does the rank of attention grow like log n? The Python front door."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank.errors import LowrankError
from lowrank.families.scaling.options import OPTIONS
from lowrank.families.scaling.result import ScalingResult
from lowrank.inputs.config import DatasetName, Device, DType
from lowrank.maths.windows import Policy as WindowPolicy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.objects import DataInput, ModelInput

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
    verdict_bootstrap: int = 200,
    bootstrap_seed: int = 0,
    windows: WindowPolicy = "matched",
    windows_per_document: int = 1,
    window_seed: int = 0,
    position_control: bool = True,
    precision: float | None = None,
    batch_size: int | None = None,
    memory_budget: float | None = None,
    device: Device = "auto",
    dtype: DType | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    label: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> ScalingResult:
    """Rank of attention against the sequence length n, on the same windows at every n.

    Every document long enough for the largest n gives a window at a drawn offset (the same
    start for every n; ``windows="openings"`` starts at its first token), cut to every n;
    each n is a spectrum run. Per n, layer and head: the ranks for 90% and 99% of the
    normalised cumulative sum, effective and stable rank, c at n/4 and at a fixed index,
    and the rank k the head output needs (``||PV - (PV)_k|| / ||PV|| <= tau``). Each rank
    measure is fitted with ``a + b ln n``, ``a n^beta`` and ``C - c n^-gamma`` per layer and
    for the model; the verdict names a model only when it alone fits (held-out largest n
    within 10%, no curvature in ln n) or is preferred in 95% of resamples of documents, and
    says ``none fits`` or ``cannot tell`` otherwise; fewer than five lengths give no verdict.
    The position control measures the middle n again at shifted position ids (see
    ``lowrank scaling --help``).

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
    ``--tau``, ``--fixed-index``, ``--bootstrap``, ``--verdict-bootstrap``,
    ``--bootstrap-seed``, ``--windows``, ``--windows-per-document``, ``--window-seed``,
    ``--position-control``, ``--precision``, ``--batch-size``, ``--memory-budget``,
    ``--device``, ``--dataset``, ``--split``), with the same defaults and checks.

    Returns:
        a :class:`ScalingResult`: arrays named as in ``scaling.npz`` (e.g. ``rank90`` [S, W,
        L, H], ``output_rank_mean`` [G, S]), ``summary(at=n)``, ``report()``, ``plot()``,
        ``save()``; ``runs[n]`` holds the spectrum run of each n.

    Raises:
        LowrankError: any bad option or input, with the CLI's one-line message.
    """
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.families.scaling.workflow import ScalingSpec, run_scaling, scaling_identity
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.objects import (
        is_memory_data,
        is_memory_model,
        is_token_data,
        model_label,
        settle_config,
    )
    from lowrank.inputs.options import require_out
    from lowrank.runs.provenance import Provenance
    from lowrank.runs.writing import check_out_dir

    ns = values["seq_len"]
    folder = require_out(values)
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
        verdict_bootstrap=verdict_bootstrap,
        windows=windows,
        windows_per_document=windows_per_document,
        window_seed=window_seed,
        position_control=position_control,
        batch_size=batch_size,
        memory_budget=memory_budget,
    )
    spec.check()
    config = InputConfig.of(values, seq_len=max(ns), batch_size=batch_size or 1, policy="document")
    config = settle_config(config, model, data, dtype=dtype)
    if folder is not None and not is_memory_data(data):
        identity = scaling_identity(config, spec)
        if is_memory_model(model):
            identity["model_object"] = f"{type(model).__name__}:{model_label(model)}"
        check_out_dir(folder, identity, overwrite)
    provenance = Provenance.of(scaling, call, command)
    res = run_scaling(model, tokenizer, data, config, spec, precision, provenance, progress)
    if label is not None:
        res.config["label"] = label
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res
