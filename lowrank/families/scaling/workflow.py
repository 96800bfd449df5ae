"""``lowrank scaling``: one spectrum run per n on nested windows, and the verdict on log n.

Every document long enough for the largest n is cut to its first n tokens for every n
(:func:`lowrank.families.scaling.measures.nested_windows`). Each n is measured by
:func:`lowrank.families.scaling.collect.analyse_length` and kept as a normal spectrum run (written
to ``<out>/n<n>/``); the per-document rank measures, the fits and the verdicts make the
``lowrank-scaling`` run (``<out>/scaling.npz`` and ``<out>/run.json``). Nothing here prints or
writes: :func:`run_scaling` returns a :class:`~lowrank.families.scaling.result.ScalingResult`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lowrank.core.options import check_seq_len, flag, named
from lowrank.errors import LowrankError
from lowrank.families.scaling.collect import (
    LengthResult,
    analyse_length,
    choose_batch,
    default_budget,
    estimate_for,
)
from lowrank.families.scaling.fits import Verdict, verdicts
from lowrank.families.scaling.format import FORMAT
from lowrank.families.scaling.measures import (
    ALL_MEASURES,
    C_MEASURES,
    MEASURES,
    NestedWindows,
    nested_windows,
)
from lowrank.families.scaling.result import ScalingResult
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.inputs.config import InputConfig, heatmap_index

if TYPE_CHECKING:
    from lowrank.inputs.objects import DataInput, ModelInput
    from lowrank.inputs.prepared import Prepared
    from lowrank.runs.provenance import Provenance

log = logging.getLogger(__name__)

GIB = 1024**3


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
        """The checks between options (each option's own range is checked by the API)."""
        if len(set(self.ns)) < 3:
            given = ",".join(map(str, self.ns))
            raise LowrankError(
                f"{named('seq_len', given)}: give at least three lengths n, e.g. 32,64,128,256,512"
            )
        check_seq_len("--seq-len", min(self.ns))
        if self.index > min(self.ns):
            raise LowrankError(
                f"{named('fixed_index', self.index)} exceeds the smallest n = {min(self.ns)}: "
                f"every n "
                "must have it"
            )
        if not 0 < self.tau < 1:
            raise LowrankError(f"{named('tau', self.tau)}: choose a relative error in (0, 1)")


def identity_extra(spec: ScalingSpec) -> dict[str, Any]:
    """The spec's fields that determine the numbers (not the batch or the memory budget)."""
    return {"ns": list(spec.ns), "tau": spec.tau, "fixed_index": spec.index}


def scaling_identity(config: InputConfig, spec: ScalingSpec) -> dict[str, Any]:
    """``identity`` of the scaling run.json (before any in-memory inputs add theirs)."""
    identity = config.identity() | {"scaling": identity_extra(spec)}
    identity.pop("seq_len")
    return identity


@dataclass
class _Context:
    """One invocation: what every run folder records."""

    config: InputConfig
    spec: ScalingSpec
    precision: float | None
    provenance: Provenance
    identity: dict[str, Any]  # of the scaling run
    started: float
    progress: bool


def run_scaling(
    model: ModelInput,
    tokenizer: Any,
    data: DataInput,
    config: InputConfig,
    spec: ScalingSpec,
    precision: float | None,
    provenance: Provenance,
    progress: bool = True,
) -> ScalingResult:
    """``lowrank scaling`` in memory: a spectrum run per n, then fits and verdicts.

    ``spec.check()`` and the option checks of :func:`lowrank.families.scaling.api.scaling` come
    first; the model (a name or an object, left as found) and the documents are prepared by
    :func:`prepare_documents`.
    """
    from lowrank.inputs.objects import is_memory_data, is_memory_model, model_label
    from lowrank.inputs.state import preserved

    spec.check()
    spec = replace(spec, ns=tuple(sorted(set(spec.ns))))
    started = time.perf_counter()
    with preserved(model):
        prep, windows, policy = prepare_documents(model, tokenizer, data, config, spec)
        identity = scaling_identity(config, spec)
        if is_memory_model(model):
            identity["model_object"] = f"{type(model).__name__}:{model_label(model)}"
        if is_memory_data(data):
            biggest = windows.windows[max(spec.ns)]
            identity["data_digest"] = hashlib.sha256(biggest.tobytes()).hexdigest()[:32]
        ctx = _Context(config, spec, precision, provenance, identity, started, progress)
        docs = len(windows.documents)
        specials = len(policy["special_tokens"]["start"]) + len(policy["special_tokens"]["end"])
        log.info(
            f"{windows.qualified} of {policy['documents']} documents have the "
            f"{max(spec.ns) - specials} tokens n = {max(spec.ns)} needs; analysing {docs}, "
            f"each cut to its first n tokens for n = {', '.join(map(str, spec.ns))}"
        )
        if docs < 2:
            raise LowrankError(
                f"only {docs} document qualifies: the bootstrap over documents needs at least two"
            )
        if docs < config.num_sequences:
            log.warning(
                f"{docs} documents qualify, fewer than "
                f"{named('num_sequences', config.num_sequences)}"
            )
        if docs < 10:
            log.warning(
                f"only {docs} documents: a bootstrap over so few clusters gives rough intervals "
                "and verdicts; use 10 or more"
            )
        budget = (
            int(spec.memory_budget * GIB) if spec.memory_budget else default_budget(prep.device)
        )
        lengths = [_one_length(ctx, prep, windows.windows[n], policy, budget) for n in spec.ns]
    results = [r for r, _ in lengths]
    used = min(r.used for r in results)
    per_doc = _per_document(results, used)
    found = verdicts(
        {m: per_doc[m] for m in MEASURES}, spec.ns, spec.bootstrap, spec.bootstrap_seed
    )
    arrays = _arrays(results, found, per_doc, windows, spec, used)
    meta = _summary_meta(ctx, prep, results, found, windows, policy, used)
    return ScalingResult(meta, arrays, runs={r.n: run for r, run in lengths})


def _tokenize(tokenizer: Any, documents: list[str]) -> list[list[int]]:
    from lowrank.inputs.hub import quiet

    out: list[list[int]] = []
    for i in range(0, len(documents), 256):
        with quiet():  # documents longer than the model are fine: they are cut below
            out.extend(tokenizer(documents[i : i + 256], add_special_tokens=False)["input_ids"])
    return out


def _load(
    model: ModelInput, tokenizer: Any, data: DataInput, config: InputConfig, n: int
) -> Prepared:
    """Model and corpus (no sequences yet): a name or a model object, a path or texts."""
    from lowrank.core.device import resolve_device
    from lowrank.inputs.corpora import Sequences, load_corpus
    from lowrank.inputs.models import load_model
    from lowrank.inputs.objects import (
        check_vocabulary,
        is_memory_data,
        is_memory_model,
        is_token_data,
        memory_model,
        read_texts,
        text_corpus,
    )
    from lowrank.inputs.prepared import Prepared

    if is_memory_data(data) and is_token_data(data):
        raise LowrankError(
            "scaling cuts each document to every n, so it needs texts, a path or a dataset as "
            "data, not token ids"
        )
    if is_memory_model(model):
        loaded, device = memory_model(model, tokenizer, config)
    else:
        device = resolve_device(config.device)
        if config.dtype != "float32" and device.type == "cpu":
            raise LowrankError(
                f"{named('dtype', config.dtype)} needs {flag('device')} cuda; use float32 on the "
                f"CPU"
            )
        loaded = load_model(str(model), str(device), config.dtype)
    if tokenizer is not None:
        loaded.tokenizer = tokenizer
    if loaded.tokenizer is None:
        raise LowrankError("texts need a tokenizer: pass tokenizer= with the model object")
    check_vocabulary(loaded.tokenizer, loaded.model)
    loaded.check_seq_len(n)
    if is_memory_data(data):
        # read lazily: enough documents of the largest n's length (10x with a seed)
        wanted = replace(config, seq_len=n, policy="document", keep_short=False)
        texts = read_texts(data, loaded.tokenizer, wanted)  # type: ignore[arg-type]
        holder = "list" if isinstance(data, list | tuple) else type(data).__name__
        corpus = text_corpus(texts, f"{len(texts)} texts ({holder})")
    else:
        corpus = load_corpus(config.dataset, None if data is None else str(data), config.split)
    empty = Sequences(np.zeros((0, 0), np.int64), np.zeros(0, np.int64), {})
    kind = "memory" if is_memory_data(data) else None
    return Prepared(corpus, loaded, empty, device, kind)


def prepare_documents(
    model: ModelInput, tokenizer: Any, data: DataInput, config: InputConfig, spec: ScalingSpec
) -> tuple[Prepared, NestedWindows, dict[str, Any]]:
    """Model, corpus and nested windows, checking every option on the way.

    Returns:
        the prepared model and corpus (its ``sequences`` are set per n later), the nested
        windows, and the sequence policy every run.json records.
    """
    from lowrank.inputs.corpora import special_tokens

    prep = _load(model, tokenizer, data, config, max(spec.ns))
    tokenizer = prep.loaded.tokenizer
    prefix, suffix = special_tokens(tokenizer)
    docs = _tokenize(tokenizer, prep.corpus.documents)
    windows = nested_windows(docs, spec.ns, prefix, suffix, config.num_sequences, config.seed)
    policy = {
        "policy": "nested",
        "special_tokens": {"start": prefix, "end": suffix},
        "order": "corpus" if config.seed is None else f"seeded sample (seed {config.seed})",
        "documents": len(prep.corpus.documents),
        "available": windows.qualified,
        "qualified_for_n": max(spec.ns),
        "longest_document_tokens": windows.longest,
        "document_indices": windows.documents.tolist(),
        "num_sequences": len(windows.documents),
    }
    return prep, windows, policy


def _one_length(
    ctx: _Context, prep: Prepared, ids: np.ndarray, policy: dict[str, Any], budget: int
) -> tuple[LengthResult, SpectrumResult]:
    """Analyse the (D, n) windows of one n: its result and its spectrum run ``n<n>``."""
    from tqdm.auto import tqdm

    from lowrank.families.spectrum.stats import stats_arrays
    from lowrank.inputs.corpora import Sequences

    docs, n = ids.shape
    spec = ctx.spec
    if spec.batch_size is not None:
        batch = min(spec.batch_size, docs)
        estimate = estimate_for(prep.loaded, n, batch, prep.device)
    else:
        batch, estimate = choose_batch(prep.loaded, n, budget, docs, prep.device)
        if estimate > budget:
            log.warning(
                f"n = {n}: one sequence needs about {estimate / GIB:.2f} GiB, above the "
                f"budget of {budget / GIB:.2f} GiB: running one at a time"
            )
    with tqdm(total=docs, unit="doc", desc=f"n = {n}", disable=not ctx.progress) as bar:
        res = analyse_length(prep.loaded, ids, spec, batch, prep.device, ctx.precision, bar.update)
    res.estimate_bytes = estimate
    for note in res.notes:
        log.warning(note)
    config_n = replace(ctx.config, seq_len=n, num_sequences=docs, batch_size=batch)
    prep.sequences = Sequences(ids[: res.used], np.full(res.used, n, np.int64), policy)
    meta = _length_meta(ctx, prep, config_n, res)
    log.info(
        f"n = {n}: {res.used} documents in {res.seconds:.1f} s (batch {batch}, estimated "
        f"{estimate / GIB:.2f} GiB, peak {res.peak_bytes / GIB:.2f} GiB)"
    )
    arrays = stats_arrays(res.stats) | {"input_ids": ids[: res.used]}
    return res, SpectrumResult(meta, arrays, seconds=res.seconds)


def _length_meta(
    ctx: _Context, prep: Prepared, config: InputConfig, res: LengthResult
) -> dict[str, Any]:
    """run.json of the spectrum run of one n: the keys ``lowrank spectrum`` writes."""
    import socket

    from lowrank.families.spectrum.format import FORMAT as SPECTRUM
    from lowrank.families.spectrum.job import precision_record

    extra = {k: v for k, v in ctx.identity.items() if k in ("model_object", "data_digest")}
    return {
        **SPECTRUM.header(),
        "command": ctx.provenance.command,
        "created": ctx.provenance.created,
        "identity": config.identity() | {"scaling": identity_extra(ctx.spec)} | extra,
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
        "precision": precision_record(ctx.precision, res, res.n),
        "versions": ctx.provenance.versions,
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
    """The arrays of scaling.npz (documented in :class:`ScalingResult`)."""
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
    prep: Prepared,
    results: list[LengthResult],
    found: dict[str, list[Verdict]],
    windows: NestedWindows,
    policy: dict[str, Any],
    used: int,
) -> dict[str, Any]:
    from lowrank.families.scaling.fits import AIC_MARGIN, HELDOUT_TOLERANCE, LEVEL, SUPPORT

    base = prep.meta(replace(ctx.config, seq_len=max(ctx.spec.ns)))
    for key in ("seq_len", "batch_size", "sequence_policy"):
        base.pop(key, None)
    return {
        **FORMAT.header(),
        "command": ctx.provenance.command,
        "created": ctx.provenance.created,
        "identity": ctx.identity,
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
        "precision": ctx.precision,
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
        "versions": ctx.provenance.versions,
        "elapsed_seconds": round(time.perf_counter() - ctx.started, 3),
    }
