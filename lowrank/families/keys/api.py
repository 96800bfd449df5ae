"""``lowrank.keys``: the low-rank structure of queries, keys, values and logits, pre- and
post-RoPE, and top-k attention from a few key dimensions, from Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.families.keys.options import DEFAULT_BUDGETS, OPTIONS
from lowrank.families.keys.result import KeysResult
from lowrank.inputs.config import PAPER_SEQ_LEN, DatasetName, Device, Policy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.objects import DataInput, ModelInput

__all__ = ["KeysResult", "keys"]


def keys(
    model: ModelInput = "minilm",
    tokenizer: PreTrainedTokenizerBase | None = None,
    data: DataInput = None,
    *,
    dataset: DatasetName | None = None,
    split: str = "test",
    seq_len: int = PAPER_SEQ_LEN,
    num_sequences: int = 16,
    batch_size: int = 4,
    seed: int | None = None,
    policy: Policy = "auto",
    device: Device = "auto",
    rank_fraction: float = 0.9,
    ranks: int | Sequence[int] | None = None,
    budgets: float | Sequence[float] = DEFAULT_BUDGETS,
    queries: int = 64,
    keep_first: bool = True,
    calibration_data: Any = None,
    calibration_dataset: DatasetName | None = None,
    calibration_split: str | None = None,
    calibration_sequences: int | None = None,
    probs_rank: bool = True,
    bootstrap: int = 200,
    bootstrap_groups: int = 16,
    draw_seed: int = 0,
    resume: bool = False,
    checkpoint_every: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    label: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> KeysResult:
    """The low-rank structure of queries, keys, values and logits, pre- and post-RoPE, and
    what it buys for top-k attention (Loki, ShadowKV; see ``lowrank keys --help``).

    Per layer and head: PCA of the centred queries, keys (before and after the rotary
    embedding) and values pooled over every valid token, and the number of components for
    ``rank_fraction`` of the explained variance with bootstrap intervals over sequences;
    per sequence, the energy rank of the whole layer's key and value matrices; the logits'
    rank against the weights' W_Q W_K^T; and top-k attention from queries and keys projected
    on r principal components fitted on ``calibration_data``: recall of the exact top-k keys,
    attention mass and head-output error, against a random orthogonal basis and exact top-k.

    Args:
        model: a preset name, hub id, local folder, or a ``transformers.PreTrainedModel``
            (left exactly as found).
        tokenizer: the tokenizer of a model object (or one replacing a named model's own);
            optional with token ids.
        data: ``--data`` (a path), texts (a list or any iterable of strings), or token ids
            ``[N, n]`` (n then sets ``seq_len``).
        ranks: ``--ranks``, the r grid (default d/8, d/4, d/2); d (exact top-k) is always
            added.
        budgets: ``--budgets``, the k grid as fractions of a sequence's valid tokens.
        calibration_data: where top-k's PCA basis is fitted: a path, texts or token ids;
            None: the embedded sample of the other kind (reviews for articles, articles for
            reviews).
        out: the run folder to write (``keys.npz``, ``run.json``); None writes nothing.
        overwrite: replace another run in ``out``.
        resume: continue the partial run saved in ``out``.
        plot: also draw the keys figures into ``<out>/figures`` (needs ``out``).
        progress: a tqdm bar over the sequences of the three passes; False silences it.
        command: the command line ``run.json`` records (the CLI passes its own); None
            records this call.

    The other options are those of ``lowrank keys`` (same names with underscores, same
    defaults and checks).

    Returns:
        a :class:`KeysResult`: arrays named as in ``keys.npz`` (``key_rank90_pre``
        [layers, kv_heads], ...), ``summary()``, ``report()``, ``plot()``, ``save()``.

    Raises:
        LowrankError: any bad option or input, with the CLI's one-line message.
        RunInterrupted: Ctrl-C or SIGTERM; with ``out`` the passes done so far are in
            ``<out>/checkpoint.npz`` and ``resume=True`` continues them.
    """
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.core.options import flag
    from lowrank.errors import LowrankError
    from lowrank.families.keys.passes import Settings
    from lowrank.families.keys.workflow import Calibration, Job, run_keys
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.objects import settle_config
    from lowrank.inputs.options import require_out
    from lowrank.runs.provenance import Provenance

    folder = require_out(values)
    if resume and folder is None:
        raise LowrankError(f"{flag('resume')} continues a run folder: give {flag('out')} as well")
    settings = Settings(
        fraction=values["rank_fraction"],
        ranks=values["ranks"],
        budgets=values["budgets"],
        queries=queries,
        keep_first=keep_first,
        probs_rank=probs_rank,
        bootstrap=bootstrap,
        groups=bootstrap_groups,
        seed=draw_seed,
    )
    calibration = Calibration(
        calibration_data, calibration_dataset, calibration_split, calibration_sequences
    )
    job = Job(
        config=settle_config(InputConfig.of(values), model, data),
        settings=settings,
        calibration=calibration,
        provenance=Provenance.of(keys, call, command),
        out=folder,
        overwrite=overwrite,
        resume=resume,
        checkpoint_every=checkpoint_every,
        label=label,
        progress=progress,
    )
    res = run_keys(model, tokenizer, data, job)
    if folder is not None and plot:
        res.draw()
    return res
