"""``lowrank project``: projection errors against k on captured attention, saved as a run."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from lowrank.approximation import ProjectionSpec, summarize
from lowrank.config import SpectrumConfig
from lowrank.errors import LowrankError
from lowrank.runs import PROJECTION_FORMAT, PROJECTION_NPZ, check_out_dir, write_run
from lowrank.workflows import prepare


def run_project(
    config: SpectrumConfig,
    spec: ProjectionSpec,
    sharings: tuple[str, ...],
    model_effect: bool,
    out: Path,
    overwrite: bool,
    plot: bool,
    heatmap_k: int | None,
    command: str,
    versions: dict[str, str],
    created: str,
) -> Path:
    """Measure Theorem 1/2 errors (and the model-level effect) and write a run folder."""
    from tqdm import tqdm

    from lowrank.approximation import mask_tokens, measure
    from lowrank.approximation import model_effect as effect
    from lowrank.models import load_masked_lm

    start = time.perf_counter()
    spec.check(config.seq_len)
    if heatmap_k is not None and heatmap_k not in spec.ks:
        raise LowrankError(f"--heatmap-k {heatmap_k} is not one of --k {list(spec.ks)}")
    identity = config.identity() | {"projection": asdict(spec), "sharing": list(sharings)}
    check_out_dir(out, identity, overwrite)
    if config.keep_short:
        raise LowrankError("lowrank project needs full-length sequences: drop --keep-short")
    prep = prepare(config)
    loaded, seqs = prep.loaded, prep.sequences
    n_seq = len(seqs.lengths)
    with tqdm(total=n_seq, unit="seq", desc="project", file=sys.stderr) as bar:
        samples = measure(loaded, seqs, spec, config.batch_size, prep.device, bar.update)
    arrays: dict[str, np.ndarray] = {
        "ks": np.array(spec.ks),
        "methods": np.array(spec.methods),
        "input_ids": seqs.input_ids,
    }
    for key, value in samples.items():
        arrays[f"{key}_samples"] = value
        for stat, table in summarize(value.astype(np.float64)).items():
            arrays[f"{key}_{stat}"] = table
    effects: list[dict[str, Any]] = []
    mode = None
    if model_effect:
        mlm_model = load_masked_lm(loaded)
        model, mlm = loaded.model, None
        mode = "hidden states"
        tok = loaded.tokenizer
        if mlm_model is not None and tok.mask_token_id is not None:
            model, mode = mlm_model, "masked-LM loss and hidden states"
            special = set(tok.all_special_ids)
            mlm = mask_tokens(seqs.input_ids, tok.mask_token_id, special, seed=spec.seed)
        runs = sum(
            len(spec.ks)
            * (len(sharings) if m in ("gaussian", "rademacher", "sparse", "very-sparse") else 1)
            for m in spec.methods
            if m != "svd"
        )
        with tqdm(total=runs, unit="model", desc="model effect", file=sys.stderr) as bar:
            results = effect(
                model, seqs, spec, sharings, config.batch_size, prep.device, mlm, bar.update
            )
        effects = [asdict(r) for r in results]
    meta: dict[str, Any] = {
        "format": PROJECTION_FORMAT,
        "format_version": 1,
        "command": command,
        "created": created,
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": n_seq,
        "projection": asdict(spec),
        "sharing": list(sharings),
        "heatmap_k": heatmap_k or spec.ks[len(spec.ks) // 2],
        "model_effect": {"mode": mode, "results": effects} if model_effect else None,
        "versions": versions,
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    write_run(out, meta, arrays, npz=PROJECTION_NPZ)
    _summary(arrays, spec, effects, out)
    if plot:
        from lowrank.figures_projection import plot_projection_folder

        for path in plot_projection_folder(out):
            click.echo(f"figure: {path}")
    return out


def _summary(
    arrays: dict[str, np.ndarray], spec: ProjectionSpec, effects: list[dict[str, Any]], out: Path
) -> None:
    ks = list(spec.ks)
    for kind, title in (
        ("theorem1", "||P~w - Pw|| / ||Pw||"),
        ("theorem2", "Linformer head output, relative Frobenius error"),
    ):
        click.echo(f"\n{kind}: {title} (mean over sequences, draws, layers, heads)")
        click.echo("  method       " + "".join(f"{'k=' + str(k):>10}" for k in ks))
        for method in spec.methods:
            row = (
                np.nanmean(arrays[f"{kind}_{method}_mean"], axis=(1, 2))
                if not np.isnan(arrays[f"{kind}_{method}_mean"]).all()
                else np.full(len(ks), np.nan)
            )
            click.echo(f"  {method:<12} " + "".join(f"{v:>10.4f}" for v in row))
    if effects:
        click.echo("\nmodel effect (final hidden states: relative error / cosine)")
        for e in effects:
            loss = ""
            if e["mlm_loss"] is not None:
                loss = f"  MLM loss {e['mlm_loss']:.3f} (exact {e['mlm_loss_exact']:.3f})"
            click.echo(
                f"  {e['method']:<12} {e['sharing']:<10} k={e['k']:<5} "
                f"{e['relative_error']:.4f} / {e['cosine']:.4f}{loss}"
            )
    click.echo(f"run folder: {out}  ({out / 'run.json'}, {out / PROJECTION_NPZ})")
