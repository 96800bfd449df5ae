"""``lowrank.project`` and ``lowrank.verify``: the projection family's front door.

>>> import lowrank
>>> res = lowrank.project("minilm", num_sequences=2, seq_len=128, k=[16, 32])  # doctest: +SKIP
>>> res.summary(at=32, kind="theorem2")                                       # doctest: +SKIP

Each function takes the CLI command's options (the flag names with underscores, the same
defaults), checks them here, in one place, with the CLI's one-line messages (the CLI calls
these functions), and returns a result object; ``out`` writes the CLI's run folder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lowrank.errors import LowrankError, require_finite_positive
from lowrank.inputs.config import (
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    Policy,
    SpectrumConfig,
    checked_config,
)
from lowrank.inputs.options import check_choices, check_int, check_list, check_seed
from lowrank.projections.approximation import ESTIMATORS, ProjectionSpec, check_k_range
from lowrank.projections.result import ProjectionResult, VerifyResult
from lowrank.projections.sketches import METHODS, SHARINGS
from lowrank.runs.provenance import package_versions
from lowrank.runs.writing import check_out_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.memory import DataInput, ModelInput
    from lowrank.inputs.prepared import Prepared

log = logging.getLogger(__name__)
N = TypeVar("N", int, float)

# The CLI's defaults (lowrank/cli/projections.py shows these).
PROJECT_K: tuple[int, ...] = (32, 64, 128, 256)
PROJECT_METHODS: tuple[str, ...] = ("gaussian", "rademacher", "sparse", "mean-pool", "svd")
PROJECT_ESTIMATORS: tuple[str, ...] = ESTIMATORS
PROJECT_SHARINGS: tuple[str, ...] = SHARINGS
VERIFY_EPS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
VERIFY_K: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
VERIFY_BETAS: tuple[float, ...] = (0.1, 1.0, 4.0, 16.0)


def project(
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
    num_sequences: int = 16,
    k: int | Sequence[int] = PROJECT_K,
    method: str | Sequence[str] = PROJECT_METHODS,
    estimator: str | Sequence[str] = PROJECT_ESTIMATORS,
    draws: int = 3,
    delta: float = 1.0,
    proj_seed: int = 0,
    sharing: str | Sequence[str] = PROJECT_SHARINGS,
    model_effect: bool = True,
    heatmap_k: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    progress: bool = True,
    attention_mask: Any = None,
    command: str | None = None,
) -> ProjectionResult:
    """How well JL and Linformer projections approximate real attention, against k.

    The Python form of ``lowrank project`` (see its ``--help`` for the measurements):
    Theorem 1 errors ``||P M w - P w|| / ||P w||`` over the value columns w, Theorem 2 errors
    of the Linformer head output against the exact ``PV``, each with its scale-free error
    and cosine, beside the output floor and the zero and uniform attention baselines; with
    ``model_effect``, every layer's keys and values projected and the final hidden states
    compared with the exact model's.

    Args:
        model: a preset name, hub id or local folder, or an in-memory
            ``transformers.PreTrainedModel`` (left exactly as it was found).
        tokenizer: the model object's tokenizer (not needed for token ids).
        data: None (``dataset``), a corpus path, a list or iterable of texts, or token ids
            [N, n] (tensor, array, or a mapping with ``input_ids`` and ``attention_mask``).
        k: projected dimensions, each in 1..n, no repeats (taken in increasing order).
        method: projections (``lowrank.projections.sketches.METHODS``).
        estimator: Theorem 1 estimators, ``paper`` (P R^T R) and/or ``projector`` (P E^+ E).
        draws: draws of R per sequence for the random methods.
        delta: E = delta R, F = exp(-delta) R (Theorem 2's proof); finite, > 0.
        proj_seed: seed of the projection draws, 0 <= seed < 2**32.
        sharing: sharing strategies for the model-level effect.
        heatmap_k: the k of the layer x head heatmap (one of ``k``; default the middle one).
        out: None (nothing written) or the run folder to write (the CLI's ``--out``).
        overwrite: replace another run in ``out``.
        plot: also draw the figures into ``<out>/figures`` (needs ``out``).
        progress: show tqdm progress bars.
        attention_mask: [N, n] 0/1 mask for token ids given as a bare tensor or array.
        command: the command line run.json records (the CLI passes its own).

    The other options are the corpus options of ``lowrank spectrum``.

    Returns:
        A :class:`ProjectionResult`; its arrays are projection.npz's ([K, layers, heads]
        statistics, [K, layers, heads, N x draws] samples).

    Raises:
        LowrankError: a bad option (the CLI's one-line message), model or corpus.
    """
    from lowrank.inputs.memory import memory_identity, prepared_inputs
    from lowrank.projections.project import project_identity, run_project

    config = _config(
        model, data, dataset, split, seq_len, num_sequences, batch_size, seed, policy, device
    )
    given_k = _k_values(k)
    methods = check_choices("--method", _names(method), METHODS)
    estimators = check_choices("--estimator", _names(estimator), ESTIMATORS)
    sharings = check_choices("--sharing", _names(sharing), SHARINGS)
    check_int("--draws", draws, low=1)
    _finite_positive("--delta", delta)
    check_seed("--proj-seed", proj_seed)
    ks = _ordered("--k", given_k)
    check_k_range(ks, config.seq_len)
    if heatmap_k is not None and heatmap_k not in ks:
        raise LowrankError(f"--heatmap-k {heatmap_k} is not one of --k {list(ks)}")
    folder = _out(out, plot)
    spec = ProjectionSpec(methods, ks, draws, float(delta), proj_seed, estimators)
    spec.check(config.seq_len)
    identity = project_identity(config, spec, sharings)
    if folder is not None and not _in_memory(model, data):
        check_out_dir(folder, identity, overwrite)  # before loading anything
    check_list("--k", given_k)  # every check passed: now say if the values were re-sorted
    provenance = _provenance(command, "project", model, data)
    with prepared_inputs(model, tokenizer, data, config, attention_mask=attention_mask) as prep:
        _full_length(prep, "project")
        identity |= memory_identity(model, data, prep)
        if folder is not None:
            check_out_dir(folder, identity, overwrite)
        meta, arrays = run_project(
            prep, config, spec, sharings, model_effect, heatmap_k, identity, provenance, progress
        )
    res = ProjectionResult(meta, arrays)
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res


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
    num_sequences: int = 2,
    eps: float | Sequence[float] = VERIFY_EPS,
    k: int | Sequence[int] = VERIFY_K,
    inverse_temperatures: float | Sequence[float] = VERIFY_BETAS,
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
        model, tokenizer, data: as :func:`project`.
        eps: error levels, each in (0, 1), no repeats (taken in increasing order).
        k: projected dimensions, each in 1..n, no repeats (taken in increasing order).
        inverse_temperatures: beta of synthetic attention softmax(beta X Y^T / sqrt(d)),
            each finite and > 0, no repeats.
        temperatures: deprecated name of ``inverse_temperatures`` (a warning).
        delta: Theorem 2's E = delta R, F = exp(-delta) R; finite, > 0.
        synthetic_count: synthetic matrices P per temperature (>= 1).
        jl_trials: random vector pairs for the JL rows (>= 1).
        target: the failure rate of the "k needed" table, in (0, 1).
        theorem2: also measure Theorem 2's statement on real attention.
        verify_seed: seed of the projection draws and synthetic matrices, 0 <= seed < 2**32.
        out, overwrite, plot, progress, attention_mask, command: as :func:`project`.

    Returns:
        A :class:`VerifyResult`: verify.npz's arrays ([series, eps, k]) and verify.csv's rows.

    Raises:
        LowrankError: a bad option (the CLI's one-line message), model or corpus.
    """
    from lowrank.inputs.memory import memory_identity, prepared_inputs
    from lowrank.projections.theorems import check_eps
    from lowrank.projections.verify import run_verify, verify_identity

    config = _config(
        model, data, dataset, split, seq_len, num_sequences, batch_size, seed, policy, device
    )
    levels = _numbers("--eps", eps)
    for e in levels:
        check_eps(e)
    given_k = _k_values(k)
    if temperatures is not None:
        log.warning("--temperatures is deprecated: use --inverse-temperatures (same values)")
        inverse_temperatures = temperatures
    betas = _numbers("--inverse-temperatures", inverse_temperatures)
    for beta in betas:
        if not (math.isfinite(beta) and beta > 0):
            raise LowrankError(
                f"--inverse-temperatures {beta} must be finite and > 0 (softmax(beta X Y^T))"
            )
    _finite_positive("--delta", delta)
    check_int("--synthetic-count", synthetic_count, low=1)
    check_int("--jl-trials", jl_trials, low=1)
    target_value = _number("--target", target)
    if not 0 < target_value < 1:
        raise LowrankError(f"--target {target} is outside (0, 1)")
    check_seed("--verify-seed", verify_seed)
    levels_sorted = list(_ordered("--eps", levels))
    ks = list(_ordered("--k", given_k))
    betas_sorted = list(_ordered("--inverse-temperatures", betas))
    check_k_range(ks, config.seq_len)
    folder = _out(out, plot)
    identity = verify_identity(
        config, levels_sorted, ks, betas_sorted, verify_seed, synthetic_count, float(delta)
    )
    if folder is not None and not _in_memory(model, data):
        check_out_dir(folder, identity, overwrite)
    # every check passed: now say which lists were re-sorted
    check_list("--eps", levels, integer=False)
    check_list("--k", given_k)
    check_list("--inverse-temperatures", betas, integer=False)
    provenance = _provenance(command, "verify", model, data)
    with prepared_inputs(model, tokenizer, data, config, attention_mask=attention_mask) as prep:
        _full_length(prep, "verify")
        identity |= memory_identity(model, data, prep)
        if folder is not None:
            check_out_dir(folder, identity, overwrite)
        meta, arrays, records, needed = run_verify(
            prep,
            config,
            levels_sorted,
            ks,
            betas_sorted,
            synthetic_count,
            jl_trials,
            target_value,
            theorem2,
            verify_seed,
            float(delta),
            identity,
            provenance,
            progress,
        )
    res = VerifyResult(meta, arrays, None, records, needed)
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res


# -- option checks shared by both ----------------------------------------------------------


def _config(
    model: ModelInput,
    data: DataInput,
    dataset: str | None,
    split: str,
    seq_len: int,
    num_sequences: int,
    batch_size: int,
    seed: int | None,
    policy: str,
    device: str,
) -> SpectrumConfig:
    """The corpus options checked and settled for these inputs (token ids fix n)."""
    from lowrank.inputs.memory import settle_config

    config = checked_config(
        dataset=dataset,
        split=split,
        seq_len=seq_len,
        num_sequences=num_sequences,
        batch_size=batch_size,
        seed=seed,
        policy=policy,
        device=device,
    )
    return settle_config(config, model, data)


def _k_values(values: int | Sequence[int]) -> list[int]:
    """``--k`` as whole numbers (their range, repeats and order are checked later)."""
    given = [values] if isinstance(values, int | Integral) else list(values)
    return [check_int("--k", _whole(v)) for v in given]


def _ordered(option: str, values: Sequence[N]) -> tuple[N, ...]:
    """A list option in increasing order: empty lists and repeats refused (the log line
    about re-sorting comes from ``check_list`` once every check has passed)."""
    return check_list(option, sorted(values), integer=False)


def _whole(value: object) -> object:
    """numpy integers as int (anything else as it is, for check_int to judge)."""
    return int(value) if isinstance(value, Integral) and not isinstance(value, bool) else value


def _names(values: str | Sequence[str]) -> tuple[str, ...]:
    """A list option given as ``"a,b"`` (as typed on the command line) or a sequence."""
    if isinstance(values, str):
        return tuple(v.strip() for v in values.split(",") if v.strip())
    return tuple(values)


def _numbers(option: str, values: float | Iterable[float]) -> list[float]:
    """A number or a list of numbers, as floats; anything else is refused."""
    items = [values] if isinstance(values, int | float | Real) else list(values)
    return [_number(option, v) for v in items]


def _number(option: str, value: object) -> float:
    """One number (int or float, not bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LowrankError(f"{option} {value!r} must be a number")
    return float(value)


def _finite_positive(option: str, value: object) -> None:
    require_finite_positive(option, _number(option, value))


def _out(out: str | Path | None, plot: bool) -> Path | None:
    if out is None:
        if plot:
            raise LowrankError("plot=True draws into <out>/figures: pass out= as well")
        return None
    return Path(out)


def _full_length(prep: Prepared, command: str) -> None:
    """The projections act on n x n matrices P: refuse padded sequences (token ids with an
    attention mask that has zeros)."""
    lengths, n = prep.sequences.lengths, prep.sequences.input_ids.shape[1]
    short = int((lengths < n).sum())
    if short:
        raise LowrankError(
            f"lowrank {command} needs full-length sequences: {short} of {len(lengths)} are "
            f"padded (attention_mask), shorter than n = {n}; give unpadded token ids"
        )


def _in_memory(model: object, data: object) -> bool:
    from lowrank.inputs.memory import is_memory_data, is_memory_model

    return is_memory_model(model) or is_memory_data(data)


def _provenance(command: str | None, name: str, model: object, data: object) -> dict[str, Any]:
    """run.json's ``command``, ``created`` and ``versions`` (and the start time)."""
    from lowrank.inputs.memory import is_memory_data, model_label

    if command is None:
        shown = "<in memory>" if is_memory_data(data) else repr(data)
        command = f"lowrank.{name}({model_label(model)!r}, data={shown}, ...)"  # type: ignore[arg-type]
    return {
        "start": time.perf_counter(),
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }


__all__ = ["ProjectionResult", "VerifyResult", "project", "verify"]
