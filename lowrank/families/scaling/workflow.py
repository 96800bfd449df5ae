"""``lowrank scaling``: one spectrum run per n on the same windows, and the growth verdicts.

Every document long enough for the largest n gives windows at drawn offsets (or at its first
token), each cut to n tokens for every n
(:func:`lowrank.families.scaling.measures.document_windows`). Each n is measured by
:func:`lowrank.families.scaling.collect.analyse_length` and kept as a normal spectrum run (written
to ``<out>/n<n>/``); the per-document rank measures, the fits and the verdicts make the
``lowrank-scaling`` run (``<out>/scaling.npz`` and ``<out>/run.json``, written by
:mod:`lowrank.families.scaling.record`), beside the position-shift control
(:mod:`lowrank.families.scaling.control`). Nothing here prints or
writes: :func:`run_scaling` returns a :class:`~lowrank.families.scaling.result.ScalingResult`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
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
    head_dim,
    measure_windows,
    memory_record,
)
from lowrank.families.scaling.control import ControlPlan, plan_control
from lowrank.families.scaling.fits import bootstrap_indices
from lowrank.families.scaling.measures import (
    ALL_MEASURES,
    MEASURES,
    DocumentWindows,
    document_windows,
)
from lowrank.families.scaling.record import Measured, scaling_arrays, summary_meta
from lowrank.families.scaling.result import ScalingResult
from lowrank.families.scaling.verdicts import group_verdicts, per_document
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.inputs.config import InputConfig, heatmap_index
from lowrank.maths.windows import Policy

if TYPE_CHECKING:
    from lowrank.inputs.objects import DataInput, ModelInput
    from lowrank.inputs.prepared import Prepared
from lowrank.runs.manifest import FINGERPRINT, fingerprint_of, model_digest
from lowrank.runs.provenance import Provenance

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class ScalingSpec:
    """What ``lowrank scaling`` measures, beyond the model and corpus."""

    ns: tuple[int, ...] = (32, 64, 128, 256, 512)  # lengths, special tokens included
    tau: float = 0.1  # relative output error ||PV - (PV)_k|| / ||PV|| of output_rank
    fixed_index: int | None = None  # index of c_at_fixed; None: the smallest n
    bootstrap: int = 1000  # resamples of documents for the intervals of the means
    bootstrap_seed: int = 0
    verdict_bootstrap: int = 200  # resamples behind each growth verdict (~6 refits each)
    windows: Policy = "matched"  # drawn offsets, the same for every n; or "openings"
    windows_per_document: int = 1
    window_seed: int = 0
    position_control: bool = True  # measure the middle n again at shifted position ids
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
    return {
        "ns": list(spec.ns),
        "tau": spec.tau,
        "fixed_index": spec.index,
        "windows": spec.windows,
        "windows_per_document": spec.windows_per_document,
        "window_seed": spec.window_seed,
    }


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
        _check_documents(windows, policy, spec, config)
        budget = (
            int(spec.memory_budget * GIB) if spec.memory_budget else default_budget(prep.device)
        )
        lengths = [_one_length(ctx, prep, windows.windows[n], policy, budget) for n in spec.ns]
        results = [r for r, _ in lengths]
        used = min(r.used for r in results)
        plan, shifted = _position_control(ctx, prep, windows, results, used, budget)
        dim = head_dim(prep.loaded)
    per_window = _per_window(results, used)
    clusters = np.unique(windows.documents[:used], return_inverse=True)[1].reshape(-1)
    per_doc = {m: per_document(per_window[m], clusters) for m in MEASURES}
    draws = (spec.bootstrap, spec.verdict_bootstrap)
    resamples = bootstrap_indices(per_doc[MEASURES[0]].shape[1], max(draws), spec.bootstrap_seed)
    fitting = time.perf_counter()
    found = group_verdicts(per_doc, spec.ns, resamples, draws, {"output_rank": float(dim)})
    fit_seconds = time.perf_counter() - fitting
    log.info(f"fits and verdicts: {fit_seconds:.1f} s ({spec.verdict_bootstrap} resamples each)")
    base = None
    if shifted is not None:
        base = results[spec.ns.index(plan.n)].measures[:used]
    measured = Measured(results, windows, used, clusters, plan, base, shifted, dim)
    arrays = scaling_arrays(measured, found, per_window, spec)
    meta = summary_meta(ctx, prep, measured, found, policy)
    meta["fit_seconds"] = round(fit_seconds, 3)
    # what the run is computed from: a rerun on a corpus edited in place, or on other
    # weights, must not replace it silently (ScalingResult.save compares)
    longest = windows.windows[max(spec.ns)]
    meta[FINGERPRINT] = fingerprint_of(longest, None, model_digest(meta["model"]))
    return ScalingResult(meta, arrays, runs={r.n: run for r, run in lengths})


def _check_documents(
    windows: DocumentWindows, policy: dict[str, Any], spec: ScalingSpec, config: InputConfig
) -> None:
    """Say how many documents qualified; refuse fewer than two, warn below ten."""
    docs = len(np.unique(windows.documents))
    specials = len(policy["special_tokens"]["start"]) + len(policy["special_tokens"]["end"])
    where = (
        "each cut to its first n tokens"
        if spec.windows == "openings"
        else f"{spec.windows_per_document} window(s) each at drawn offsets, cut to every n"
    )
    log.info(
        f"{windows.qualified} of {policy['documents']} documents have the "
        f"{max(spec.ns) - specials} tokens n = {max(spec.ns)} needs; analysing {docs}, "
        f"{where} for n = {', '.join(map(str, spec.ns))}"
    )
    if docs < 2:
        raise LowrankError(
            f"only {docs} document qualifies: the bootstrap over documents needs at least two"
        )
    if docs < config.num_sequences:
        log.warning(
            f"{docs} documents qualify, fewer than {named('num_sequences', config.num_sequences)}"
        )
    if docs < 10:
        log.warning(
            f"only {docs} documents: a bootstrap over so few clusters gives rough intervals "
            "and verdicts; use 10 or more"
        )


def _position_control(
    ctx: _Context,
    prep: Prepared,
    windows: DocumentWindows,
    results: list[LengthResult],
    used: int,
    budget: int,
) -> tuple[ControlPlan, np.ndarray | None]:
    """The windows of the middle n again at shifted position ids: (W, L, H, 7) measures, or
    None where the control is skipped (the plan says why)."""
    from tqdm.auto import tqdm

    plan = plan_control(prep.loaded, ctx.spec.ns)
    if not ctx.spec.position_control:
        return replace(plan, skipped="turned off"), None
    if plan.skipped:
        log.warning(f"position control skipped: {plan.skipped}")
        return plan, None
    ids = windows.windows[plan.n][:used]
    batch = results[ctx.spec.ns.index(plan.n)].batch
    began = time.perf_counter()
    with tqdm(total=1, desc=f"position control n = {plan.n}", disable=not ctx.progress) as bar:
        shifted = measure_windows(prep.loaded, ids, ctx.spec, batch, prep.device, plan.positions)
        bar.update()
    log.info(
        f"position control: n = {plan.n}, {plan.describe()}, {len(ids)} windows in "
        f"{time.perf_counter() - began:.1f} s"
    )
    return plan, shifted


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
) -> tuple[Prepared, DocumentWindows, dict[str, Any]]:
    """Model, corpus and windows, checking every option on the way.

    Returns:
        the prepared model and corpus (its ``sequences`` are set per n later), the windows
        (:func:`document_windows`), and the sequence policy every run.json records.
    """
    from lowrank.inputs.corpora import special_tokens

    prep = _load(model, tokenizer, data, config, max(spec.ns))
    tokenizer = prep.loaded.tokenizer
    prefix, suffix = special_tokens(tokenizer)
    docs = _tokenize(tokenizer, prep.corpus.documents)
    windows = document_windows(
        docs,
        spec.ns,
        prefix,
        suffix,
        config.num_sequences,
        config.seed,
        spec.windows,
        spec.windows_per_document,
        spec.window_seed,
    )
    policy = {
        "policy": "matched offsets" if spec.windows == "matched" else "openings",
        "special_tokens": {"start": prefix, "end": suffix},
        "order": "corpus" if config.seed is None else f"seeded sample (seed {config.seed})",
        "documents": len(prep.corpus.documents),
        "available": windows.qualified,
        "qualified_for_n": max(spec.ns),
        "longest_document_tokens": windows.longest,
        "document_indices": windows.documents.tolist(),
        "window_starts": windows.starts.tolist(),
        "num_sequences": len(windows.documents),
    }
    return prep, windows, policy


def _one_length(
    ctx: _Context, prep: Prepared, ids: np.ndarray, policy: dict[str, Any], budget: int
) -> tuple[LengthResult, SpectrumResult]:
    """Analyse the (W, n) windows of one n: its result and its spectrum run ``n<n>``."""
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
        f"n = {n}: {res.used} windows in {res.seconds:.1f} s (batch {batch}, estimated "
        f"{estimate / GIB:.2f} GiB, measured {res.working_peak_bytes / GIB:.2f} GiB above the "
        f"start; process peak {res.peak_bytes / GIB:.2f} GiB)"
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
        "scaling": {"summary": "..", "n": res.n, **memory_record(res)},
    }


def _per_window(results: list[LengthResult], used: int) -> dict[str, np.ndarray]:
    """measure -> (S, W, L, H): the windows every n analysed (the first ``used``)."""
    stacked = np.stack([r.measures[:used] for r in results])  # (S, W, L, H, 7)
    return {m: stacked[..., k] for k, m in enumerate(ALL_MEASURES)}
