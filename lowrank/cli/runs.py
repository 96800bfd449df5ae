"""Commands on run folders: `lowrank figures`, `lowrank merge`."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click

from lowrank.cli.common import (
    command_line,
    handle_errors,
    main,
)
from lowrank.errors import LowrankError


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
    from lowrank.plots.spectrum import LayerMetric, read_runs, write_figures

    loaded = read_runs(runs)
    if heatmap_run > len(loaded):
        raise LowrankError(f"--heatmap-run {heatmap_run}: only {len(loaded)} runs were given")
    if heatmap_run != 1:
        loaded.insert(0, loaded.pop(heatmap_run - 1))
    metric = cast("LayerMetric", layer_metric)
    for path in write_figures(loaded, out, by_layer=by_layer, layer_metric=metric):
        click.echo(f"figure: {path}")


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
    from lowrank.runs.folders import check_out_dir, write_run
    from lowrank.runs.merge import merge_folders

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
