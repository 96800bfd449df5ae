"""``lowrank.compare``: low-rank against sparse, LSH, kernel and Nystrom attention, from
Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank.families.compare.options import OPTIONS
from lowrank.families.compare.result import CompareResult
from lowrank.inputs.config import PAPER_SEQ_LEN, DatasetName, Device, DType, Policy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.families.compare.names import Metric, PinvMethod, SupportMethod
    from lowrank.inputs.objects import DataInput, ModelInput

__all__ = ["CompareResult", "compare"]


def compare(
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
    budget: int | Sequence[int] = (16, 32, 64, 128),
    families: str | Sequence[str] = "all",
    lsh_rounds: int = 2,
    globals: int = 2,
    nystrom_pinv: PinvMethod = "iterative",
    scatterbrain_sparse: SupportMethod = "lsh",
    scatterbrain_split: float = 0.5,
    metric: Metric = "output",
    focus_budget: int | None = None,
    draw_seed: int = 0,
    workers: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    label: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> CompareResult:
    """Every approximation family against the real attention, head by head, per budget.

    For every family at every budget b (about n b numbers per n x n attention) and every
    (layer, head): ``||P~ - P||_F / ||P||_F``, the head-output error ``||P~V - PV|| / ||PV||``,
    the scale-free output error and the output cosine, from the captured Q, K, V and P;
    means and spreads over sequences, with each head's entropy, sink mass, c at b and
    effective rank, and the winner per head (see ``lowrank compare --help``).

    Args:
        model: a preset name, hub id, local folder, or a ``transformers.PreTrainedModel``
            (left exactly as found).
        tokenizer: the tokenizer of a model object (or one replacing a named model's own);
            optional with token ids.
        data: ``--data`` (a path), texts (a list or any iterable of strings), or token ids
            ``[N, n]`` (n then sets ``seq_len``).
        budget: ``--budget``, one or several b in 1..n; sorted (with a log line) when given
            out of order.
        families: ``--families``: ``"all"``, comma-separated names, or a list of names.
        globals: ``--globals``, the global tokens of local-global.
        dtype: ``--dtype``: float32 (the default for a model loaded by name), or float16 /
            bfloat16 on CUDA (refused on the CPU); a model object keeps its own dtype. The
            captured Q, K, V and P are converted to float64 for every error.
        out: the run folder to write (``compare.npz``, ``run.json``); None writes nothing.
        overwrite: replace another run in ``out``.
        plot: also draw the comparison figures into ``<out>/figures`` (needs ``out``).
        progress: a tqdm bar over the sequences; False silences it.
        command: the command line ``run.json`` records (the CLI passes its own); None
            records this call.

    The other options are those of ``lowrank compare`` (same names with underscores, same
    defaults and checks).

    Returns:
        a :class:`CompareResult`: arrays named as in ``compare.npz`` (e.g. ``output_error_mean``
        [F, K, L, H], ``entropy_mean`` [L, H], ``winner`` [K, L, H]), ``summary(at=b)``,
        ``report()``, ``plot()``, ``heatmap()``, ``save()``.

    Raises:
        LowrankError: any bad option or input, with the CLI's one-line message.
    """
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.families.compare.spec import CompareSpec
    from lowrank.families.compare.workflow import compare_identity, run_compare
    from lowrank.inputs.config import InputConfig
    from lowrank.inputs.objects import is_memory_data, is_memory_model, model_label, settle_config
    from lowrank.inputs.options import require_out
    from lowrank.runs.provenance import Provenance
    from lowrank.runs.writing import check_out_dir

    spec = CompareSpec(
        budgets=values["budget"],
        families=values["families"],
        rounds=lsh_rounds,
        globals_=globals,
        pinv=nystrom_pinv,
        support=scatterbrain_sparse,
        split=values["scatterbrain_split"],
        metric=metric,
        focus=focus_budget,
        seed=draw_seed,
    )
    folder = require_out(values)
    config = settle_config(InputConfig.of(values), model, data, dtype=dtype)
    spec.check(config.seq_len)
    if folder is not None and not is_memory_data(data):
        identity = compare_identity(config, spec)
        if is_memory_model(model):
            identity["model_object"] = f"{type(model).__name__}:{model_label(model)}"
        check_out_dir(folder, identity, overwrite)
    provenance = Provenance.of(compare, call, command)
    res = run_compare(model, tokenizer, data, config, spec, provenance, workers, progress)
    if label is not None:
        res.config["label"] = label
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res
