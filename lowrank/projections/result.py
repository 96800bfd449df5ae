"""The results of ``lowrank.project`` and ``lowrank.verify``: run folders held in memory.

:class:`ProjectionResult` carries projection.npz's arrays under their names
(``res.arrays["theorem2_gaussian_mean"]`` is ``res.theorem2_gaussian_mean``, [K, layers,
heads]) and run.json as ``res.config``; :class:`VerifyResult` carries verify.npz's arrays
(each [series, eps, k]) and the rows of verify.csv. Both print as the CLI does
(``report()``), give paper tables (``summary()``), draw their figures and save normal run
folders that ``lowrank.load`` and the CLI read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lowrank.errors import LowrankError
from lowrank.projections.approximation import METRICS
from lowrank.runs.folders import (
    PROJECTION_FORMAT,
    PROJECTION_NPZ,
    ProjectionRun,
    read_json,
    read_meta,
    read_npz,
    read_projection_run,
)
from lowrank.runs.result import RunResult, register
from lowrank.runs.writing import check_out_dir, csv_bytes, json_bytes, write_run

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

VERIFY_FORMAT = "lowrank-verify"
VERIFY_NPZ = "verify.npz"
VERIFY_CSV = "verify.csv"
VERIFY_JSON = "verify.json"
KINDS = ("theorem1", "theorem2")
_UNSAVED = Path("<not saved>")


def _metric_key(kind: str, row: str, metric: str) -> str:
    return f"{kind}_{row}" if metric == "error" else f"{kind}_{row}_{metric}"


@register(PROJECTION_FORMAT)
@dataclass
class ProjectionResult(RunResult):
    """A ``lowrank project`` run: projection errors against k on real attention.

    ``config`` is run.json; ``arrays`` are projection.npz's, named as there:

    * ``ks`` [K], ``methods``, ``estimators``, ``metrics``, ``rows_theorem1``,
      ``rows_theorem2`` (the row names of each kind), ``input_ids`` [N, n];
    * ``{kind}_{row}[_{metric}]_samples`` [K, layers, heads, N x draws] (float32): one value
      per sequence and draw, with ``kind`` theorem1/theorem2, ``metric`` absent (the raw
      relative error), ``scale-free`` or ``cosine``;
    * ``{kind}_{row}[_{metric}]_{mean,median,p95}`` [K, layers, heads]: over the samples.

    ``figures`` lists the figure files drawn by ``plot=True`` or :meth:`draw`.
    """

    figures: list[Path] = field(default_factory=list)

    @property
    def run(self) -> ProjectionRun:
        """The run as :class:`lowrank.runs.folders.ProjectionRun` (what the figures read)."""
        return ProjectionRun(self.path or _UNSAVED, self.config, self.arrays)

    def rows(self, kind: str) -> list[str]:
        """Row names of ``kind`` (``theorem1``/``theorem2``): methods, estimator variants
        such as ``gaussian[projector]``, then the references (``output-floor``, ``zero``,
        ``uniform``)."""
        return self.run.rows(kind)

    def stat(self, kind: str, row: str, stat: str = "mean", metric: str = "error") -> np.ndarray:
        """[K, layers, heads] statistic (``mean``/``median``/``p95`` over sequences x draws)
        of one ``metric`` (``error``, ``scale-free``, ``cosine``) of a row."""
        return self.run.stat(kind, row, stat, metric)

    def summary(
        self,
        at: int | None = None,
        *,
        kind: str | None = None,
        metric: str | None = None,
        per_head: bool = False,
    ) -> pd.DataFrame:
        """The table the CLI prints, as a DataFrame.

        One row per (kind, row, metric, k): ``mean`` over sequences, draws, layers and heads,
        its 95% t-interval over sequences (``ci_low``, ``ci_high``; cluster = sequence, NaN
        for one sequence) and, for the raw and scale-free errors of methods, the verdict
        against both trivial baselines (``+`` beats zero and uniform attention, ``-`` loses
        to one, ``~`` inconclusive; Holm over the run's tests).

        Args:
            at: one k (None: every k of the run).
            kind: ``theorem1`` or ``theorem2`` (None: both).
            metric: ``error``, ``scale-free`` or ``cosine`` (None: all three).
            per_head: one row per (kind, row, metric, k, layer, head) instead, with the
                ``mean``, ``median`` and ``p95`` over that head's sequences x draws.
        """
        import pandas as pd

        from lowrank.projections.project import cell_verdicts, sequence_clusters
        from lowrank.runs.stats import t_interval

        ks = [int(k) for k in self.arrays["ks"]]
        if at is not None and at not in ks:
            raise LowrankError(f"at={at}: this run has k = {', '.join(map(str, ks))}")
        for name, value, allowed in (("kind", kind, KINDS), ("metric", metric, METRICS)):
            if value is not None and value not in allowed:
                raise LowrankError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
        n_seq = int(self.config["num_sequences"])
        verdicts = cell_verdicts(self.config.get("baseline_tests") or [])
        records: list[dict[str, Any]] = []
        for kd in [kind] if kind else KINDS:
            for row in self.rows(kd):
                for mt in [metric] if metric else METRICS:
                    key = _metric_key(kd, row, mt)
                    if f"{key}_mean" not in self.arrays:
                        continue
                    clusters = (
                        sequence_clusters(self.arrays[f"{key}_samples"], n_seq)
                        if f"{key}_samples" in self.arrays and not per_head
                        else None
                    )
                    for ki, k in enumerate(ks):
                        if at is not None and k != at:
                            continue
                        base = {"kind": kd, "row": row, "metric": mt, "k": k}
                        if per_head:
                            records += self._head_records(base, key, ki)
                            continue
                        mean = float(np.nanmean(self.arrays[f"{key}_mean"][ki]))
                        lo, hi = (np.nan, np.nan)
                        if clusters is not None:
                            mean = float(clusters[ki].mean())
                            lo, hi = t_interval(clusters[ki])
                        records.append(
                            base
                            | {
                                "mean": mean,
                                "ci_low": lo,
                                "ci_high": hi,
                                "sequences": n_seq,
                                "verdict": verdicts.get((kd, row, mt, k)),
                            }
                        )
        return pd.DataFrame.from_records(records)

    def _head_records(self, base: dict[str, Any], key: str, ki: int) -> list[dict[str, Any]]:
        stats = {s: self.arrays[f"{key}_{s}"][ki] for s in ("mean", "median", "p95")}
        layers, heads = stats["mean"].shape
        return [
            base
            | {"layer": layer, "head": head}
            | {s: float(v[layer, head]) for s, v in stats.items()}
            for layer in range(layers)
            for head in range(heads)
        ]

    def effects(self) -> pd.DataFrame:
        """The model-level effect: one row per replacement of every layer's attention
        (a method, sharing and k, or a baseline with k None): relative error, scale-free
        error and cosine of the final hidden states with their 95% t-intervals over
        sequences, the masked-LM loss where the model has a head, and the verdict against
        the baselines. Empty without ``model_effect``."""
        import pandas as pd

        results = (self.config.get("model_effect") or {}).get("results") or []
        records = []
        for e in results:
            records.append(
                {
                    "method": e["method"],
                    "sharing": e["sharing"],
                    "k": e["k"],
                    "relative_error": e["relative_error"],
                    "relative_error_ci_low": e["relative_error_ci"][0],
                    "relative_error_ci_high": e["relative_error_ci"][1],
                    "scale_free": e["scale_free"],
                    "cosine": e["cosine"],
                    "cosine_ci_low": e["cosine_ci"][0],
                    "cosine_ci_high": e["cosine_ci"][1],
                    "mlm_loss": e["mlm_loss"],
                    "mlm_loss_exact": e["mlm_loss_exact"],
                    "verdict": e.get("verdict"),
                }
            )
        frame = pd.DataFrame.from_records(records)
        if not frame.empty:
            frame["k"] = frame["k"].astype("Int64")  # None (a baseline) stays missing
        return frame

    def report(self) -> str:
        """Exactly what ``lowrank project`` prints to stdout for this run."""
        from lowrank.projections.project import project_report

        return project_report(self.config, self.arrays, self.path, self.figures)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run folder (projection.npz, then run.json, each atomically).

        A folder holding this same configuration is replaced; another run needs
        ``overwrite``; files that are not a lowrank run are never touched.
        """
        folder = Path(path)
        check_out_dir(folder, self.config.get("identity", {}), overwrite)
        write_run(folder, self.config, self.arrays, npz=PROJECTION_NPZ)
        self.path = folder
        return folder

    @classmethod
    def read(cls, path: str | Path) -> ProjectionResult:
        """Open a ``lowrank project`` run folder (LowrankError when it is damaged)."""
        run = read_projection_run(path)
        return cls(run.meta, run.arrays, run.path)

    def plot(
        self,
        ax: Axes | None = None,
        *,
        kind: str = "theorem2",
        metric: str = "error",
        legend: bool = True,
    ) -> Axes:
        """Mean ``metric`` (``error``, ``scale-free``, ``cosine``) of ``kind``
        (``theorem1``/``theorem2``) against k, a line per row, the references black and the
        baselines grey (:func:`lowrank.plots.projections.plot_error_vs_k`); ``legend``
        below the axes. Returns the axes.

        Raises:
            LowrankError: a kind or metric this run does not have (the message lists them).
        """
        from lowrank.plots.projections import plot_error_vs_k
        from lowrank.plots.style import choose

        choose("kind", kind, KINDS)
        choose("metric", metric, self._metrics(kind))
        return plot_error_vs_k(self.run, kind, ax, legend=legend, metric=metric)

    def _metrics(self, kind: str) -> list[str]:
        """The metrics this run holds for ``kind`` (format 1 runs: the error only)."""
        rows = self.rows(kind)
        return [
            m
            for m in METRICS
            if any(f"{_metric_key(kind, r, m)}_mean" in self.arrays for r in rows)
        ]

    def heatmap(
        self,
        ax: Axes | None = None,
        *,
        method: str | None = None,
        k: int | None = None,
        kind: str = "theorem2",
    ) -> Axes:
        """Layer x head heatmap of the mean error of ``method`` (a row of ``kind``; default:
        the first that is neither a reference nor a baseline) at ``k`` (default: the run's
        heatmap k). Returns the axes.

        Raises:
            LowrankError: a kind, method (row) or k this run does not have.
        """
        from lowrank.plots.projections import heatmap_method, plot_error_heatmap
        from lowrank.plots.style import choose

        run = self.run
        choose("kind", kind, KINDS)
        method = method or heatmap_method(run, kind)
        choose("method", method, self.rows(kind), f"its {kind} rows are")
        k = int(self.config["heatmap_k"]) if k is None else k
        choose("k", k, [int(x) for x in run.ks])
        return plot_error_heatmap(run, method, int(k), kind, ax)

    def plot_effect(
        self, ax: Axes | None = None, *, family: str | None = None, metric: str = "cosine"
    ) -> Axes:
        """Model-level ``metric`` (``cosine``, ``relative_error`` or ``scale_free``) against
        k for one random projection ``family`` (default: the first measured), a line per
        sharing, the deterministic methods black, the baselines grey. Returns the axes.

        Raises:
            LowrankError: the run has no model effect, or a family or metric it lacks.
        """
        from lowrank.plots.projections import EFFECT_LABEL, plot_effect
        from lowrank.plots.style import choose

        results = (self.config.get("model_effect") or {}).get("results") or []
        families = list(
            dict.fromkeys(
                r["method"] for r in results if r["k"] is not None and r["sharing"] != "n/a"
            )
        )
        if not families:
            raise LowrankError("this run has no model effect of a random projection to plot")
        choose("family", family or families[0], families, "this run's model effect has")
        choose("metric", metric, EFFECT_LABEL)
        drawn = plot_effect(self.run, family or families[0], ax, metric=metric)
        if drawn is None:  # pragma: no cover - results exist, so the panel is drawn
            raise LowrankError("this run has no model effect to plot")
        return drawn

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write the CLI's figures (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.plots.projections import plot_projection_run

        if folder is None and self.path is None:
            raise LowrankError("draw(): give a folder or save the run first")
        target = Path(folder) if folder else Path(self.path or ".") / "figures"
        self.figures = plot_projection_run(self.run, target)
        return self.figures


@register(VERIFY_FORMAT)
@dataclass
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
    figures: list[Path] = field(default_factory=list)

    def summary(self, at: int | None = None, *, statement: str | None = None) -> pd.DataFrame:
        """verify.csv as a DataFrame: one row per series (statement, source of P, vectors
        w), eps and k, with the failure rate, its 95% interval, the bound, the exact
        probability where known, the Holm p-value and the verdict.

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
        return frame.reset_index(drop=True)

    def needed(self) -> pd.DataFrame:
        """Per series and eps: the smallest measured k whose rate (point, and certified by
        the upper 95% bound) is below the target, beside the k at which the bound reaches it."""
        import pandas as pd

        return pd.DataFrame.from_records(self.k_needed)

    def report(self) -> str:
        """Exactly what ``lowrank verify`` prints to stdout for this run."""
        from lowrank.projections.verify import verify_report

        return verify_report(self.config, self.records, self.k_needed, self.path, self.figures)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run folder all-or-nothing: verify.npz, verify.csv, verify.json, then
        run.json (a folder with a run.json is complete).

        A folder holding this same configuration is replaced; another run needs
        ``overwrite``; files that are not a lowrank run are never touched.
        """
        folder = Path(path)
        check_out_dir(folder, self.config.get("identity", {}), overwrite)
        table = {"rows": self.records, "k_needed": self.k_needed}
        files = {VERIFY_CSV: csv_bytes(self.records), VERIFY_JSON: json_bytes(table)}
        write_run(folder, self.config, self.arrays, npz=VERIFY_NPZ, files=files)
        self.path = folder
        return folder

    @classmethod
    def read(cls, path: str | Path) -> VerifyResult:
        """Open a ``lowrank verify`` run folder (LowrankError when it is damaged): run.json
        against its schema, verify.npz against run.json, verify.json's tables."""
        from lowrank.runs.arrays import check_arrays, verify_array_spec
        from lowrank.runs.schema import validate

        folder = Path(path)
        meta = read_meta(folder, VERIFY_FORMAT)
        arrays = read_npz(folder / VERIFY_NPZ)
        check_arrays(folder / VERIFY_NPZ, arrays, verify_array_spec(meta, arrays))
        table = read_json(folder / VERIFY_JSON)
        if int(meta.get("format_version", 1)) >= 2:
            validate(VerifyTable, table, folder / VERIFY_JSON)
        elif not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise LowrankError(f"'{folder / VERIFY_JSON}' lacks its rows")
        return cls(meta, arrays, folder, table["rows"], table.get("k_needed") or [])

    def plot(self, ax: Axes | None = None, *, series: str | None = None) -> Axes:
        """Failure rate against k of one ``series`` (``statement | P | w``; default the
        jl-rows statement on real value columns), a line per eps, bounds dashed; the axes."""
        from lowrank.plots.verify import plot_failure_vs_k, series_names

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
        from lowrank.plots.verify import verify_figure

        return verify_figure(self.config, self.arrays, self.k_needed, every)

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write the CLI's figure (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.plots.verify import save_verify_figure

        if folder is None and self.path is None:
            raise LowrankError("draw(): give a folder or save the run first")
        target = Path(folder) if folder else Path(self.path or ".") / "figures"
        self.figures = save_verify_figure(self.figure(), target)
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
