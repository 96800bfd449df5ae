"""The result of ``lowrank compare``: every family's errors per budget, layer and head.

:class:`CompareResult` is a ``compare.npz`` + ``run.json`` run folder in memory. It reads
through :func:`lowrank.runs.folders.read_compare_run` (the validated reader) and hands its
figures a :class:`lowrank.runs.folders.CompareRun` view of itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.folders import COMPARE_FORMAT, COMPARE_NPZ, CompareRun, read_compare_run
from lowrank.runs.result import RunResult, register

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


@register(COMPARE_FORMAT)
@dataclass
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
      error (-1: none applies); ``applicable`` [F]; ``num_sequences``; ``input_ids`` [N, n].
    """

    figures: list[Path] = field(default_factory=list, repr=False)

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` (the same dict as ``config``)."""
        return self.config

    @property
    def run(self) -> CompareRun:
        """This result as :class:`~lowrank.runs.folders.CompareRun`, what the figures read."""
        return CompareRun(self.path or Path("(in memory)"), self.config, self.arrays)

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
        """[F, K, L, H] ``<metric>_<stat>``, e.g. ``output_error``, ``mean``."""
        return self.run.table(metric, stat)

    def values(
        self, family: str, budget: int, metric: str = "output_error", stat: str = "mean"
    ) -> np.ndarray:
        """[L, H] one family's metric at one budget."""
        return self.run.values(family, budget, metric, stat)

    def _budget(self, budget: int | None) -> int:
        if budget is None:
            return self.focus_budget
        if budget not in self.budgets:
            raise LowrankError(
                f"--at {budget}: this compare run has budgets {', '.join(map(str, self.budgets))}"
            )
        return budget

    def summary(
        self, at: int | None = None, metric: str | None = None, **options: Any
    ) -> pd.DataFrame:
        """One row per (layer, head) at budget ``at`` (default: the run's focus budget):
        entropy, sink mass, effective rank, c at the budget, each family's mean error on
        ``metric`` (default: the metric that picks the winner) and the winner.

        Raises:
            LowrankError: ``at`` is not one of the run's budgets, or an unknown metric.
        """
        budget = self._budget(at)
        metric = metric or str(self.config.get("winner_metric", "output_error"))
        if f"{metric}_mean" not in self.arrays:
            known = ", ".join(METRIC_LABEL)
            raise LowrankError(f"metric {metric!r}: choose one of {known}")
        return self.run.summary(budget, metric)

    def report(self) -> str:
        """What ``lowrank compare`` prints: the median error per family and budget, the
        finding at the focus budget, the run folder and the figures."""
        key = str(self.config["winner_metric"])
        budgets, rows = self.budgets, self.families
        lines = ["", f"{METRIC_LABEL[key]}: median over heads of the mean over sequences"]
        lines.append("  family                " + "".join(f"{'b=' + str(b):>9}" for b in budgets))
        table = self.arrays[f"{key}_mean"]
        for i, name in enumerate(rows):
            flat = table[i].reshape(len(budgets), -1)
            if np.isnan(flat).all():
                lines.append(f"  {name:<22}" + "      n/a" * len(budgets))
                continue
            medians = np.nanmedian(flat, axis=1)
            lines.append(f"  {name:<22}" + "".join(f"{v:>9.4f}" for v in medians))
        lines += ["", str(self.config.get("finding", ""))]
        if self.path is not None:
            out = self.path
            lines.append(f"run folder: {out}  ({out / 'run.json'}, {out / COMPARE_NPZ})")
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
        interquartile band (:func:`lowrank.plots.comparisons.plot_error_vs_budget`);
        ``families`` picks the lines (default all), ``legend`` sits below the axes.
        Returns the axes.

        Raises:
            LowrankError: a metric or family this run does not have.
        """
        from lowrank.plots.comparisons import plot_error_vs_budget
        from lowrank.plots.style import choose

        for family in families or []:
            choose("families", family, self.families, "this run has the families")
        return plot_error_vs_budget(
            self.run, self._metric(metric), ax, legend=legend, families=families
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
        from lowrank.plots.comparisons import plot_winner_map

        return plot_winner_map(self.run, self._budget_option(budget), ax, from_q_k)

    def plot_ratio_vs_entropy(
        self, ax: Axes | None = None, *, budget: int | None = None, metric: str | None = None
    ) -> Axes:
        """ln(err low-rank / err sparse) of the oracles against each head's entropy, a
        colour per layer. Returns the axes.

        Raises:
            LowrankError: the run lacks either oracle, or a budget or metric it does not have.
        """
        from lowrank.plots.comparisons import plot_ratio_vs_entropy

        if not {"lowrank-oracle", "sparse-oracle"} <= set(self.families):
            raise LowrankError("this run has no lowrank-oracle and sparse-oracle to compare")
        budget = self._budget_option(budget)
        return plot_ratio_vs_entropy(self.run, budget, self._metric(metric), ax)

    def plot_heatmap(
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
        from lowrank.plots.comparisons import plot_family_heatmap
        from lowrank.plots.style import choose

        family = family or self.families[0]
        choose("family", family, self.families)
        budget = self._budget_option(budget)
        return plot_family_heatmap(self.run, family, budget, self._metric(metric), ax)

    def write_figures(self, out: str | Path | None = None) -> list[Path]:
        """Every comparison figure (PDF and PNG) into ``out`` (default ``<path>/figures``)."""
        from lowrank.plots.comparisons import write_compare_figures

        if out is None:
            if self.path is None:
                raise LowrankError("this result is not saved: pass a folder for the figures")
            out = self.path / "figures"
        return write_compare_figures(self.run, Path(out))

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``compare.npz`` then ``run.json`` (each atomically) into ``path``.

        Raises:
            LowrankError: ``path`` holds another run (without ``overwrite``) or files that
                are not a lowrank run.
        """
        from lowrank.runs.writing import check_out_dir, write_run

        out = Path(path)
        check_out_dir(out, self.config["identity"], overwrite)
        write_run(out, self.config, self.arrays, npz=COMPARE_NPZ)
        self.path = out
        return out

    @classmethod
    def read(cls, path: str | Path) -> CompareResult:
        """Open a ``lowrank compare`` folder (validated by
        :func:`~lowrank.runs.folders.read_compare_run`)."""
        run = read_compare_run(path)
        return cls(run.meta, run.arrays, run.path)
