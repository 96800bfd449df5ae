"""The result of ``lowrank.project``: a projection run held in memory.

:class:`ProjectionResult` carries projection.npz's arrays under their names
(``res.arrays["theorem2_gaussian_mean"]`` is ``res.theorem2_gaussian_mean``, [K, layers,
heads]) and run.json as ``res.config``. It prints as the CLI does (``report()``), gives paper
tables (``summary()``), draws its figures and saves a normal run folder that ``lowrank.load``
and the CLI read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.families.project.approximation import METRICS
from lowrank.families.project.format import FORMAT
from lowrank.runs.folders import RUN_JSON
from lowrank.runs.result import RunResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

KINDS = ("theorem1", "theorem2")


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _metric_key(kind: str, row: str, metric: str) -> str:
    return f"{kind}_{row}" if metric == "error" else f"{kind}_{row}_{metric}"


@dataclass(repr=False)  # RunResult's short repr
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

    FORMAT = FORMAT

    @property
    def methods(self) -> list[str]:
        """The projection methods measured (``gaussian``, ``mean-pool``, ...)."""
        return [str(m) for m in self.arrays["methods"]]

    @property
    def ks(self) -> np.ndarray:
        """[K] the projected dimensions k, increasing."""
        return self.arrays["ks"]

    def rows(self, kind: str) -> list[str]:
        """Row names of ``kind`` (``theorem1``/``theorem2``): methods, estimator variants
        such as ``gaussian[projector]``, then the references (``output-floor``, ``zero``,
        ``uniform``). Runs of format_version 1 stored one row per method."""
        key = f"rows_{kind}"
        return [str(r) for r in self.arrays[key]] if key in self.arrays else self.methods

    def stat(self, kind: str, row: str, stat: str = "mean", metric: str = "error") -> np.ndarray:
        """[K, layers, heads] statistic (``mean``/``median``/``p95`` over sequences x draws)
        of one ``metric`` (``error``, ``scale-free``, ``cosine``) of a row.

        Raises:
            LowrankError: the run holds no such statistic.
        """
        key = f"{_metric_key(kind, row, metric)}_{stat}"
        if key not in self.arrays:
            raise LowrankError(f"'{self.path or 'this run'}' has no {key}")
        return self.arrays[key]

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
        its 95% interval over sequences inside the metric's range (``ci_low``, ``ci_high``;
        cluster = sequence; Student-t on the logit/log scale of the range, mapped back; NaN
        below 3 sequences) and, for the raw and scale-free errors of methods, the verdict
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

        from lowrank.families.project.workflow import (
            cell_verdicts,
            cluster_interval,
            sequence_clusters,
        )

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
                            iv = cluster_interval(clusters[ki], mt)
                            mean, lo, hi = iv.mean, iv.low, iv.high
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
        error and cosine of the final hidden states with their 95% intervals over
        sequences (inside the range; NaN below 3 sequences), the masked-LM loss where the
        model has a head, and the verdict against the baselines. Empty without ``model_effect``."""
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
                    "relative_error_ci_low": _or_nan(e["relative_error_ci"][0]),
                    "relative_error_ci_high": _or_nan(e["relative_error_ci"][1]),
                    "scale_free": e["scale_free"],
                    "cosine": e["cosine"],
                    "cosine_ci_low": _or_nan(e["cosine_ci"][0]),
                    "cosine_ci_high": _or_nan(e["cosine_ci"][1]),
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
        from lowrank.families.project.workflow import project_report

        return project_report(self.config, self.arrays, self.path, self.figures)

    @classmethod
    def from_folder(
        cls, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> ProjectionResult:
        """The run, once its heatmap k is checked to be one of its ks."""
        if int(meta["heatmap_k"]) not in arrays["ks"].tolist():
            raise LowrankError(
                f"'{path / RUN_JSON}': heatmap_k {meta['heatmap_k']} is not one of the ks "
                f"{arrays['ks'].tolist()} of '{path / FORMAT.npz}'"
            )
        return cls(meta, arrays, path)

    def plot(
        self,
        ax: Axes | None = None,
        *,
        kind: str = "theorem2",
        metric: str = "error",
        estimator: str | None = None,
        legend: bool = True,
    ) -> Axes:
        """Mean ``metric`` (``error``, ``scale-free``, ``cosine``) of ``kind``
        (``theorem1``/``theorem2``) against k, a line per row, the references black and the
        baselines grey (:func:`lowrank.families.project.plots.plot_error_vs_k`); JL families
        whose means agree within 10% drawn once, the legend naming them. Under Theorem 1,
        the rows of one ``estimator`` (``paper`` or ``projector``; None: the run's first,
        ``paper``, Theorem 1's own construction). ``legend`` below the axes. Returns the
        axes.

        Raises:
            LowrankError: a kind, metric or estimator this run does not have (the message
                lists them).
        """
        from lowrank.families.project.plots import plot_error_vs_k
        from lowrank.plots.style import choose

        choose("kind", kind, KINDS)
        choose("metric", metric, self._metrics(kind))
        estimators = [str(e) for e in self.arrays.get("estimators", [])]
        if estimator is not None:
            choose("estimator", estimator, estimators)
        elif kind == "theorem1" and estimators:
            estimator = estimators[0]  # one estimator per panel: Theorem 1's own first
        return plot_error_vs_k(self, kind, ax, legend=legend, metric=metric, estimator=estimator)

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
        from lowrank.families.project.plots import heatmap_method, plot_error_heatmap
        from lowrank.plots.style import choose

        run = self
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
        from lowrank.families.project.effect_plots import EFFECT_LABEL, plot_effect, random_families
        from lowrank.plots.style import choose

        families = random_families(self)
        if not families:
            raise LowrankError("this run has no model effect of a random projection to plot")
        choose("family", family or families[0], families, "this run's model effect has")
        choose("metric", metric, EFFECT_LABEL)
        drawn = plot_effect(self, family or families[0], ax, metric=metric)
        if drawn is None:  # pragma: no cover - results exist, so the panel is drawn
            raise LowrankError("this run has no model effect to plot")
        return drawn

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write the CLI's figures (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.families.project.plots import write_figures

        self.figures = write_figures([self], self.figure_folder(folder))
        return self.figures
