"""``lowrank keys``: inputs -> the three passes (:mod:`lowrank.families.keys.passes`) ->
a :class:`~lowrank.families.keys.result.KeysResult`, with checkpoints and resume.

Nothing here prints: status lines go to ``logging``, progress to a ``tqdm.auto`` bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.core.options import flag, renamed
from lowrank.errors import LowrankError
from lowrank.families.keys import tables
from lowrank.families.keys.format import FORMAT
from lowrank.families.keys.names import BASES
from lowrank.families.keys.passes import (
    CODEC,
    PHASES,
    KeysState,
    Settings,
    Shape,
    check_state,
    model_shape,
    resolve_ranks,
    run_pass,
)
from lowrank.families.keys.result import KeysResult
from lowrank.inputs.config import InputConfig
from lowrank.runs.checkpoints import (
    RunInterrupted,
    check_checkpoint_inputs,
    clear_checkpoint,
    read_checkpoint,
    sigterm_as_interrupt,
    write_checkpoint,
)
from lowrank.runs.writing import check_out_dir, write_run

if TYPE_CHECKING:
    from lowrank.inputs.corpora import Sequences
    from lowrank.inputs.objects import DataInput, ModelInput
    from lowrank.inputs.prepared import Prepared
    from lowrank.runs.provenance import Provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Where top-k's PCA basis is fitted: the calibration corpus as the user named it."""

    data: Any = None  # a path, texts or token ids; None: the other embedded sample
    dataset: str | None = None
    split: str | None = None  # None: the evaluated corpus's split
    sequences: int | None = None  # None: as many as the evaluated text

    def identity(self) -> dict[str, Any]:
        from lowrank.inputs.objects import is_memory_data

        data = None if self.data is None or is_memory_data(self.data) else str(self.data)
        return {"data": data, "dataset": self.dataset, "split": self.split, "n": self.sequences}


@dataclass
class Job:
    """One keys run: its inputs, options and where it writes."""

    config: InputConfig
    settings: Settings  # ranks as given (None: the default grid), resolved once d is known
    calibration: Calibration
    provenance: Provenance
    out: Path | None = None
    overwrite: bool = False
    resume: bool = False
    checkpoint_every: int | None = None
    label: str | None = None
    progress: bool = True
    identity: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None  # of the prepared sequences, once known


def keys_identity(job: Job) -> dict[str, Any]:
    """``identity`` of a keys run.json (before in-memory inputs add their digests)."""
    import json

    settings = asdict(job.settings)
    found = job.config.identity() | {"keys": settings, "calibration": job.calibration.identity()}
    return dict(json.loads(json.dumps(found)))  # as run.json and checkpoint.json hold it


_CALIBRATION_OPTIONS = {
    "data": "calibration_data",
    "dataset": "calibration_dataset",
    "split": "calibration_split",
    "num_sequences": "calibration_sequences",
}


def calibration_sequences(prep: Prepared, job: Job) -> tuple[Sequences, dict[str, Any]]:
    """The calibration sequences, tokenised by the evaluated model's tokenizer, and their
    run.json record. The default corpus is the embedded sample of the other kind: reviews
    (sample-imdb) for article corpora, articles (sample-wiki) for reviews.

    Raises:
        LowrankError: calibration data that is not a corpus, or text without a tokenizer.
    """
    from lowrank.inputs.objects import is_memory_data

    cal, config = job.calibration, job.config
    dataset = cal.dataset
    if cal.data is None and dataset is None:
        dataset = "sample-imdb" if prep.corpus.kind == "articles" else "sample-wiki"
    fields: dict[str, Any] = {"dataset": dataset, "data": None, "policy": "auto"}
    fields |= {"split": cal.split or config.split}
    fields["num_sequences"] = cal.sequences or len(prep.sequences.lengths)
    cal_config = replace(config, **fields)
    with renamed(_CALIBRATION_OPTIONS):  # the shared readers' messages name these options
        if is_memory_data(cal.data):
            corpus, seqs, kind = _memory_calibration(prep, cal.data, cal_config)
        else:
            corpus, seqs = _corpus_calibration(prep, cal.data, cal_config)
            kind = corpus.kind
    record = {
        "dataset": corpus.name,
        "kind": kind,
        "source": corpus.source,
        "split": corpus.split,
        "num_sequences": len(seqs.lengths),
        "seq_len": int(seqs.input_ids.shape[1]),
        "sequence_policy": seqs.policy,
        "default": cal.data is None and cal.dataset is None,
    }
    if record["source"] == prep.corpus.source and record["split"] == prep.corpus.split:
        log.warning(
            f"{flag('calibration_data')} is the evaluated text: the calibrated basis is then the "
            "evaluated text's own, and the transfer gap measures nothing"
        )
    return seqs, record


def _corpus_calibration(prep: Prepared, data: Any, config: InputConfig) -> tuple[Any, Sequences]:
    import os

    from lowrank.inputs.corpora import build_sequences, load_corpus

    if data is not None and not isinstance(data, str | os.PathLike):
        raise LowrankError(
            f"{flag('calibration_data')}: give a corpus path, texts or token ids, not "
            f"{type(data).__name__}"
        )
    if prep.loaded.tokenizer is None:
        raise LowrankError(
            f"{flag('calibration_data')} is text: pass the model's tokenizer, or calibration "
            "token ids"
        )
    try:
        corpus = load_corpus(
            config.dataset, None if data is None else os.fspath(data), config.split
        )
        seqs = build_sequences(
            corpus, prep.loaded.tokenizer, config.seq_len, config.num_sequences, config.seed,
            config.policy, config.keep_short,
        )  # fmt: skip
    except LowrankError as exc:
        shown = str(exc)
        if flag("calibration") not in shown:  # messages of the shared readers name it already
            shown = f"{flag('calibration_data')}: {shown}"
        raise LowrankError(shown) from None
    if len(seqs.lengths) == 0:
        raise LowrankError(
            f"{flag('calibration_data')}: '{corpus.name}' holds no sequence of {config.seq_len} "
            "tokens to fit the PCA basis on"
        )
    if len(seqs.lengths) < config.num_sequences:
        log.warning(
            f"calibration corpus '{corpus.name}' yields {len(seqs.lengths)} sequences of "
            f"{config.seq_len} tokens, fewer than the {config.num_sequences} asked for"
        )
    log.info(f"calibration: {len(seqs.lengths)} sequences of {config.seq_len} tokens from "
             f"{corpus.name}")  # fmt: skip
    return corpus, seqs


def _memory_calibration(
    prep: Prepared, data: Any, config: InputConfig
) -> tuple[Any, Sequences, str]:
    from lowrank.inputs.held import token_arrays
    from lowrank.inputs.objects import is_token_data, prepare_any

    if is_token_data(data):
        config = replace(config, seq_len=token_arrays(data)[0].shape[1])
    found = prepare_any(prep.loaded.model, prep.loaded.tokenizer, data, config)
    return found.corpus, found.sequences, found.corpus_kind or found.corpus.kind


def run_keys(model: ModelInput, tokenizer: Any, data: DataInput, job: Job) -> KeysResult:
    """The whole keys job: prepare, run the passes (resuming a checkpoint with ``resume``),
    and return the result; with ``job.out`` also write the run folder."""
    from lowrank.inputs.objects import is_memory_data, memory_identity, prepared_inputs

    start = time.perf_counter()
    job.identity = keys_identity(job)
    memory = is_memory_data(data) or is_memory_data(job.calibration.data)
    if job.out is not None and not memory and not _is_object(model):
        check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)
    with prepared_inputs(model, tokenizer, data, job.config) as prep:
        job.identity |= memory_identity(model, data, prep)
        shape = model_shape(prep.loaded.model, prep.loaded.num_layers, prep.loaded.num_heads)
        job.settings = replace(
            job.settings, ranks=resolve_ranks(job.settings.ranks, shape.head_dim)
        )
        cal_seqs, cal_record = calibration_sequences(prep, job)
        if is_memory_data(job.calibration.data):
            job.identity["calibration"]["digest"] = _digest(cal_seqs)
        if job.out is not None and (memory or _is_object(model)):
            check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)
        _fingerprint(job, prep, cal_seqs)
        state = _start_state(job, shape)
        weights = _weights(prep, shape)
        with sigterm_as_interrupt():
            _run_passes(job, prep, cal_seqs, shape, state)
    result = _result(job, prep, shape, state, weights, cal_seqs, cal_record, start)
    if job.out is not None:
        write_run(job.out, result.config, result.arrays, npz=FORMAT.npz)
        clear_checkpoint(job.out)
        result.path = job.out
    return result


def _fingerprint(job: Job, prep: Prepared, cal_seqs: Sequences) -> None:
    """Record what the run is computed from (the evaluated and calibration token ids, the
    model's weights) and refuse a resume, or the replacement of a complete run, made from
    other inputs under the same options (a corpus file edited in place, another model)."""
    from lowrank.runs.manifest import fingerprint_of, model_digest

    seqs = prep.sequences
    digest = model_digest(prep.meta(job.config)["model"])
    job.fingerprint = fingerprint_of(seqs.input_ids, seqs.attention_mask, digest)
    job.fingerprint["calibration"] = _digest(cal_seqs)
    if job.out is None:
        return
    if job.resume and (job.out / "checkpoint.json").exists():  # continued, --overwrite or not
        check_checkpoint_inputs(job.out, job.fingerprint)
        return
    if job.overwrite:
        return
    check_out_dir(job.out, job.identity or {}, job.overwrite, job.resume, job.fingerprint)


def _is_object(model: Any) -> bool:
    from lowrank.inputs.objects import is_memory_model

    return is_memory_model(model)


def _digest(seqs: Sequences) -> str:
    import hashlib

    return hashlib.sha256(seqs.input_ids.tobytes() + seqs.lengths.tobytes()).hexdigest()[:32]


def _start_state(job: Job, shape: Shape) -> KeysState:
    if job.out is not None and job.resume:
        found = read_checkpoint(job.out, job.identity or {}, CODEC)
        if found is not None:
            state = found[0][0]
            check_state(state, shape, job.settings, job.out / "checkpoint.npz")
            log.info(f"resuming at the {PHASES[min(state.phase, 2)]} pass, {state.done} done")
            return state
        log.warning(f"{flag('resume')}: no checkpoint in '{job.out}', starting from the start")
    return KeysState.start(shape, job.settings)


def _weights(prep: Prepared, shape: Shape) -> Any:
    """(L, H, d) singular values of each head's W_Q^h W_K^g^T and whether they are the
    logits' form exactly; None where the weights are not found (a fused projection)."""
    from lowrank.families.keys.qkv import bilinear_spectra

    try:
        return bilinear_spectra(prep.loaded.model, shape.heads, shape.head_dim)
    except LowrankError as exc:
        log.warning(f"logits against weights: {exc}; the weights' ranks are left out")
        return None


def _run_passes(
    job: Job, prep: Prepared, cal_seqs: Sequences, shape: Shape, state: KeysState
) -> None:
    """Run the passes from where ``state`` stands; Ctrl-C saves a checkpoint (with ``out``)
    and raises :class:`RunInterrupted`."""
    from tqdm.auto import tqdm

    passes = [cal_seqs, prep.sequences, prep.sequences]
    total = sum(len(s.lengths) for s in passes)
    due = _due(job.checkpoint_every)
    bar = tqdm(total=total, initial=state.done, unit="seq", desc="keys", disable=not job.progress)
    with bar:
        while state.phase < len(PHASES):
            after = _after_batch(job, state, bar, due, total)
            consume = _consumer(state, shape, job.settings.seed)
            try:
                run_pass(
                    prep.loaded, passes[state.phase], state.next_index, job.config.batch_size,
                    prep.device, consume, after,
                )  # fmt: skip
            except KeyboardInterrupt:
                bar.close()
                _interrupted(job, state, total)
            state.phase, state.next_index = state.phase + 1, 0


def _after_batch(
    job: Job, state: KeysState, bar: Any, due: Callable[[int], bool], total: int
) -> Callable[[int, int], None]:
    """What follows each batch: the state's counts and clock, the bar, a checkpoint when due."""
    mark = [time.perf_counter()]

    def after(lo: int, hi: int) -> None:
        state.next_index = hi
        state.done += hi - lo
        now = time.perf_counter()
        state.seconds[state.phase] += now - mark[0]
        mark[0] = now
        bar.update(hi - lo)
        if job.out is not None and due(hi - lo):
            _save(job, state, total)

    return after


def _consumer(state: KeysState, shape: Shape, seed: int) -> Callable[..., None]:
    """The statistics the current pass feeds (top-k: with this layer's three bases)."""
    if state.phase == 0:
        return state.calibration.update
    if state.phase == 1:
        return state.evaluation.update
    bases = state.bases(shape, seed)  # fixed once the evaluation pass is done
    return lambda qkv, ids: state.topk.update(qkv, ids, [b[qkv.layer] for b in bases])


CHECKPOINT_SECONDS = 300
"""The default time between checkpoints: the co-moments weigh hundreds of MiB (SmolLM2 with
16 bootstrap groups: 0.45 GB a checkpoint), so every minute, as spectrum does, would write
gigabytes in a long run."""


def _due(every: int | None) -> Callable[[int], bool]:
    """Due after ``every`` sequences, or (default) after each 5 minutes of work."""
    last, count = [time.perf_counter()], [0]

    def due(done: int) -> bool:
        count[0] += done
        if (every is not None and count[0] >= every) or (
            every is None and time.perf_counter() - last[0] >= CHECKPOINT_SECONDS
        ):
            last[0], count[0] = time.perf_counter(), 0
            return True
        return False

    return due


def _save(job: Job, state: KeysState, total: int) -> None:
    assert job.out is not None
    command = job.provenance.command
    write_checkpoint(
        job.out, job.identity or {}, [state], state.done, total, command, CODEC, job.fingerprint
    )


def _interrupted(job: Job, state: KeysState, total: int) -> None:
    if job.out is not None and state.done:
        _save(job, state, total)
        command = job.provenance.command
        command = command if "--resume" in command else command + " --resume"
        raise RunInterrupted(
            f"\ninterrupted after {state.done} of {total} sequence passes; partial results are "
            f"in {job.out / 'checkpoint.npz'}.\nresume with: {command}",
            job.out / "checkpoint.npz",
        )
    raise RunInterrupted(
        f"\ninterrupted after {state.done} of {total} sequence passes: nothing saved"
        + (" (give out= to keep partial results)" if job.out is None else "")
    )


def _result(
    job: Job,
    prep: Prepared,
    shape: Shape,
    state: KeysState,
    weights: Any,
    cal_seqs: Sequences,
    cal_record: dict[str, Any],
    start: float,
) -> KeysResult:
    from lowrank.families.keys.qkv import is_rotary

    settings, seqs = job.settings, prep.sequences
    clock = time.perf_counter()
    arrays = tables.pca_arrays(state.evaluation, settings.bootstrap, settings.seed)
    bootstrap_seconds = time.perf_counter() - clock
    arrays |= tables.calibration_arrays(state.calibration)
    arrays |= tables.sequence_arrays(state.evaluation) | tables.topk_arrays(state.topk)
    if weights is not None:
        arrays |= tables.weight_arrays(weights[0], settings.fraction)
    arrays["input_ids"] = seqs.input_ids
    if (seqs.lengths < seqs.input_ids.shape[1]).any():
        arrays["attention_mask"] = seqs.attention_mask
    arrays["calibration_input_ids"] = cal_seqs.input_ids
    rotary = is_rotary(prep.loaded.model)
    meta: dict[str, Any] = {
        **FORMAT.header(),
        "command": job.provenance.command,
        "created": job.provenance.created,
        "identity": job.identity,
        "config": job.config.to_json(),
        **prep.meta(job.config),
        "num_sequences": len(seqs.lengths),
        **({"label": job.label} if job.label is not None else {}),
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "rotary": rotary,
        "pre_rope_source": _pre_rope_source(prep.loaded.model, rotary),
        "weights_exact": None if weights is None else bool(weights[1]),
        "rank_fraction": settings.fraction,
        "definitions": tables.DEFINITIONS,
        "rank_convention": tables.RANK_CONVENTION,
        "calibration": cal_record,
        "bootstrap": _bootstrap_record(settings, int(arrays["bootstrap_groups_used"])),
        "topk": _topk_record(settings),
        "probs_rank": settings.probs_rank,
        "timings": {
            **{f"{p}_seconds": round(s, 3) for p, s in zip(PHASES, state.seconds, strict=True)},
            "bootstrap_seconds": round(bootstrap_seconds, 3),
        },
        "versions": job.provenance.versions,
        **({"fingerprint": job.fingerprint} if job.fingerprint is not None else {}),
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    return KeysResult(meta, arrays)


def _pre_rope_source(model: Any, rotary: bool) -> str:
    if not rotary:
        return "none: no rotary embedding, pre = post"
    attn = next((m for m in model.modules() if hasattr(m, "q_norm") and hasattr(m, "k_norm")), None)
    return "q_norm/k_norm outputs" if attn is not None else "q_proj/k_proj outputs"


def _bootstrap_record(settings: Settings, used: int) -> dict[str, Any]:
    return {
        "replicates": settings.bootstrap,
        "groups": settings.groups,
        "groups_used": used,
        "seed": settings.seed,
        "level": tables.LEVEL,
        "unit": "groups of whole sequences (sequence index mod groups): the bootstrap by "
        "sequence while N <= groups; basic (pivotal) intervals",
    }


def _topk_record(settings: Settings) -> dict[str, Any]:
    return {
        "bases": list(BASES),
        "ranks": list(settings.ranks),
        "budgets": list(settings.budgets),
        "queries_per_sequence": settings.queries,
        "query_seed": settings.seed,
        "keep_first": settings.keep_first,
        "k_rule": "k = max(1, floor(f m)) keys of a sequence's m valid tokens, plus the first "
        "token when keep_first (Loki: k of the full n, no sink)",
        "scores": "post-RoPE q . k, projected on the first r columns of the basis",
        "basis": "PCA axes of post-RoPE keys per layer and KV head; random_orthogonal: Haar",
        "statistic": "per sequence the mean over its sampled queries; mean and standard error "
        "over sequences",
        "exact": "r = d: every orthonormal basis keeps the scores, exact top-k",
        "causal": "only keys at or before the query",
    }
