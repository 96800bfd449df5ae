"""The result of ``lowrank.verify``: a verify run held in memory.

:class:`VerifyResult` carries verify.npz's arrays (each [series, eps, k]) under their names
and the rows of verify.csv. It prints as the CLI does (``report()``), gives the paper table
(``summary()``), draws its figure and saves a normal run folder that ``lowrank.load`` and the
CLI read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lowrank.errors import LowrankError
from lowrank.families.verify.format import FORMAT
from lowrank.runs.folders import read_json
from lowrank.runs.result import RunResult
from lowrank.runs.schema import validate
from lowrank.runs.writing import csv_bytes, json_bytes

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

VERIFY_CSV, VERIFY_JSON = FORMAT.files


@dataclass(repr=False)  # RunResult's short repr
class VerifyResult(RunResult):
    """A ``lowrank verify`` run: the theorems' bounds against measured failure rates.

    ``config`` is run.json; ``arrays`` are verify.npz's, the table on a grid: ``rate``,
    ``ci_low``, ``ci_high`` (95% cluster-robust), ``bound``, ``exact``, ``n_eff``,
    ``p_holm`` (float, NaN where none) and ``failures``, ``trials``, ``clusters`` (int), each
    [series, eps, k], with the axes ``series`` [S] (``statement | P | w``), ``statement``
    [S], ``eps`` [E] and ``ks`` [K]. ``records`` are the rows of verify.csv (one dict per
    statement, source, vectors, eps and k, with its ``verdict``); ``k_needed`` the table of
    the smallest k reaching the target failure rate (verify.json).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    k_needed: list[dict[str, Any]] = field(default_factory=list)

    FORMAT = FORMAT

    def summary(self, at: int | None = None, *, statement: str | None = None) -> pd.DataFrame:
        """verify.csv as a DataFrame: one row per series (statement, source of P, vectors
        w), eps and k, with the failure rate, its 95% interval, the bound, the exact
        probability where known, the Holm p-value and the verdict (``holds, but so does
        zero`` where a trivial P~ meets the same bound), then the failure rates of the
        trivial P~ on the same event, matrices and vectors, ``zero_rate`` and
        ``uniform_rate`` (NaN where none: JL rows, runs before format 3).

        Args:
            at: one k (None: every k).
            statement: one statement (``paper``, ``jl-rows``, ...; None: all).
        """
        import pandas as pd

        ks = [int(k) for k in self.arrays["ks"]]
        if at is not None and at not in ks:
            raise LowrankError(f"at={at}: this run has k = {', '.join(map(str, ks))}")
        rows = [
            r
            for r in self.records
            if (at is None or r["k"] == at) and (statement is None or r["statement"] == statement)
        ]
        frame = pd.DataFrame.from_records(rows, columns=list(self.records[0]))
        trivial: dict[tuple[str, str, str, float, str], float] = {
            (b["statement"], b["source"], b["vectors"], b["eps"], b["baseline"]): b["rate"]
            for b in self.config.get("baselines") or []
        }
        for name in ("zero", "uniform"):
            frame[f"{name}_rate"] = [
                trivial.get((r["statement"], r["source"], r["vectors"], r["eps"], name), np.nan)
                for r in rows
            ]
        return frame.reset_index(drop=True)

    def baselines(self) -> pd.DataFrame:
        """The trivial P~ (``zero``, ``uniform`` attention) on every event they apply to:
        one row per (statement, source, vectors, baseline, eps) with its failure rate, 95%
        interval (the measured rows' clusters), pass rate, and whether it is below the bound
        at each k (``below_bound``) and below the target (``meets_target``). Empty for runs
        of format 1 and 2, which did not measure them."""
        import pandas as pd

        return pd.DataFrame.from_records(self.config.get("baselines") or [])

    def needed(self) -> pd.DataFrame:
        """Per series and eps: the smallest measured k whose rate (point, and certified by
        the upper 95% bound) is below the target, beside the k at which the bound reaches it."""
        import pandas as pd

        return pd.DataFrame.from_records(self.k_needed)

    def report(self) -> str:
        """Exactly what ``lowrank verify`` prints to stdout for this run."""
        from lowrank.families.verify.report import verify_report

        return verify_report(self.config, self.records, self.k_needed, self.path, self.figures)

    def extra_files(self) -> dict[str, bytes]:
        """verify.csv (the rows) and verify.json (the rows and the k-needed table)."""
        table = {"rows": self.records, "k_needed": self.k_needed}
        return {VERIFY_CSV: csv_bytes(self.records), VERIFY_JSON: json_bytes(table)}

    @classmethod
    def from_folder(
        cls, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> VerifyResult:
        """The run with verify.json's tables, checked against their schema."""
        table = read_json(path / VERIFY_JSON)
        if int(meta.get("format_version", 1)) >= 2:
            validate(VerifyTable, table, path / VERIFY_JSON)
        elif not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise LowrankError(f"'{path / VERIFY_JSON}' lacks its rows")
        return cls(meta, arrays, path, table["rows"], table.get("k_needed") or [])

    def plot(self, ax: Axes | None = None, *, series: str | None = None) -> Axes:
        """Failure rate against k of one ``series`` (``statement | P | w``; default the
        jl-rows statement on real value columns), a line per eps, bounds dashed; the axes."""
        from lowrank.families.verify.plots import plot_failure_vs_k, series_names

        names = series_names(self.arrays)
        default = "jl-rows | real | values"
        series = series or (default if default in names else names[0])
        if series not in names:
            raise LowrankError(f"series={series!r} is not in this run: {', '.join(names)}")
        theory = {
            float(r["eps"]): r.get("theory_k_at_target")
            for r in self.k_needed
            if r["series"] == series
        }
        return plot_failure_vs_k(self.arrays, series, theory, ax)

    def figure(self, every: bool = False) -> Figure:
        """The CLI's figure: the headline series (all with ``every``), a panel each."""
        from lowrank.families.verify.plots import verify_figure

        return verify_figure(self.config, self.arrays, self.k_needed, every)

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write the CLI's figure (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.families.verify.plots import write_figures

        self.figures = write_figures([self], self.figure_folder(folder))
        return self.figures


class VerifyRow(BaseModel):
    """One row of verify.json (and verify.csv), format 2."""

    model_config = ConfigDict(extra="allow", strict=True)

    series: str
    statement: str
    source: str
    vectors: str
    eps: float
    k: Annotated[int, Field(ge=1)]
    failures: Annotated[int, Field(ge=0)]
    trials: Annotated[int, Field(ge=0)]
    clusters: Annotated[int, Field(ge=0)]
    n_eff: float
    rate: float
    ci_low: float
    ci_high: float
    bound: float | None
    exact: float | None
    p_holm: float | None
    verdict: str


class KNeeded(BaseModel):
    """One row of verify.json's ``k_needed`` table."""

    model_config = ConfigDict(extra="allow", strict=True)

    series: str
    statement: str
    eps: float
    measured_k: int | None
    certified_k: int | None
    theory_k_at_target: float | None
    ratio: float | None


class VerifyTable(BaseModel):
    """verify.json: the rows and the k-needed table."""

    model_config = ConfigDict(extra="allow", strict=True)

    rows: Annotated[list[VerifyRow], Field(min_length=1)]
    k_needed: list[KNeeded]
