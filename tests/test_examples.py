"""Every script in examples/ runs as a user would run it, and prints what it promises.

Each example is started as a subprocess with a fresh output folder; its printed tables are
parsed back and checked against their definition (a row per layer and head of MiniLM,
values of c in [0, 1]) and, where the example saves a run, against the saved arrays.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
LAYERS, HEADS = 6, 12  # the embedded MiniLM


def _run(script: Path, folder: Path) -> str:
    env = os.environ | {"PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(folder)],
        cwd=folder,  # an example must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _block(text: str, first: str) -> list[str]:
    """The lines from the one starting with ``first`` up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(first))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def _markdown(lines: list[str], text: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Markdown table back as a DataFrame: every column numeric except those in ``text``."""
    rows = [[cell.strip() for cell in ln.strip().strip("|").split("|")] for ln in lines]
    assert set("".join(rows[1])) <= set(":-"), "the second line is a Markdown rule"
    table = pd.DataFrame(rows[2:], columns=rows[0])
    for column in table.columns:
        if column not in text:
            table[column] = pd.to_numeric(table[column])
    return table


def _figure(out: str) -> Path:
    [line] = [ln for ln in out.splitlines() if ln.startswith("figure: ")]
    path = Path(line.removeprefix("figure: "))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "a PNG file"
    return path


def _check_table(table: pd.DataFrame) -> None:
    assert len(table) == LAYERS * HEADS
    assert sorted(zip(table["layer"], table["head"], strict=True)) == [
        (layer, head) for layer in range(1, LAYERS + 1) for head in range(1, HEADS + 1)
    ]
    assert ((table["c"] >= 0) & (table["c"] <= 1)).all()
    assert (table["rank90"] <= table["rank99"]).all()


def check_spectrum_in_memory(out: str, folder: Path) -> None:
    table = pd.read_csv(io.StringIO("\n".join(_block(out, "layer  head"))), sep=r"\s+")
    _check_table(table)
    assert (table["index"] == 16).all() and (table["num_sequences"] == 6).all()
    assert "model left in eval mode: True" in out
    assert _figure(out).parent == folder


def check_load_and_table(out: str, folder: Path) -> None:
    import lowrank

    table = _markdown(_block(out, "|   layer |   head"))
    _check_table(table)
    per_layer = _markdown(_block(out, "|   layer |      c"))
    assert list(per_layer["layer"]) == list(range(1, LAYERS + 1))
    saved = lowrank.load(folder / "minilm-sample-wiki")  # the run the example saved
    c = table.sort_values(["layer", "head"])["c"].to_numpy().reshape(LAYERS, HEADS)
    assert np.abs(c - saved.c_at_index_mean).max() <= 5e-5  # printed to 4 decimals
    means = saved.c_at_index_mean.mean(axis=1)
    assert np.abs(per_layer["c"].to_numpy() - means).max() <= 5e-5


def check_projection_comparison(out: str, folder: Path) -> None:
    import lowrank

    theorem2 = _markdown(_block(out, "| row"), text=("row", "verdict"))
    effects = _markdown(_block(out, "| method"), text=("method", "sharing", "verdict"))
    saved = lowrank.load(folder / "run")  # the run the example saved
    table = saved.summary(kind="theorem2", metric="error")
    table = table[table["row"].isin(["gaussian", "mean-pool", "uniform"])]
    assert list(theorem2["row"]) == list(table["row"]) and len(theorem2) == 6
    assert np.abs(theorem2["mean"].to_numpy() - table["mean"].to_numpy()).max() <= 5e-7
    assert (theorem2["ci_low"] <= theorem2["mean"]).all()
    assert (theorem2["mean"] <= theorem2["ci_high"]).all()
    assert set(theorem2["verdict"]) <= {"+", "-", "~", "n/a"}
    baselines = theorem2["row"] == "uniform"
    assert (theorem2.loc[baselines, "verdict"] == "n/a").all()
    assert set(theorem2.loc[~baselines, "verdict"]) <= {"+", "-", "~"}
    cosine = saved.effects()["cosine"].to_numpy()
    assert np.abs(effects["cosine"].to_numpy() - cosine).max() <= 5e-7
    assert ((effects["cosine"] >= -1) & (effects["cosine"] <= 1)).all()
    assert _figure(out).parent == folder


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "spectrum_in_memory": check_spectrum_in_memory,
    "load_and_table": check_load_and_table,
    "projection_comparison": check_projection_comparison,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_and_prints_its_results(script, tmp_path):
    source = script.read_text(encoding="utf-8")
    assert "import lowrank\n" in source and "lowrank." in source
    internal = [ln for ln in source.splitlines() if "from lowrank" in ln or "lowrank._" in ln]
    assert not internal, f"examples use the public API only: {internal}"
    out = _run(script, tmp_path)
    assert out.strip()
    check = CHECKS.get(script.stem)
    if check is not None:
        check(out, tmp_path)


def test_every_example_has_a_check():
    assert {p.stem for p in EXAMPLES} >= {"spectrum_in_memory", "load_and_table"}
    assert {p.stem for p in EXAMPLES} <= set(CHECKS)
