"""Commands on run folders: `lowrank figures`, `lowrank merge`, `lowrank summary`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lowrank.cli.common import (
    command_line,
    handle_errors,
    main,
    say,
)
from lowrank.cli.preflight import check_run_folders
from lowrank.errors import LowrankError
from lowrank.registry import family_of_format, load

if TYPE_CHECKING:
    import pandas as pd


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
    """Paper-style figures from saved run folders of any command, into --out.

    Each run is drawn by its family, from the folder alone (no model, no corpus). Spectrum
    runs together: per run, the cumulative spectrum panel (spectrum_*.pdf/png) and the
    layer x head heatmap of c at index 128 on a colour scale shared by all runs (heatmap_*);
    the per-layer summary with one line per run (layers); and the combined Figure 1
    (figure1): spectrum panels next to a heatmap. Runs of the other commands: the figures
    their --plot draws (several runs of one command go to one subfolder each).
    """
    import inspect

    from lowrank.runs.writing import check_writable

    check_writable(out)
    loaded = [load(run) for run in runs]
    if heatmap_run > len(loaded):
        raise LowrankError(f"--heatmap-run {heatmap_run}: only {len(loaded)} runs were given")
    if heatmap_run != 1:
        loaded.insert(0, loaded.pop(heatmap_run - 1))
    choices = {"by_layer": by_layer, "layer_metric": layer_metric}
    by_family: dict[str, list[Any]] = {}
    for result in loaded:
        by_family.setdefault(result.FORMAT.name, []).append(result)
    for fmt, results in by_family.items():
        family = family_of_format(fmt)
        draw = family.load_figures() if family is not None else None
        if draw is None:
            raise LowrankError(f"runs of format {fmt!r} have no figures")
        accepted = inspect.signature(draw).parameters
        for path in draw(results, out, **{k: v for k, v in choices.items() if k in accepted}):
            say(f"figure: {path}")


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
    from lowrank.runs.locks import check_writable, hold

    check_writable(out)
    check_run_folders(parts)  # before torch is imported
    from lowrank.families.spectrum.api import merge as merge_runs

    command = command_line(click.get_current_context())
    with hold(out):  # one writer per folder
        res = merge_runs(parts, out, overwrite, command=command)
    say(f"merged {len(parts)} shards ({res.count} sequences) into {out}")


def _table(df: pd.DataFrame) -> str:
    return str(df.to_string(index=False))


def _csv(df: pd.DataFrame) -> str:
    return str(df.to_csv(index=False)).rstrip("\n")


def _markdown(df: pd.DataFrame) -> str:
    """A Markdown table; a ``|`` inside a cell (verify's series names) is escaped."""
    escaped = df.apply(
        lambda column: column.map(lambda v: v.replace("|", r"\|") if isinstance(v, str) else v)
    )
    return str(escaped.to_markdown(index=False))


def _json(df: pd.DataFrame) -> str:
    return str(df.to_json(orient="records", double_precision=15))


FORMATS: dict[str, Callable[[pd.DataFrame], str]] = {
    "table": _table,
    "csv": _csv,
    "markdown": _markdown,
    "json": _json,
}


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--at",
    type=int,
    default=None,
    help="The run's natural index: the singular-value index for spectrum runs (default: "
    "the heatmap index, 128 for n = 512), k for project/verify, the budget for compare, n "
    "for scaling/efficiency, r (the key dimensions top-k scores from; default: nearest d/4) "
    "for keys.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    default="table",
    show_default=True,
    help="table (aligned text), csv, markdown, or json (a list of records).",
)
@handle_errors
def summary(run: Path, at: int | None, fmt: str) -> None:
    """Print a saved run's paper table: one row per (layer, head) for spectrum runs.

    Reads any run folder (lowrank.load) and prints its summary(at=...) as an aligned table,
    CSV, Markdown or JSON records; no model or corpus is needed.
    """
    table = load(run).summary(at=at) if at is not None else load(run).summary()
    say(FORMATS[fmt](table))
