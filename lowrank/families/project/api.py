"""``lowrank.project``: how well JL and Linformer projections approximate real attention.

>>> import lowrank
>>> res = lowrank.project("minilm", num_sequences=2, seq_len=128, k=[16, 32])  # doctest: +SKIP
>>> res.summary(at=32, kind="theorem2")                                       # doctest: +SKIP

The function takes ``lowrank project``'s options (declared once in
:mod:`lowrank.families.project.options`, checked there with one message per mistake) and
returns a :class:`ProjectionResult`; ``out`` writes the CLI's run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.families.project.options import OPTIONS, k_grid
from lowrank.families.project.result import ProjectionResult
from lowrank.inputs.config import PAPER_SEQ_LEN, DatasetName, Device, DType, Policy
from lowrank.maths.names import ESTIMATORS, SHARINGS

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.objects import DataInput, ModelInput

__all__ = ["ProjectionResult", "project"]


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
    dtype: DType | None = None,
    num_sequences: int = 16,
    k: int | Sequence[int] | None = None,
    method: str | Sequence[str] = ("gaussian", "rademacher", "sparse", "mean-pool", "svd"),
    estimator: str | Sequence[str] = ESTIMATORS,
    draws: int = 3,
    delta: float = 1.0,
    proj_seed: int = 0,
    sharing: str | Sequence[str] = SHARINGS,
    model_effect: bool = True,
    heatmap_k: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    label: str | None = None,
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
        dtype: ``float32`` (default for a model loaded by name), ``float16`` or ``bfloat16``
            (CUDA); a model object keeps its own. P, Q, K and V are then measured in float32
            and every norm in float64.
        k: projected dimensions, each in 1..n, no repeats (taken in increasing order);
            None: 32, 64, 128, 256 cut to k < n (logged).
        method: projections (``lowrank.maths.names.METHODS``).
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
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.families.project.approximation import ProjectionSpec
    from lowrank.families.project.workflow import project_identity, run_project
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.objects import in_memory, memory_identity, prepared_inputs, settle_config
    from lowrank.inputs.options import require_out
    from lowrank.maths.sketches import check_k_range
    from lowrank.runs.provenance import provenance_record
    from lowrank.runs.writing import check_out_dir

    config = settle_config(InputConfig.of(values), model, data, dtype=dtype)
    ks = tuple(k_grid(values["k"], config.seq_len))
    check_k_range(ks, config.seq_len)
    if heatmap_k is not None and heatmap_k not in ks:
        raise LowrankError(f"{named('heatmap_k', heatmap_k)} is not one of {flag('k')} {list(ks)}")
    folder = require_out(values)
    spec = ProjectionSpec(
        values["method"], ks, draws, values["delta"], proj_seed, values["estimator"]
    )
    spec.check(config.seq_len)
    sharings = values["sharing"]
    identity = project_identity(config, spec, sharings)
    if folder is not None and not in_memory(model, data):
        check_out_dir(folder, identity, overwrite)  # before loading anything
    provenance = provenance_record(project, call, command)
    with prepared_inputs(model, tokenizer, data, config, attention_mask=attention_mask) as prep:
        prep.require_full_length("project")
        identity |= memory_identity(model, data, prep)
        if folder is not None:
            check_out_dir(folder, identity, overwrite)
        meta, arrays = run_project(
            prep, config, spec, sharings, model_effect, heatmap_k, identity, provenance, progress
        )
    res = ProjectionResult(meta, arrays)
    if label is not None:
        res.config["label"] = label
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res
