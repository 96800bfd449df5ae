"""The result of ``lowrank compare``: every family's errors per budget, layer and head.

:class:`CompareResult` is a ``compare.npz`` + ``run.json`` run folder in memory; its figures
draw it directly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.core.options import named
from lowrank.errors import LowrankError
from lowrank.families.compare.format import FORMAT
from lowrank.runs.folders import RUN_JSON
from lowrank.runs.result import RunResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

METRIC_KEY: dict[str, str] = {
    "output": "output_error",
    "probs": "probs_error",
    "output-scaled": "output_scaled_error",
}
METRIC_LABEL: dict[str, str] = {
    "output_error": "output error ||P~V - PV|| / ||PV||",
    "probs_error": "attention error ||P~ - P||_F / ||P||_F",
    "output_scaled_error": "scale-free output error min_a ||a P~V - PV|| / ||PV||",
    "output_cosine": "output cosine",
}


@dataclass(repr=False)  # RunResult's short repr
class CompareResult(RunResult):
    """A ``lowrank compare`` run: low-rank against sparse, LSH, kernel and Nystrom attention.

    Arrays (``compare.npz``; F rows of ``families`` (variants, then the zero and uniform
    baselines), K ``budgets``, L layers, H heads):

    - ``families`` [F], ``budgets`` [K], ``metrics``, ``head_stats`` (names);
    - per metric (``probs_error``, ``output_error``, ``output_scaled_error``,
      ``output_cosine``): ``<metric>_mean``, ``<metric>_std``, ``<metric>_m2``
      [F, K, L, H] over sequences (NaN where a family does not apply);
    - ``attended_mean``, ``coverage_mean`` [F, K, L, H]: keys attended per query and
      P's mass on them (NaN for families without a mask);
    - ``entropy_mean``, ``sink_mass_mean``, ``effective_rank_mean`` (and ``_std``) [L, H];
      ``c_at_budget_mean``, ``c_at_budget_std`` [K, L, H];
    - ``winner``, ``winner_from_q_k`` [K, L, H]: index into ``families`` of the least
      error (-1: none applies); ``applicable`` [F]; ``num_sequences``; ``input_ids`` [N, n];
    - from format 2: ``output_floor`` (and ``_std``) [K, L, H], the least output error of
      any rank-b P~ (mean over sequences); ``per_sequence_error`` [N, F, K, L, H, 2]
      (``probs_error``, ``output_error`` of every sequence); ``entropy_per_sequence``
      [N, L, H].

    The oracles (best rank b, top b) are optimal for ``probs_error`` only; the verdicts on
    them (``config["findings"]``, :meth:`sparse_vs_lowrank`) name their metric.
    """

    FORMAT = FORMAT

    @property
    def families(self) -> list[str]:
        """The attention families compared, in the order of the arrays' family axis."""
        return [str(f) for f in self.arrays["families"]]

    @property
    def budgets(self) -> list[int]:
        """The budgets b (about n b numbers each), in the order of the budget axis."""
        return [int(b) for b in self.arrays["budgets"]]

    @property
    def focus_budget(self) -> int:
        """The budget the report, the winner map and ``summary()`` read by default."""
        return int(self.config["focus_budget"])

    def table(self, metric: str = "output_error", stat: str = "mean") -> np.ndarray:
        """(F, K, L, H) ``{metric}_{stat}``, e.g. ``output_error``, ``mean``."""
        key = f"{metric}_{stat}"
        if key not in self.arrays:
            raise LowrankError(f"'{self.path}' has no {key}")
        return self.arrays[key]

    def values(
        self, family: str, budget: int, metric: str = "output_error", stat: str = "mean"
    ) -> np.ndarray:
        """(L, H) one family's metric at one budget."""
        if family not in self.families or budget not in self.budgets:
            raise LowrankError(f"'{self.path}' has no {family} at b = {budget}")
        table = self.table(metric, stat)
        return table[self.families.index(family), self.budgets.index(budget)]

    def _table(self, budget: int | None = None, metric: str | None = None) -> Any:
        """A pandas DataFrame, one row per (layer, head): entropy, sink mass, c at b,
        effective rank, each family's error and the winner at ``budget``."""
        import pandas as pd

        budget = budget if budget is not None else int(self.config["focus_budget"])
        metric = metric or str(self.config["winner_metric"])
        ki = self.budgets.index(budget)
        layers, heads = self.arrays["entropy_mean"].shape
        layer, head = np.meshgrid(np.arange(1, layers + 1), np.arange(1, heads + 1), indexing="ij")
        frame: dict[str, Any] = {"layer": layer.ravel(), "head": head.ravel()}
        for name in ("entropy", "sink_mass", "effective_rank"):
            frame[name] = self.arrays[f"{name}_mean"].ravel()
        frame["c_at_budget"] = self.arrays["c_at_budget_mean"][ki].ravel()
        if "output_floor" in self.arrays:  # format 2: the least output error of rank b
            frame["output_floor"] = self.arrays["output_floor"][ki].ravel()
        table = self.table(metric)
        for fi, family in enumerate(self.families):
            frame[family] = table[fi, ki].ravel()
        winner = self.arrays["winner"][ki].ravel()
        frame["winner"] = [self.families[w] if w >= 0 else "" for w in winner]
        return pd.DataFrame(frame)

    def _budget(self, budget: int | None) -> int:
        if budget is None:
            return self.focus_budget
        if budget not in self.budgets:
            raise LowrankError(
                f"{named('at', budget)}: this compare run has budgets "
                f"{', '.join(map(str, self.budgets))}"
            )
        return budget

    def summary(
        self, at: int | None = None, metric: str | None = None, **options: Any
    ) -> pd.DataFrame:
        """One row per (layer, head) at budget ``at`` (default: the run's focus budget):
        entropy, sink mass, effective rank, c at the budget, the output floor (format 2),
        each family's mean error on
        ``metric`` (default: the metric that picks the winner) and the winner.

        Raises:
            LowrankError: ``at`` is not one of the run's budgets, or an unknown metric.
        """
        budget = self._budget(at)
        metric = metric or str(self.config.get("winner_metric", "output_error"))
        if f"{metric}_mean" not in self.arrays:
            known = ", ".join(METRIC_LABEL)
            raise LowrankError(f"metric {metric!r}: choose one of {known}")
        return self._table(budget, metric)

    def report(self) -> str:
        """What ``lowrank compare`` prints: the median error per family and budget, the
        finding at the focus budget, the run folder and the figures."""
        key = str(self.config["winner_metric"])
        budgets, rows = self.budgets, self.families
        lines = ["", f"{METRIC_LABEL[key]}: median over heads of the mean over sequences"]
        if key != "probs_error":
            lines.append("(the oracles are optimal for ||P~ - P||_F only)")
        lines.append("  family                " + "".join(f"{'b=' + str(b):>9}" for b in budgets))
        table = self.arrays[f"{key}_mean"]
        for i, name in enumerate(rows):
            flat = table[i].reshape(len(budgets), -1)
            if np.isnan(flat).all():
                lines.append(f"  {name:<22}" + "      n/a" * len(budgets))
                continue
            medians = np.nanmedian(flat, axis=1)
            lines.append(f"  {name:<22}" + "".join(f"{v:>9.4f}" for v in medians))
        floor = self.arrays.get("output_floor")
        if key == "output_error" and floor is not None:
            medians = np.nanmedian(floor.reshape(len(budgets), -1), axis=1)
            lines.append(f"  {'floor: any rank-b P~':<22}" + "".join(f"{v:>9.4f}" for v in medians))
        lines += ["", finding_text(self.config.get("finding"))]
        if self.path is not None:
            out = self.path
            lines.append(f"run folder: {out}  ({out / 'run.json'}, {out / FORMAT.npz})")
        lines += [f"figure: {path}" for path in self.figures]
        return "\n".join(lines)

    # --- figures ---------------------------------------------------------------------------

    def _metric(self, metric: str | None) -> str | None:
        """``metric`` checked against the run's arrays (None: the run's winner metric)."""
        from lowrank.plots.style import choose

        if metric is not None:
            held = [m for m in METRIC_LABEL if f"{m}_mean" in self.arrays]
            choose("metric", metric, held)
        return metric

    def _budget_option(self, budget: int | None) -> int:
        """``budget`` checked against the run's budgets (None: the focus budget)."""
        from lowrank.plots.style import choose

        if budget is None:
            return self.focus_budget
        choose("budget", budget, self.budgets)
        return int(budget)

    def plot(
        self,
        ax: Axes | None = None,
        *,
        metric: str | None = None,
        families: list[str] | None = None,
        legend: bool = True,
    ) -> Axes:
        """Median over heads of each family's error against the budget, with the
        interquartile range as a bar (:func:`lowrank.families.compare.plots.plot_error_vs_budget`);
        ``families`` picks the series (default: both oracles, the best three families from
        Q and K at the focus budget and the uniform baseline; on the output error the output
        floor of a rank-b P~ too), ``legend`` sits below the axes. Returns the axes.

        Raises:
            LowrankError: a metric or family this run does not have.
        """
        from lowrank.families.compare.plots import plot_error_vs_budget
        from lowrank.plots.style import choose

        for family in families or []:
            choose("families", family, self.families, "this run has the families")
        return plot_error_vs_budget(
            self, self._metric(metric), ax, legend=legend, families=families
        )

    def plot_winners(
        self, ax: Axes | None = None, *, budget: int | None = None, from_q_k: bool = False
    ) -> Axes:
        """Layer x head map of the family with the least error at ``budget`` (default: the
        focus budget; ``from_q_k``: among the families that need only Q and K), with a
        legend of the winning families' colours. Returns the axes.

        Raises:
            LowrankError: a budget this run does not have.
        """
        from lowrank.families.compare.plots import plot_winner_map

        return plot_winner_map(self, self._budget_option(budget), ax, from_q_k)

    def plot_ratio_vs_entropy(
        self, ax: Axes | None = None, *, budget: int | None = None, metric: str | None = None
    ) -> Axes:
        """ln(err sparse / err low-rank) of the oracles against each head's entropy (> 0:
        low-rank better; the ratio of the printed finding), a colour per layer, titled with
        the verdict (heads won, AUC and rho with their intervals). Returns the axes.

        Raises:
            LowrankError: the run lacks either oracle, or a budget or metric it does not have.
        """
        from lowrank.families.compare.plots import plot_ratio_vs_entropy

        if not {"lowrank-oracle", "sparse-oracle"} <= set(self.families):
            raise LowrankError("this run has no lowrank-oracle and sparse-oracle to compare")
        budget = self._budget_option(budget)
        return plot_ratio_vs_entropy(self, budget, self._metric(metric), ax)

    def heatmap(
        self,
        ax: Axes | None = None,
        *,
        family: str | None = None,
        budget: int | None = None,
        metric: str | None = None,
    ) -> Axes:
        """Layer x head heatmap of one ``family``'s mean error (default: the first family)
        at ``budget`` (default: the focus budget), with a colour bar. Returns the axes.

        Raises:
            LowrankError: a family, budget or metric this run does not have.
        """
        from lowrank.families.compare.plots import plot_family_heatmap
        from lowrank.plots.style import choose

        family = family or self.families[0]
        choose("family", family, self.families)
        budget = self._budget_option(budget)
        return plot_family_heatmap(self, family, budget, self._metric(metric), ax)

    def plot_heatmap(
        self,
        ax: Axes | None = None,
        *,
        family: str | None = None,
        budget: int | None = None,
        metric: str | None = None,
    ) -> Axes:
        """Deprecated name of :meth:`heatmap` (the name every result type uses)."""
        warnings.warn(
            "CompareResult.plot_heatmap() is now heatmap(), as on every result type",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.heatmap(ax, family=family, budget=budget, metric=metric)

    def sparse_vs_lowrank(self, at: int | None = None, metric: str = "probs_error") -> Any:
        """The verdict on the sparse oracle against the low-rank oracle at budget ``at``
        (default: the focus budget) on ``metric``: head counts, ``separability`` (AUC of
        entropy with its interval, the best in-sample cut, the cross-fitted cut) and
        ``entropy_spearman`` (rho of entropy and ln(err sparse / err low-rank), pooled and per
        layer, with intervals), as run.json records it; recomputed where the run did not
        record it (format 1: from the means, resampling layers). None where the low-rank
        oracle does not apply (causal models) or the run lacks an oracle.

        Raises:
            LowrankError: a budget or metric this run does not have.
        """
        from lowrank.families.compare.verdicts import sparse_vs_lowrank

        budget = self._budget(at)
        if f"{metric}_mean" not in self.arrays:
            raise LowrankError(f"metric {metric!r}: choose one of {', '.join(METRIC_LABEL)}")
        stored = _stored_versus(self.config.get("findings"), budget, metric)
        if stored is not None:
            return stored
        seed = int(self.config["compare"]["seed"])
        ki = self.budgets.index(budget)
        return sparse_vs_lowrank(self.arrays, self.families, ki, metric, seed)

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write every comparison figure (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.families.compare.plots import write_figures

        self.figures = write_figures([self], self.figure_folder(folder))
        return self.figures

    @classmethod
    def from_folder(
        cls, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> CompareResult:
        """The run, once its focus budget and winner metric are checked against its arrays."""
        folder, npz_path = path, path / FORMAT.npz
        budgets = arrays["budgets"].tolist()
        if meta["focus_budget"] not in budgets:
            raise LowrankError(
                f"'{folder / RUN_JSON}': focus_budget {meta['focus_budget']} is not one of the "
                f"budgets {budgets} of '{npz_path}'"
            )
        if f"{meta['winner_metric']}_mean" not in arrays:
            raise LowrankError(
                f"'{folder / RUN_JSON}': winner_metric {meta['winner_metric']!r} names no array "
                f"of '{npz_path}'"
            )
        return cls(meta, arrays, path)


def finding_text(finding: Any) -> str:
    """The printed finding: format 1 stored it as text, format 2 as a record with ``text``."""
    if isinstance(finding, dict):
        finding = finding.get("text", "")
    return finding if isinstance(finding, str) else ""


def _stored_versus(findings: Any, budget: int, metric: str) -> dict[str, Any] | None:
    """run.json's record of the sparse-against-low-rank verdict, if it holds one of the
    format-2 shape at this budget and metric (else None: recompute it)."""
    if not isinstance(findings, list):
        return None
    for entry in findings:
        if isinstance(entry, dict) and entry.get("budget") == budget:
            versus = entry.get("sparse_vs_lowrank")
            record = versus.get(metric) if isinstance(versus, dict) else None
            keys = ("separability", "entropy_spearman", "sparse", "heads")
            if isinstance(record, dict) and all(k in record for k in keys):
                return record
    return None
