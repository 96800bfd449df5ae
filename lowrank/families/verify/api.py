"""``lowrank.verify``: Theorems 1 and 2 checked numerically, from Python.

>>> import lowrank
>>> res = lowrank.verify("minilm", num_sequences=1, seq_len=128, k=[16, 32])  # doctest: +SKIP
>>> res.summary(statement="jl-rows")                                         # doctest: +SKIP

The function takes ``lowrank verify``'s options (declared once in
:mod:`lowrank.families.verify.options`) and returns a :class:`VerifyResult`; ``out`` writes
the CLI's run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lowrank.core.options import flag
from lowrank.families.verify.options import OPTIONS, k_grid
from lowrank.families.verify.result import VerifyResult
from lowrank.inputs.config import PAPER_SEQ_LEN, DatasetName, Device, DType, Policy

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.objects import DataInput, ModelInput

log = logging.getLogger(__name__)

__all__ = ["VerifyResult", "verify"]


def verify(
    model: ModelInput = "minilm",
    tokenizer: PreTrainedTokenizerBase | None = None,
    data: DataInput = None,
    *,
    dataset: DatasetName | None = None,
    split: str = "test",
    seq_len: int = PAPER_SEQ_LEN,
    batch_size: int = 4,
    seed: int | None = None,
    policy: Policy = "auto",
    device: Device = "auto",
    dtype: DType | None = None,
    num_sequences: int = 2,
    eps: float | Sequence[float] = (0.1, 0.2, 0.3, 0.5),
    k: int | Sequence[int] | None = None,
    inverse_temperatures: float | Sequence[float] = (0.1, 1.0, 4.0, 16.0),
    temperatures: float | Sequence[float] | None = None,
    delta: float = 1.0,
    synthetic_count: int = 24,
    jl_trials: int = 2000,
    target: float = 0.05,
    theorem2: bool = True,
    verify_seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    label: str | None = None,
    progress: bool = True,
    attention_mask: Any = None,
    command: str | None = None,
) -> VerifyResult:
    """Check Theorems 1 and 2 numerically: their bounds against measured failure rates.

    The Python form of ``lowrank verify`` (see its ``--help`` for the statements): on real
    attention (five kinds of vectors w), on synthetic attention at several inverse
    temperatures, and for the JL lemma itself, each rate with a cluster-robust 95% interval
    and, where a proof gives a bound, a Holm-corrected verdict.

    Args:
        model, tokenizer, data: as :func:`lowrank.project`.
        dtype: ``float32`` (default for a model loaded by name), ``float16`` or ``bfloat16``
            (CUDA) for the forward pass; a model object keeps its own. The checks themselves
            run in float64 on the CPU whatever the model's dtype.
        eps: error levels, each in (0, 1), no repeats (taken in increasing order).
        k: projected dimensions, each in 1..n, no repeats (taken in increasing order);
            None: 16, 32, ..., 512 cut to k <= n (logged).
        inverse_temperatures: beta of synthetic attention softmax(beta X Y^T / sqrt(d)),
            each finite and > 0, no repeats.
        temperatures: deprecated name of ``inverse_temperatures`` (a warning).
        delta: Theorem 2's E = delta R, F = exp(-delta) R; finite, > 0.
        synthetic_count: synthetic matrices P per temperature (>= 1).
        jl_trials: random vector pairs for the JL rows (>= 1).
        target: the failure rate of the "k needed" table, in (0, 1).
        theorem2: also measure Theorem 2's statement on real attention.
        verify_seed: seed of the projection draws and synthetic matrices, 0 <= seed < 2**32.
        out, overwrite, plot, progress, attention_mask, command: as :func:`lowrank.project`.

    Returns:
        A :class:`VerifyResult`: verify.npz's arrays ([series, eps, k]) and verify.csv's rows.

    Raises:
        LowrankError: a bad option (the CLI's one-line message), model or corpus.
    """
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.families.verify.workflow import run_verify, verify_identity
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.objects import in_memory, memory_identity, prepared_inputs, settle_config
    from lowrank.inputs.options import require_out
    from lowrank.maths.sketches import check_k_range
    from lowrank.runs.provenance import provenance_record
    from lowrank.runs.writing import check_out_dir

    config = settle_config(InputConfig.of(values), model, data, dtype=dtype)
    betas = values["inverse_temperatures"]
    if values["temperatures"] is not None:
        log.warning(
            f"{flag('temperatures')} is deprecated: use {flag('inverse_temperatures')} (same "
            f"values)"
        )
        betas = values["temperatures"]
    levels, ks = list(values["eps"]), k_grid(values["k"], config.seq_len)
    check_k_range(ks, config.seq_len)
    folder = require_out(values)
    delta = values["delta"]
    identity = verify_identity(config, levels, ks, list(betas), verify_seed, synthetic_count, delta)
    if folder is not None and not in_memory(model, data):
        check_out_dir(folder, identity, overwrite)
    provenance = provenance_record(verify, call, command)
    with prepared_inputs(model, tokenizer, data, config, attention_mask=attention_mask) as prep:
        prep.require_full_length("verify")
        identity |= memory_identity(model, data, prep)
        if folder is not None:
            check_out_dir(folder, identity, overwrite)
        meta, arrays, records, needed = run_verify(
            prep,
            config,
            levels,
            ks,
            list(betas),
            synthetic_count,
            jl_trials,
            values["target"],
            theorem2,
            verify_seed,
            delta,
            identity,
            provenance,
            progress,
        )
    res = VerifyResult(meta, arrays, None, records, needed)
    if label is not None:
        res.config["label"] = label
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res
