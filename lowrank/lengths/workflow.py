"""``lowrank scaling``: one spectrum run per n on nested windows, and the verdict on log n.

Every document long enough for the largest n is cut to its first n tokens for every n
(:func:`lowrank.lengths.fits.nested_windows`). Per n, one forward pass per batch streams each
layer's P through a :class:`ScalingSink`, which keeps the singular values of P (exactly as
``lowrank spectrum`` does) and of PV in float64, and drops P before the next layer: memory is
one layer's attention whatever the depth, and the batch is chosen from a memory estimate
(:func:`choose_batch`). Each n is written as a normal spectrum run folder ``<out>/n<n>/``;
the per-document rank measures, the fits and the verdicts go to ``<out>/scaling.npz`` and
``<out>/run.json`` (format ``lowrank-scaling``).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from lowrank.errors import LowrankError
from lowrank.hooks.attention import AttentionCall, capture, valid_blocks
from lowrank.lengths.fits import (
    ALL_MEASURES,
    C_MEASURES,
    MEASURE_LABELS,
    MEASURES,
    NestedWindows,
    Verdict,
    nested_windows,
    rank_measures,
    verdicts,
)
from lowrank.runs.stats import SpectrumStats
from lowrank.spectra.config import SpectrumConfig, heatmap_index
from lowrank.spectra.pipeline import SpectrumSink, half_width, is_out_of_memory, tracked

SCALING_FORMAT = "lowrank-scaling"
SCALING_NPZ = "scaling.npz"
GIB = 1024**3
MIN_SEQUENCES = 10  # --precision is checked from this many documents on, as in spectrum


@dataclass(frozen=True)
class ScalingSpec:
    """What ``lowrank scaling`` measures, beyond the model and corpus."""

    ns: tuple[int, ...] = (32, 64, 128, 256, 512)  # lengths, special tokens included
    tau: float = 0.1  # relative output error ||PV - (PV)_k|| / ||PV|| of output_rank
    fixed_index: int | None = None  # index of c_at_fixed; None: the smallest n
    bootstrap: int = 1000  # resamples of documents for every interval and verdict
    bootstrap_seed: int = 0
    batch_size: int | None = None  # None: the largest batch the memory estimate allows
    memory_budget: float | None = None  # GiB above the model; None: 1/4 of free memory

    @property
    def index(self) -> int:
        return self.fixed_index if self.fixed_index is not None else min(self.ns)

    def check(self) -> None:
        if len(set(self.ns)) < 3:
            raise LowrankError("--seq-len: give at least three lengths n, e.g. 32,64,128,256,512")
        if min(self.ns) < 2:
            raise LowrankError(f"--seq-len {min(self.ns)} is too short: use at least 2 tokens")
        if self.index > min(self.ns):
            raise LowrankError(
                f"--fixed-index {self.index} exceeds the smallest n = {min(self.ns)}: every n "
                "must have it"
            )
        if not 0 < self.tau < 1:
            raise LowrankError(f"--tau {self.tau}: choose a relative error in (0, 1)")


class ScalingSink(SpectrumSink):
    """The spectrum sink, plus the float64 singular values of each head's output PV.

    Attributes:
        spectra: (B, L, H, n) singular values of P (as :class:`SpectrumSink`).
        outputs: (B, L, H, r) singular values of PV, r = min(n, d), float64.
    """

    def __init__(self, batch: int, layers: int, heads: int, n: int) -> None:
        super().__init__(batch, layers, heads, n)
        self.outputs: torch.Tensor | None = None

    def __call__(self, call: AttentionCall) -> None:
        super().__call__(call)
        b, heads, n, d = call.value.shape
        if self.outputs is None:
            self.outputs = torch.zeros(
                b, self.spectra.shape[1], heads, min(n, d), dtype=torch.float64
            )
        for rows, block in valid_blocks(call):  # P was checked finite by the parent
            m = block.shape[-1]
            value = call.value[rows.to(call.value.device)][:, :, :m]  # (b, H, m, d)
            for h in range(heads):  # one head at a time: a float64 copy of P is 2x its size
                pv = block[:, h].double() @ value[:, h].double()  # (b, m, d) in float64
                s = torch.linalg.svdvals(pv)  # (b, min(m, d)), float64
                self.outputs[rows, call.layer, h, : s.shape[-1]] = s.cpu()


def estimate_bytes(
    batch: int, n: int, heads: int, hidden: int, head_dim: int, workers: int, cuda: bool
) -> int:
    """Peak working memory of one batch above the model's weights (float32 activations).

    One layer at a time: the scores, masked scores and P of the batch (3 B H n^2 floats);
    the float64 copies of the singular-value kernel (P, P P^T and LAPACK's copy of it: two
    matrices per CPU thread, or the whole batch on a GPU); the hidden states and feed-forward
    activations of one layer; PV in float64. Nothing depends on the number of layers but
    the (B, L, H, n) spectra, which are negligible. ``benchmarks/bench_scaling.py`` checks
    it against measured peaks.
    """
    attention = 3 * batch * heads * n * n * 4
    matrices = batch * heads if cuda else 2 * workers
    kernel = 3 * matrices * n * n * 8
    activations = 12 * batch * n * hidden * 4
    outputs = 2 * batch * heads * n * head_dim * 8
    return attention + kernel + activations + outputs


def default_budget(device: torch.device) -> int:
    """A quarter of the free memory (host RAM, or the GPU's), in bytes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    import psutil

    return int(psutil.virtual_memory().available // 4)


def estimate_for(loaded: Any, n: int, batch: int, device: torch.device) -> int:
    """:func:`estimate_bytes` for a loaded model on ``device``."""
    from lowrank.spectra.maths import default_workers

    config = loaded.model.config
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    head_dim = int(getattr(config, "head_dim", None) or hidden // max(loaded.num_heads, 1))
    cuda = device.type == "cuda"
    return estimate_bytes(batch, n, loaded.num_heads, hidden, head_dim, default_workers(), cuda)


def choose_batch(
    loaded: Any, n: int, budget: int, documents: int, device: torch.device
) -> tuple[int, int]:
    """The largest batch (at most ``documents``) whose :func:`estimate_for` fits ``budget``
    bytes, and that estimate; batch 1 when even one sequence does not fit."""
    batch = 1
    while batch < documents and estimate_for(loaded, n, batch + 1, device) <= budget:
        batch += 1
    return batch, estimate_for(loaded, n, batch, device)


@dataclass
class LengthResult:
    """What one n gave."""

    n: int
    stats: SpectrumStats
    measures: np.ndarray  # (used, L, H, 7) in ALL_MEASURES order
    used: int
    batch: int
    estimate_bytes: int
    seconds: float
    batches: int = 0
    half_width: float | None = None
    stopped_early: bool = False
    peak_bytes: int = 0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


def _forward(loaded: Any, ids: np.ndarray, device: torch.device) -> tuple[Any, Any]:
    """Spectra of P and PV, (b, L, H, n) and (b, L, H, r), of one unpadded batch."""
    n = ids.shape[1]
    sink = ScalingSink(len(ids), loaded.num_layers, loaded.num_heads, n)
    mask = torch.ones(ids.shape, dtype=torch.long, device=device)
    with torch.inference_mode(), capture(loaded.model, sink) as seen:
        loaded.model(input_ids=torch.from_numpy(ids).to(device), attention_mask=mask)
        calls = seen()
    if calls != loaded.num_layers or sink.outputs is None:
        raise LowrankError(
            f"captured {calls} attention layers of model '{loaded.source.name}', its config "
            f"says {loaded.num_layers}"
        )
    return sink.spectra, sink.outputs


def _forward_retrying(
    loaded: Any, ids: np.ndarray, device: torch.device, warn: Callable[[str], None]
) -> list[tuple[Any, Any]]:
    """:func:`_forward`, halving the batch (recursively) when it runs out of memory."""
    try:
        return [_forward(loaded, ids, device)]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if len(ids) == 1:
            raise LowrankError(
                f"out of memory on a single sequence of n = {ids.shape[1]}: use a smaller "
                "largest --seq-len, another --device, or a machine with more memory"
            ) from exc
        if device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(ids) // 2
        warn(f"out of memory on a batch of {len(ids)}: retrying as batches of {half}")
        return _forward_retrying(loaded, ids[:half], device, warn) + _forward_retrying(
            loaded, ids[half:], device, warn
        )


def analyse_length(
    loaded: Any,
    ids: np.ndarray,
    spec: ScalingSpec,
    batch: int,
    device: torch.device,
    precision: float | None,
    progress: Callable[[int], Any] = lambda k: None,
    warn: Callable[[str], None] = lambda m: None,
) -> LengthResult:
    """Spectra statistics and per-document rank measures of one n.

    Args:
        ids: (D, n) the nested windows of this n, in order.
        precision: stop once the 95% half-width of every mean c value the spectrum figures
            read (n/8, n/4, n/2 and the heatmap index) is below it, from
            :data:`MIN_SEQUENCES` documents on; None runs every document.
    """
    from lowrank.spectra.workflow import figure_indices

    total, n = ids.shape
    stats = SpectrumStats.empty(loaded.num_layers, loaded.num_heads, n, heatmap_index(n))
    rows: list[np.ndarray] = []
    result = LengthResult(n, stats, np.zeros(0), 0, batch, 0, 0.0, device=device.type)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for lo in range(0, total, batch):
        for s_p, s_pv in _forward_retrying(loaded, ids[lo : lo + batch], device, warn):
            stats = stats.add(s_p.numpy())
            rows.append(rank_measures(s_p, s_pv, n, spec.index, spec.tau).numpy())
        result.batches += 1
        done = min(lo + batch, total)
        progress(done - lo)
        if precision is not None and stats.count >= MIN_SEQUENCES:
            result.half_width = half_width(tracked(stats, figure_indices(n)))
            if result.half_width < precision:
                result.stopped_early = done < total
                break
    if precision is not None and (result.half_width is None or result.half_width >= precision):
        result.half_width = half_width(tracked(stats, figure_indices(n)))
        result.notes.append(
            f"n = {n}: precision target {precision} not reached with {stats.count} documents "
            f"(half-width {result.half_width:.4g}): raise --num-sequences"
        )
    result.seconds = time.perf_counter() - began
    result.stats, result.used = stats, stats.count
    result.measures = np.concatenate(rows)
    if device.type == "cuda":
        result.peak_bytes = int(torch.cuda.max_memory_allocated(device))
    else:
        # ru_maxrss: the process's peak resident set so far, in KiB on Linux
        result.peak_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return result


@dataclass
class _Context:
    """One invocation: what every run folder records."""

    config: SpectrumConfig
    spec: ScalingSpec
    out: Path
    command: str
    versions: dict[str, str]
    created: str
    started: float


def _length_meta(
    ctx: _Context, prep: Any, config: SpectrumConfig, res: LengthResult, precision: float | None
) -> dict[str, Any]:
    """run.json of the spectrum run of one n: the keys ``lowrank spectrum`` writes."""
    import socket

    from lowrank.runs.folders import FORMAT, FORMAT_VERSION
    from lowrank.spectra.workflow import precision_record

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "command": ctx.command,
        "created": ctx.created,
        "identity": config.identity() | {"scaling": _identity_extra(ctx.spec)},
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": res.used,
        "heatmap_index": heatmap_index(res.n),
        "shard": None,
        "world_size": 1,
        "backend": None,
        "ranks": [
            {
                "rank": 0,
                "host": socket.gethostname(),
                "device": str(prep.device),
                "threads": None if prep.device.type == "cuda" else torch.get_num_threads(),
                "batches": res.batches,
                "num_sequences": res.used,
                "compute_seconds": round(res.seconds, 3),
            }
        ],
        "resumed_from": None,
        "precision": precision_record(precision, res, res.n),
        "versions": ctx.versions,
        "analysis_seconds": round(res.seconds, 3),
        "elapsed_seconds": round(time.perf_counter() - ctx.started, 3),
        "scaling": {"summary": "..", "n": res.n, **_memory_record(res)},
    }


def _memory_record(res: LengthResult) -> dict[str, Any]:
    return {
        "batch_size": res.batch,
        "estimated_peak_bytes": res.estimate_bytes,
        "measured_peak_bytes": res.peak_bytes,
        "measured": "CUDA max_memory_allocated for this n"
        if res.device == "cuda"
        else "process peak resident set so far (ru_maxrss)",
    }


def _identity_extra(spec: ScalingSpec) -> dict[str, Any]:
    """The spec's fields that determine the numbers (not the batch or the memory budget)."""
    return {"ns": list(spec.ns), "tau": spec.tau, "fixed_index": spec.index}


def _tokenize(tokenizer: Any, documents: list[str]) -> list[list[int]]:
    from lowrank.inputs.hub import quiet

    out: list[list[int]] = []
    for i in range(0, len(documents), 256):
        with quiet():  # documents longer than the model are fine: they are cut below
            out.extend(tokenizer(documents[i : i + 256], add_special_tokens=False)["input_ids"])
    return out


def _prepare(config: SpectrumConfig, spec: ScalingSpec) -> tuple[Any, NestedWindows, dict]:
    """Corpus, model and nested windows, checking every option on the way."""
    from lowrank.inputs.corpora import Sequences, load_corpus, special_tokens
    from lowrank.inputs.models import load_model
    from lowrank.inputs.prepared import Prepared
    from lowrank.spectra.pipeline import resolve_device

    device = resolve_device(config.device)
    if config.dtype != "float32" and device.type == "cpu":
        raise LowrankError(f"--dtype {config.dtype} needs --device cuda; use float32 on the CPU")
    corpus = load_corpus(config.dataset, config.data, config.split)
    loaded = load_model(config.model, str(device), config.dtype)
    loaded.check_seq_len(max(spec.ns))
    prefix, suffix = special_tokens(loaded.tokenizer)
    docs = _tokenize(loaded.tokenizer, corpus.documents)
    windows = nested_windows(docs, spec.ns, prefix, suffix, config.num_sequences, config.seed)
    policy = {
        "policy": "nested",
        "special_tokens": {"start": prefix, "end": suffix},
        "order": "corpus" if config.seed is None else f"seeded sample (seed {config.seed})",
        "documents": len(corpus.documents),
        "available": windows.qualified,
        "qualified_for_n": max(spec.ns),
        "longest_document_tokens": windows.longest,
        "document_indices": windows.documents.tolist(),
        "num_sequences": len(windows.documents),
    }
    empty = Sequences(np.zeros((0, 0), np.int64), np.zeros(0, np.int64), policy)
    return Prepared(corpus, loaded, empty, device), windows, policy


def run_scaling(
    config: SpectrumConfig,
    spec: ScalingSpec,
    out: Path,
    overwrite: bool,
    plot: bool,
    precision: float | None,
    command: str,
    versions: dict[str, str],
    created: str,
) -> Path:
    """``lowrank scaling``: a spectrum run per n, then fits, verdicts, figures."""
    from lowrank.runs.folders import check_out_dir, write_run

    spec.check()
    spec = replace(spec, ns=tuple(sorted(set(spec.ns))))
    ctx = _Context(config, spec, out, command, versions, created, time.perf_counter())
    identity = config.identity() | {"scaling": _identity_extra(spec)}
    identity.pop("seq_len")
    check_out_dir(out, identity, overwrite)
    prep, windows, policy = _prepare(config, spec)
    docs = len(windows.documents)
    specials = len(policy["special_tokens"]["start"]) + len(policy["special_tokens"]["end"])
    click.echo(
        f"{windows.qualified} of {policy['documents']} documents have the "
        f"{max(spec.ns) - specials} tokens n = {max(spec.ns)} needs; analysing {docs}, each cut "
        f"to its first n tokens for n = {', '.join(map(str, spec.ns))}",
        err=True,
    )
    if docs < 2:
        raise LowrankError(
            f"only {docs} document qualifies: the bootstrap over documents needs at least two"
        )
    if docs < config.num_sequences:
        _warn(f"{docs} documents qualify, fewer than --num-sequences {config.num_sequences}")
    if docs < 10:
        _warn(
            f"only {docs} documents: a bootstrap over so few clusters gives rough intervals "
            "and verdicts; use 10 or more"
        )
    budget = int(spec.memory_budget * GIB) if spec.memory_budget else default_budget(prep.device)
    results = [
        _one_length(ctx, prep, windows.windows[n], policy, budget, precision, overwrite)
        for n in spec.ns
    ]
    used = min(r.used for r in results)
    per_doc = _per_document(results, used)
    found = verdicts(
        {m: per_doc[m] for m in MEASURES}, spec.ns, spec.bootstrap, spec.bootstrap_seed
    )
    arrays = _arrays(results, found, per_doc, windows, spec, used)
    meta = _summary_meta(ctx, prep, identity, results, found, windows, policy, used, precision)
    write_run(out, meta, arrays, npz=SCALING_NPZ)
    print_summary(read_scaling_arrays(arrays, meta), out)
    if plot:
        from lowrank.plots.lengths import plot_scaling_folder

        for path in plot_scaling_folder(out):
            click.echo(f"figure: {path}")
    return out


def _one_length(
    ctx: _Context,
    prep: Any,
    ids: np.ndarray,
    policy: dict[str, Any],
    budget: int,
    precision: float | None,
    overwrite: bool,
) -> LengthResult:
    """Analyse the (D, n) windows of one n and write them as the spectrum run ``<out>/n<n>``."""
    from tqdm import tqdm

    from lowrank.inputs.corpora import Sequences
    from lowrank.runs.folders import check_out_dir, stats_arrays, write_run

    docs, n = ids.shape
    spec = ctx.spec
    if spec.batch_size is not None:
        batch = min(spec.batch_size, docs)
        estimate = estimate_for(prep.loaded, n, batch, prep.device)
    else:
        batch, estimate = choose_batch(prep.loaded, n, budget, docs, prep.device)
        if estimate > budget:
            _warn(
                f"n = {n}: one sequence needs about {estimate / GIB:.2f} GiB, above the "
                f"budget of {budget / GIB:.2f} GiB: running one at a time"
            )
    with tqdm(total=docs, unit="doc", desc=f"n = {n}", file=sys.stderr) as bar:
        res = analyse_length(
            prep.loaded, ids, spec, batch, prep.device, precision, bar.update, _warn
        )
    res.estimate_bytes = estimate
    for note in res.notes:
        _warn(note)
    config_n = replace(ctx.config, seq_len=n, num_sequences=docs, batch_size=batch)
    prep.sequences = Sequences(ids[: res.used], np.full(res.used, n, np.int64), policy)
    meta = _length_meta(ctx, prep, config_n, res, precision)
    folder = ctx.out / f"n{n}"
    check_out_dir(folder, meta["identity"], overwrite)
    write_run(folder, meta, stats_arrays(res.stats) | {"input_ids": ids[: res.used]})
    click.echo(
        f"n = {n}: {res.used} documents in {res.seconds:.1f} s (batch {batch}, estimated "
        f"{estimate / GIB:.2f} GiB, peak {res.peak_bytes / GIB:.2f} GiB) -> {folder}",
        err=True,
    )
    return res


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _per_document(results: list[LengthResult], used: int) -> dict[str, np.ndarray]:
    """measure -> (S, D, L, H): the documents every n analysed (the first ``used``)."""
    stacked = np.stack([r.measures[:used] for r in results])  # (S, D, L, H, 7)
    return {m: stacked[..., k] for k, m in enumerate(ALL_MEASURES)}


def _arrays(
    results: list[LengthResult],
    found: dict[str, list[Verdict]],
    per_doc: dict[str, np.ndarray],
    windows: NestedWindows,
    spec: ScalingSpec,
    used: int,
) -> dict[str, np.ndarray]:
    """The arrays of scaling.npz (documented in the README, "lowrank scaling")."""
    layers = next(iter(per_doc.values())).shape[2]
    groups = [f"layer {i + 1}" for i in range(layers)] + ["model"]
    arrays: dict[str, np.ndarray] = {
        "ns": np.array(spec.ns),
        "groups": np.array(groups),
        "measures": np.array(MEASURES),
        "c_measures": np.array(C_MEASURES),
        "documents": windows.documents,
        "sequences_used": np.array([r.used for r in results]),
        "fit_documents": np.array(used),
        "tau": np.array(spec.tau),
        "fixed_index": np.array(spec.index),
        "bootstrap": np.array(spec.bootstrap),
    }
    for m in ALL_MEASURES:
        arrays[m] = per_doc[m]  # (S, D, L, H)
    for m in C_MEASURES:
        values = per_doc[m]
        arrays[f"{m}_mean"] = np.concatenate(
            [values.mean(axis=(1, 3)).T, values.mean(axis=(1, 2, 3))[None]]
        )  # (G, S)
    for m, rows in found.items():
        arrays[f"{m}_mean"] = np.stack([v.mean for v in rows])  # (G, S)
        arrays[f"{m}_interval"] = np.stack([v.interval for v in rows])  # (G, S, 2)
        arrays[f"{m}_log_params"] = np.array([v.log.params for v in rows])  # (G, 2)
        arrays[f"{m}_power_params"] = np.array([v.power.params for v in rows])
        arrays[f"{m}_delta_aic"] = np.array([v.delta_aic for v in rows])  # (G,)
        arrays[f"{m}_aic_support"] = np.array([v.aic_support for v in rows])
        arrays[f"{m}_heldout_error"] = np.array([(v.heldout_log, v.heldout_power) for v in rows])
        arrays[f"{m}_heldout_support"] = np.array([v.heldout_support for v in rows])
        arrays[f"{m}_beta_interval"] = np.array([v.beta_interval for v in rows])  # (G, 2)
        arrays[f"{m}_verdict"] = np.array([v.text() for v in rows])
    return arrays


def _summary_meta(
    ctx: _Context,
    prep: Any,
    identity: dict[str, Any],
    results: list[LengthResult],
    found: dict[str, list[Verdict]],
    windows: NestedWindows,
    policy: dict[str, Any],
    used: int,
    precision: float | None,
) -> dict[str, Any]:
    from lowrank.lengths.fits import AIC_MARGIN, HELDOUT_TOLERANCE, LEVEL, SUPPORT

    base = prep.meta(replace(ctx.config, seq_len=max(ctx.spec.ns)))
    for key in ("seq_len", "batch_size", "sequence_policy"):
        base.pop(key, None)
    return {
        "format": SCALING_FORMAT,
        "format_version": 1,
        "command": ctx.command,
        "created": ctx.created,
        "identity": identity,
        "config": ctx.config.to_json() | {"scaling": asdict(ctx.spec)},
        **base,
        "causal": bool(prep.loaded.causal),
        "ns": list(ctx.spec.ns),
        "runs": {str(r.n): f"n{r.n}" for r in results},
        "sequence_policy": policy,
        "documents": {
            "qualified": windows.qualified,
            "analysed": len(windows.documents),
            "longest_tokens": windows.longest,
            "used_per_n": {str(r.n): r.used for r in results},
            "fit": used,
        },
        "tau": ctx.spec.tau,
        "fixed_index": ctx.spec.index,
        "precision": precision,
        "verdict_rule": {
            "models": ["a + b ln n", "a n^beta"],
            "fitted_to": "per-n means over documents (and heads, and layers for 'model')",
            "aic_margin": AIC_MARGIN,
            "support": SUPPORT,
            "heldout_tolerance": HELDOUT_TOLERANCE,
            "bootstrap": ctx.spec.bootstrap,
            "bootstrap_seed": ctx.spec.bootstrap_seed,
            "resampled": "documents, with replacement (the same documents at every n)",
            "interval_level": LEVEL,
        },
        "verdicts": {
            m: {v.group: {"verdict": v.text(), "evidence": v.evidence()} for v in rows}
            for m, rows in found.items()
        },
        "lengths": {
            str(r.n): {
                "seconds": round(r.seconds, 3),
                "documents": r.used,
                "stopped_early": r.stopped_early,
                "half_width": r.half_width,
                **_memory_record(r),
            }
            for r in results
        },
        "versions": ctx.versions,
        "elapsed_seconds": round(time.perf_counter() - ctx.started, 3),
    }


# --- reading back and printing ------------------------------------------------------------


@dataclass
class ScalingRun:
    """A ``lowrank scaling`` folder read back (arrays named as in scaling.npz)."""

    path: Path | None
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def ns(self) -> list[int]:
        return [int(n) for n in self.arrays["ns"]]

    @property
    def groups(self) -> list[str]:
        return [str(g) for g in self.arrays["groups"]]

    @property
    def causal(self) -> bool:
        return bool(self.meta.get("causal"))

    @property
    def label(self) -> str:
        model = str(self.meta["model"]["name"])
        if self.meta["model"].get("kind") == "local":
            model = Path(model.rstrip("/")).name or model
        return f"{model} / {self.meta['corpus']['dataset']}"

    def verdict(self, measure: str, group: str = "model") -> str:
        return str(self.arrays[f"{measure}_verdict"][self.groups.index(group)])

    def plot(self, measure: str = "output_rank", group: str = "model", ax: Any = None) -> Any:
        """One measure against n with both fits (:func:`lowrank.plots.lengths.plot_measure`)."""
        from lowrank.plots.lengths import plot_measure

        return plot_measure(self, measure, group, ax=ax)

    def summary(self) -> Any:
        """A pandas DataFrame, one row per (measure, group): the means at every n, the
        verdict, beta and its interval, the AIC difference and the held-out errors."""
        import pandas as pd

        rows = []
        for m in MEASURES:
            for g, group in enumerate(self.groups):
                row: dict[str, Any] = {"measure": m, "group": group}
                for s, n in enumerate(self.ns):
                    row[f"n={n}"] = float(self.arrays[f"{m}_mean"][g, s])
                lo, hi = self.arrays[f"{m}_beta_interval"][g]
                log_err, power_err = self.arrays[f"{m}_heldout_error"][g]
                row |= {
                    "verdict": self.verdict(m, group),
                    "beta": float(self.arrays[f"{m}_power_params"][g, 1]),
                    "beta_lo": float(lo),
                    "beta_hi": float(hi),
                    "delta_aic": float(self.arrays[f"{m}_delta_aic"][g]),
                    "aic_support": float(self.arrays[f"{m}_aic_support"][g]),
                    "heldout_error_log": float(log_err),
                    "heldout_error_power": float(power_err),
                    "heldout_support": float(self.arrays[f"{m}_heldout_support"][g]),
                }
                rows.append(row)
        return pd.DataFrame(rows)


def read_scaling_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> ScalingRun:
    return ScalingRun(None, meta, arrays)


def read_scaling_run(path: str | Path) -> ScalingRun:
    """Read and check a ``lowrank scaling`` folder."""
    from lowrank.runs.folders import read_meta, read_npz

    folder = Path(path)
    meta = read_meta(folder, SCALING_FORMAT)
    arrays = read_npz(folder / SCALING_NPZ)
    missing = [
        k
        for k in ("ns", "groups", *ALL_MEASURES, *(f"{m}_verdict" for m in MEASURES))
        if k not in arrays
    ]
    if missing:
        raise LowrankError(f"'{folder / SCALING_NPZ}' lacks arrays {', '.join(missing)}")
    return ScalingRun(folder, meta, arrays)


def _evidence(run: ScalingRun, m: str, g: int) -> str:
    """``AIC: power better by 35.1, 100% agree | held-out n = 512: power off by 5.3 (3%),
    log by 71, 100% agree``."""
    delta = float(run.arrays[f"{m}_delta_aic"][g])
    better = "log" if delta > 0 else "power"
    log_err, power_err = run.arrays[f"{m}_heldout_error"][g]
    errs = {"log": log_err, "power": power_err}
    other = "power" if better == "log" else "log"
    last = abs(float(run.arrays[f"{m}_mean"][g, -1]))
    relative = errs[better] / last if last else float("inf")
    return (
        f"AIC: {better} better by {abs(delta):.1f}, "
        f"{run.arrays[f'{m}_aic_support'][g]:.0%} agree | held-out n = {run.ns[-1]}: "
        f"{better} off by {errs[better]:.2g} ({relative:.0%}), {other} by {errs[other]:.2g}, "
        f"{run.arrays[f'{m}_heldout_support'][g]:.0%} agree"
    )


def print_summary(run: ScalingRun, out: Path) -> None:
    """Per measure: the means at every n and the verdict per layer and for the model."""
    ns = run.ns
    used = int(run.arrays["fit_documents"])
    draws = int(run.arrays["bootstrap"])
    import textwrap

    header = (
        f"Fits of a + b ln n ('log') and a n^beta ('power') to the mean over {used} "
        f"documents (and heads) at n = {', '.join(map(str, ns))}. A verdict is named only "
        f"when AIC prefers a model by >= 2 and the model fitted to the smaller n predicts "
        f"n = {ns[-1]} better, each in >= 95% of {draws} bootstrap resamples of documents, "
        "and that prediction is within 10% of the observed mean; beta ± is the half-width "
        "of its 95% bootstrap percentile interval. Below each row: the AIC difference and "
        "the held-out |error| at the largest n (relative to the mean), each with the share "
        "of resamples that agree."
    )
    click.echo("\n" + textwrap.fill(header, 100))
    if run.causal:
        click.echo(
            "causal decoder: P is lower-triangular; see 'Causal attention' in the README "
            "for what its spectrum measures"
        )
    for m in MEASURES:
        title = MEASURE_LABELS[m].replace("tau", f"{float(run.arrays['tau']):g}")
        click.echo(f"\n{title}")
        click.echo("  group   " + "".join(f"{'n=' + str(n):>8}" for n in ns) + "   verdict")
        for g, group in enumerate(run.groups):
            means = "".join(f"{v:>8.2f}" for v in run.arrays[f"{m}_mean"][g])
            click.echo(f"  {group:<8}{means}   {run.verdict(m, group)}")
            click.echo(f"  {'':<8}{'':>{8 * len(ns)}}   {_evidence(run, m, g)}")
    for m in C_MEASURES:
        index = int(run.arrays["fixed_index"])
        title = "c at index n/4" if m == "c_at_quarter" else f"c at index {index} (fixed)"
        click.echo(f"\n{title} (mean over documents and heads; not fitted)")
        click.echo("  group   " + "".join(f"{'n=' + str(n):>8}" for n in ns))
        for g, group in enumerate(run.groups):
            values = "".join(f"{v:>8.3f}" for v in run.arrays[f"{m}_mean"][g])
            click.echo(f"  {group:<8}{values}")
    click.echo(
        f"\nrun folder: {out}  ({out / 'run.json'}, {out / SCALING_NPZ}; one spectrum run per n: "
        f"{', '.join(str(out / f'n{n}') for n in ns)})"
    )
