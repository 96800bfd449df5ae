"""The result of ``lowrank efficiency``: Linformer's speed-up and memory saving per (n, k).

An efficiency run folder holds ``efficiency.npz`` (the grids), ``efficiency.json`` (every
measurement, the tables and the crossovers), ``efficiency.csv`` (one row per measurement) and
``run.json``. :class:`EfficiencyResult` holds them in memory and prints the command's tables.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.core.options import named
from lowrank.errors import LowrankError
from lowrank.families.efficiency.format import FORMAT
from lowrank.families.efficiency.memory import (
    MemoryMethod,
    measured_peak,
    recorded_method,
    unresolved_cells,
)
from lowrank.runs.folders import read_json
from lowrank.runs.result import RunResult
from lowrank.runs.writing import csv_bytes, json_bytes

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from lowrank.families.efficiency.plots import Baseline, Metric

EFFICIENCY_CSV, EFFICIENCY_JSON = FORMAT.files
# Two cells of the paper's Table 3 (V100 16 GB, layerwise sharing, largest batch that fits):
# n -> (k, speed-up, memory saving). A reference, never a row of our tables.
PAPER_TABLE3 = {4096: (128, 3.4, 14.0), 65536: (128, 20.0, 60.0)}
BASELINES = {
    "exact": "standard attention (explicit softmax)",
    "sdpa": "PyTorch scaled_dot_product_attention",
}
GRIDS = ("speedup", "speedup_min", "speedup_max", "memory_saving", "memory_saving_equal_batch")
Table = dict[tuple[int, int], dict[str, float]]


@dataclass(repr=False)  # RunResult's short repr
class EfficiencyResult(RunResult):
    """A ``lowrank efficiency`` run: exact against Linformer attention in time and memory.

    Arrays (``efficiency.npz``; N lengths ``n``, K projected lengths ``k``; NaN where not
    measured, e.g. k > n):

    - ``n`` [N], ``k`` [K];
    - per baseline ``b`` in (``exact``, ``sdpa``): ``speedup_vs_b``, ``speedup_min_vs_b``,
      ``speedup_max_vs_b`` (median, min, max over the rounds of the baseline's over
      Linformer's time per token), ``memory_saving_vs_b`` (the run's measure, see
      ``config["memory_saving_measure"]``) and ``memory_saving_equal_batch_vs_b`` [N, K];
    - ``equal_batch`` [N]; ``batch_exact``, ``batch_sdpa`` [N] and ``batch_linformer``
      [N, K] (the batch timed, 0 when left out); ``peak_bytes_per_sequence_exact``,
      ``_sdpa`` [N] and ``_linformer`` [N, K] at the equal batch.

    ``data`` is ``efficiency.json``: ``records`` (one dict per measured stack, with the time
    of every round), ``tables`` (per baseline, one dict per (n, k)) and the crossovers.
    Timings are measurements, so two runs never give the same numbers; batches and shapes
    are deterministic.
    """

    data: dict[str, Any] = field(default_factory=dict, repr=False)

    FORMAT = FORMAT

    @property
    def ns(self) -> list[int]:
        """The sequence lengths n timed, in the order of the arrays' first axis (run.json's
        ``n`` for format-1 folders, which have no npz)."""
        return [int(n) for n in self.arrays.get("n", self.config.get("n", []))]

    @property
    def ks(self) -> list[int]:
        """Linformer's projected dimensions k, in the order of the arrays' second axis
        (run.json's ``k`` for format-1 folders)."""
        return [int(k) for k in self.arrays.get("k", self.config.get("k", []))]

    def tables(self) -> dict[str, Table]:
        """Per baseline, (n, k) -> the cells of the paper's Table 3 (see
        :func:`lowrank.families.efficiency.timing.speedup_table`)."""
        return {
            base: {
                (int(c["n"]), int(c["k"])): {k: v for k, v in c.items() if k not in ("n", "k")}
                for c in cells
            }
            for base, cells in self.data["tables"].items()
        }

    def summary(self, at: int | None = None, **options: Any) -> pd.DataFrame:
        """One row per (n, k) (only n = ``at`` when given): the speed-up (median, min, max)
        and both memory savings against each baseline, Linformer's batch and its peak memory
        per sequence at the equal batch, exactly the values of the npz grids.

        Raises:
            LowrankError: ``at`` is not one of the run's n.
        """
        import pandas as pd

        if at is not None and at not in self.ns:
            raise LowrankError(
                f"{named('at', at)}: this efficiency run has n = {', '.join(map(str, self.ns))}"
            )
        rows = []
        for i, n in enumerate(self.ns):
            if at is not None and n != at:
                continue
            for j, k in enumerate(self.ks):
                row: dict[str, Any] = {"n": n, "k": k}
                names = [f"{grid}_vs_{base}" for base in BASELINES for grid in GRIDS]
                names += ["batch_linformer", "equal_batch"]
                names += [f"peak_bytes_per_sequence_{m}" for m in ("linformer", "exact", "sdpa")]
                for name in names:
                    row[name] = self._cell(name, i, j)
                rows.append(row)
        return pd.DataFrame(rows)

    def _cell(self, name: str, i: int, j: int) -> float | int:
        """Cell (n index i, k index j) of a [N, K] or [N] array, as a Python number; a format
        1 run (no npz) reads the cells its tables hold and gives NaN for the rest."""
        grid = self.arrays.get(name)
        if grid is None:
            grid_name, _, base = name.rpartition("_vs_")
            cell = self.tables().get(base, {}).get((self.ns[i], self.ks[j]), {})
            found = cell.get(grid_name) if grid_name in GRIDS else None
            return math.nan if found is None else float(found)
        value: float | int = (grid[i, j] if grid.ndim == 2 else grid[i]).item()
        return value

    def memory_method(self) -> MemoryMethod:
        """How this run measured peak memory (run.json's ``memory_method``; format 1-2 CPU
        runs: sampled resident memory, which depended on what ran before)."""
        return recorded_method(self.config)

    def report(self) -> str:
        """What ``lowrank efficiency`` prints: how it measured, per baseline the speed-up and
        memory-saving tables (rows n, columns k) and the crossovers, the peak memory per
        sequence, then where the run folder and figures are."""
        meta, ns, ks = self.config, self.ns, self.ks
        method = self.memory_method()
        unresolved = unresolved_cells(self.data["records"], method.resolution_bytes)
        lines = [_measured_on(meta)]
        lines += textwrap.wrap(
            f"peak memory: {method.description}",
            100,
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
        for base in BASELINES:
            lines += self._baseline_tables(base, {(n, k) for m, n, k in unresolved if m == base})
        lines += _per_sequence(self.data["records"], ns, ks, method.resolution_bytes)
        if unresolved:
            lines.append(
                f"<res: a peak below the {method.resolution_bytes:,} bytes the method resolves; "
                "no saving is reported from it"
            )
        if meta["hardware"].get("gpu") and meta["memory_budget_gib"]:
            lines.append(
                "\nreference only, not comparable (the paper's V100 16 GB and model, not this "
                "run): paper Table 3 "
                + "; ".join(
                    f"n={n}, k={k}: {s}x faster, {m}x less memory"
                    for n, (k, s, m) in PAPER_TABLE3.items()
                )
            )
        if self.path is not None:
            lines.append(
                f"run folder: {self.path}  (efficiency.csv, efficiency.json, efficiency.npz, "
                "run.json)"
            )
        lines += [f"figure: {path}" for path in self.figures]
        return "\n".join(lines)

    def _baseline_tables(self, base: str, unresolved: set[tuple[int, int]]) -> list[str]:
        """The report's tables against one baseline: speed-up and crossovers, the budget's
        batch ratio (budget runs), the equal-batch memory saving (``<res`` in the cells
        ``unresolved``)."""
        meta, ns, ks, table = self.config, self.ns, self.ks, self.tables()[base]
        budget, records = meta["memory_budget_gib"], self.data["records"]
        lines = [f"\nLinformer vs {BASELINES[base]}"]
        lines += _grid(
            f"speed-up in time per token ({base} / Linformer), median [min, max] over "
            f"{meta['repeats']} interleaved rounds",
            ns,
            ks,
            table,
            "{speedup:.2f}x [{speedup_min:.2f}, {speedup_max:.2f}]",
        )
        for suffix, what in (
            ("", f"Linformer's median time per token is below {base}'s"),
            ("_every_round", f"Linformer is faster than {base} in every round"),
        ):
            wins = ", ".join(
                f"k={k}: n >= {v}" if v else f"k={k}: never"
                for k, v in self.data[f"crossover_n{suffix}"][base].items()
            )
            lines.append(f"{what} from: {wins}")
        if budget:
            lines += _grid(
                f"memory saving: largest batch that fits {budget:g} GiB, Linformer / {base} "
                "(powers of two)",
                ns,
                ks,
                table,
                "{memory_saving:g}x ({batch:g}/{baseline_batch:g})",
            )
            limit = meta.get("batch_limit", math.inf)
            if any(r["batch"] >= limit for r in records):
                lines.append(
                    f"(a batch of {limit} is the search limit: a saving with it is a bound)"
                )
        return lines + _grid(
            f"memory saving: peak memory per sequence at equal batch, {base} / Linformer",
            ns,
            ks,
            table,
            "{memory_saving_equal_batch:.1f}x",
            unresolved,
        )

    # --- figures ---------------------------------------------------------------------------

    def plot(
        self,
        ax: Axes | None = None,
        *,
        metric: Metric = "speedup",
        baseline: Baseline = "exact",
        legend: bool = True,
    ) -> Axes:
        """Speed-up (``metric="speedup"``) or a memory saving (``memory_saving``,
        ``memory_saving_equal_batch``) over one ``baseline`` (``"exact"``: explicit softmax,
        ``"sdpa"``) against n, a line per k
        (:func:`lowrank.families.efficiency.plots.plot_speedup`); ``legend`` below the axes.
        Returns the axes.

        Raises:
            LowrankError: a metric this run does not hold (the message lists those it does),
                or a baseline other than exact and sdpa.
        """
        from lowrank.families.efficiency.plots import plot_speedup
        from lowrank.plots.style import choose

        held = [
            m
            for m in ("speedup", "memory_saving", "memory_saving_equal_batch")
            if any(m in cell for cells in self.data["tables"].values() for cell in cells)
        ]
        choose("metric", metric, held)
        choose("baseline", baseline, BASELINES, "choose one of")
        return plot_speedup(self.data, ax, metric, legend, baseline, self.config)

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write ``speedup_vs_n`` (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.families.efficiency.plots import write_figures

        self.figures = write_figures([self], self.figure_folder(folder))
        return self.figures

    def extra_files(self) -> dict[str, bytes]:
        """efficiency.csv (one row per measured stack, without its per-round times) and
        efficiency.json (every measurement, the tables and the crossovers)."""
        rows = [
            {k: v for k, v in r.items() if k != "round_seconds_per_token"}
            for r in self.data["records"]
        ]
        return {EFFICIENCY_CSV: csv_bytes(rows), EFFICIENCY_JSON: json_bytes(self.data)}

    @classmethod
    def from_folder(
        cls, path: Path, meta: dict[str, Any], arrays: dict[str, Any]
    ) -> EfficiencyResult:
        """The run with efficiency.json's records and tables.

        Raises:
            LowrankError: efficiency.json is missing, damaged, or lacks them.
        """
        data = read_json(path / EFFICIENCY_JSON)
        if not isinstance(data, dict) or not {"records", "tables"} <= set(data):
            raise LowrankError(f"'{path / EFFICIENCY_JSON}' lacks records and tables")
        return cls(meta, arrays, path, data=data)


def _measured_on(meta: dict[str, Any]) -> str:
    """The report's first line: hardware, dtype, stack and batch."""
    hw = meta["hardware"]
    threads = int(hw["torch_threads"])
    where = hw.get("gpu") or (
        f"{hw['processor']} CPU, {threads} thread{'' if threads == 1 else 's'}"
    )
    budget = meta["memory_budget_gib"]
    batching = (
        f"each stack at its largest batch within {budget:g} GiB"
        if budget
        else f"batch {meta['batch'] or 1}"
    )
    return (
        f"measured on {where}, {meta['dtype']}, {meta['stack']['layers']}-layer stack of "
        f"width {meta['stack']['hidden']}; {batching}"
    )


def _cell(table: Table, n: int, k: int, fmt: str) -> str:
    cell = table.get((n, k))
    return fmt.format(**cell) if cell else "-"


def _grid(
    title: str,
    ns: list[int],
    ks: list[int],
    table: Table,
    fmt: str,
    unresolved: set[tuple[int, int]] | None = None,
    width: int = 20,
) -> list[str]:
    """One table: a title line naming the measure, rows n, columns k, cells ``fmt`` filled
    from the table's cells (``<res`` for the (n, k) ``unresolved``)."""
    lines = [title, f"{'n':>8}" + "".join(f"{'k=' + str(k):>{width}}" for k in ks)]
    for n in ns:
        cells = ["<res" if (n, k) in (unresolved or ()) else _cell(table, n, k, fmt) for k in ks]
        lines.append(f"{n:>8}" + "".join(f"{c:>{width}}" for c in cells))
    return lines


def _per_sequence(
    records: list[dict[str, Any]], ns: list[int], ks: list[int], resolution: int = 1
) -> list[str]:
    """Peak memory per sequence of every stack at the equal batch, MiB (``<res`` below
    ``resolution`` bytes)."""
    by = {(r["method"], r["n"], r["k"]): r for r in records}
    columns = [("exact", None), ("sdpa", None), *(("linformer", k) for k in ks)]
    names = ["batch", "exact", "sdpa", *(f"k={k}" for k in ks)]
    lines = ["\npeak memory per sequence at equal batch (MiB)"]
    lines.append(f"{'n':>8}" + "".join(f"{name:>10}" for name in names))
    for n in ns:
        equal = next((r["equal_batch"] for r in records if r["n"] == n), None)
        cells = [str(equal or "-")]
        for method, k in columns:
            r = by.get((method, n, k))
            if r is None:
                cells.append("-")
            elif measured_peak(r) < resolution:
                cells.append("<res")
            else:
                cells.append(f"{r['peak_bytes_per_sequence'] / 2**20:.2f}")
        lines.append(f"{n:>8}" + "".join(f"{c:>10}" for c in cells))
    return lines


def as_json(value: Any) -> Any:
    """``value`` as efficiency.json holds it (keys as strings), so a result in memory and
    the same result read back are equal."""
    return json.loads(json.dumps(value))
