"""The result of ``lowrank scaling``: the fits and verdicts, and one spectrum run per n.

A scaling run folder holds ``run.json`` and ``scaling.npz`` (format ``lowrank-scaling``) and a
normal spectrum run folder ``n<n>/`` per length. :class:`ScalingResult` holds all of them in
memory, prints the command's summary (:meth:`ScalingResult.report`), tabulates it
(:meth:`ScalingResult.summary`), draws it and writes it back.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.core.options import named
from lowrank.errors import LowrankError
from lowrank.families.scaling.format import FORMAT
from lowrank.families.scaling.measures import C_MEASURES, MEASURE_LABELS, MEASURES
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.runs.result import RunResult
from lowrank.runs.writing import check_out_dir, write_run

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


_REQUIRED = ("bootstrap", "tau", "fixed_index")  # beyond the schema: what report() reads


@dataclass
class ScalingResult(RunResult):
    """A ``lowrank scaling`` run: rank measures against n, their fits and verdicts.

    Arrays (``scaling.npz``; S lengths, D documents, L layers, H heads, G = L + 1 groups:
    each layer, then the whole model):

    - ``ns`` [S], ``groups`` [G], ``measures``, ``c_measures``, ``documents`` [D] (indices
      into the corpus), ``sequences_used`` [S], ``fit_documents``, ``tau``, ``fixed_index``,
      ``bootstrap`` (scalars);
    - per measure in ``MEASURES + C_MEASURES``: the per-document values [S, D, L, H] and
      ``<m>_mean`` [G, S] (mean over documents and heads, and layers for ``model``);
    - per fitted measure: ``<m>_interval`` [G, S, 2] (95% bootstrap interval of the mean),
      ``<m>_log_params`` (a, b of a + b ln n) and ``<m>_power_params`` (a, beta of a n^beta)
      [G, 2], ``<m>_delta_aic``, ``<m>_aic_support``, ``<m>_heldout_support`` [G],
      ``<m>_heldout_error`` [G, 2] (log, power), ``<m>_beta_interval`` [G, 2] and
      ``<m>_verdict`` [G] (text).

    ``runs`` maps each n to its spectrum run, a
    :class:`~lowrank.families.spectrum.result.SpectrumResult` (``res.runs[64].summary()``).
    """

    runs: dict[int, SpectrumResult] = field(default_factory=dict, repr=False)

    FORMAT = FORMAT

    @property
    def ns(self) -> list[int]:
        """The sequence lengths n, in the order of the arrays' n axis."""
        return [int(n) for n in self.arrays["ns"]]

    @property
    def groups(self) -> list[str]:
        """The groups each measure is fitted for: 'layer 1', ..., and 'model'."""
        return [str(g) for g in self.arrays["groups"]]

    @property
    def causal(self) -> bool:
        """True for a decoder: its P is lower-triangular (see docs/spectrum.md)."""
        return bool(self.config.get("causal"))

    @property
    def label(self) -> str:
        """``model / corpus`` as figures name the run (:func:`lowrank.runs.labels.run_label`)."""
        from lowrank.runs.labels import run_label

        return run_label(self.config)

    def verdict(self, measure: str, group: str = "model") -> str:
        """The verdict on ``measure`` for a group ('layer 1', ..., 'model')."""
        return str(self.arrays[f"{measure}_verdict"][self.groups.index(group)])

    # --- tables ----------------------------------------------------------------------------

    def summary(self, at: int | None = None, **options: Any) -> pd.DataFrame:
        """One row per (fitted measure, group): the mean at every n (``n=<n>`` columns;
        only the n ``at`` when given), the verdict, beta with its 95% interval, the AIC
        difference (log minus power) and its support, and the held-out errors at the
        largest n with their support.

        Raises:
            LowrankError: ``at`` is not one of the run's n.
        """
        import pandas as pd

        ns = self.ns
        if at is not None and at not in ns:
            raise LowrankError(
                f"{named('at', at)}: this scaling run has n = {', '.join(map(str, ns))}"
            )
        columns = [(s, n) for s, n in enumerate(ns) if at is None or n == at]
        rows = []
        for m in MEASURES:
            for g, group in enumerate(self.groups):
                row: dict[str, Any] = {"measure": m, "group": group}
                for s, n in columns:
                    row[f"n={n}"] = float(self.arrays[f"{m}_mean"][g, s])
                lo, hi = self.arrays[f"{m}_beta_interval"][g]
                log_err, power_err = self.arrays[f"{m}_heldout_error"][g]
                row |= {
                    "verdict": self.verdict(m, group),
                    "beta": float(self.arrays[f"{m}_power_params"][g, 1]),
                    "beta_lo": float(lo),
                    "beta_hi": float(hi),
                    "delta_aic": float(self.arrays[f"{m}_delta_aic"][g]),
                    "aic_support": float(self.arrays[f"{m}_aic_support"][g]),
                    "heldout_error_log": float(log_err),
                    "heldout_error_power": float(power_err),
                    "heldout_support": float(self.arrays[f"{m}_heldout_support"][g]),
                }
                rows.append(row)
        return pd.DataFrame(rows)

    def report(self) -> str:
        """What ``lowrank scaling`` prints: per measure the means at every n and the verdict
        per layer and for the model, then where the run folder and figures are."""
        ns = self.ns
        used = int(self.arrays["fit_documents"])
        draws = int(self.arrays["bootstrap"])
        header = (
            f"Fits of a + b ln n ('log') and a n^beta ('power') to the mean over {used} "
            f"documents (and heads) at n = {', '.join(map(str, ns))}. A verdict is named only "
            f"when AIC prefers a model by >= 2 and the model fitted to the smaller n predicts "
            f"n = {ns[-1]} better, each in >= 95% of {draws} bootstrap resamples of documents, "
            "and that prediction is within 10% of the observed mean; beta ± is the half-width "
            "of its 95% bootstrap percentile interval. Below each row: the AIC difference and "
            "the held-out |error| at the largest n (relative to the mean), each with the share "
            "of resamples that agree."
        )
        lines = ["", textwrap.fill(header, 100)]
        if self.causal:
            lines.append(
                "causal decoder: P is lower-triangular; see 'Causal attention' in "
                "docs/spectrum.md for what its spectrum measures"
            )
        for m in MEASURES:
            title = MEASURE_LABELS[m].replace("tau", f"{float(self.arrays['tau']):g}")
            lines += ["", title]
            lines.append("  group   " + "".join(f"{'n=' + str(n):>8}" for n in ns) + "   verdict")
            for g, group in enumerate(self.groups):
                means = "".join(f"{v:>8.2f}" for v in self.arrays[f"{m}_mean"][g])
                lines.append(f"  {group:<8}{means}   {self.verdict(m, group)}")
                lines.append(f"  {'':<8}{'':>{8 * len(ns)}}   {self._evidence(m, g)}")
        for m in C_MEASURES:
            index = int(self.arrays["fixed_index"])
            title = "c at index n/4" if m == "c_at_quarter" else f"c at index {index} (fixed)"
            lines += ["", f"{title} (mean over documents and heads; not fitted)"]
            lines.append("  group   " + "".join(f"{'n=' + str(n):>8}" for n in ns))
            for g, group in enumerate(self.groups):
                values = "".join(f"{v:>8.3f}" for v in self.arrays[f"{m}_mean"][g])
                lines.append(f"  {group:<8}{values}")
        if self.path is not None:
            out = self.path
            lines += [
                "",
                f"run folder: {out}  ({out / 'run.json'}, {out / FORMAT.npz}; one spectrum run "
                f"per n: {', '.join(str(out / f'n{n}') for n in ns)})",
            ]
        lines += [f"figure: {path}" for path in self.figures]
        return "\n".join(lines)

    def _evidence(self, m: str, g: int) -> str:
        """``AIC: power better by 35.1, 100% agree | held-out n = 512: power off by 5.3
        (3%), log by 71, 100% agree``."""
        delta = float(self.arrays[f"{m}_delta_aic"][g])
        better = "log" if delta > 0 else "power"
        log_err, power_err = self.arrays[f"{m}_heldout_error"][g]
        errs = {"log": log_err, "power": power_err}
        other = "power" if better == "log" else "log"
        last = abs(float(self.arrays[f"{m}_mean"][g, -1]))
        relative = errs[better] / last if last else float("inf")
        return (
            f"AIC: {better} better by {abs(delta):.1f}, "
            f"{self.arrays[f'{m}_aic_support'][g]:.0%} agree | held-out n = {self.ns[-1]}: "
            f"{better} off by {errs[better]:.2g} ({relative:.0%}), {other} by "
            f"{errs[other]:.2g}, {self.arrays[f'{m}_heldout_support'][g]:.0%} agree"
        )

    # --- figures ---------------------------------------------------------------------------

    def plot(
        self, ax: Axes | None = None, *, measure: str = "output_rank", group: str = "model"
    ) -> Axes:
        """One fitted ``measure`` against n for a ``group`` ('layer 1', ..., 'model'), with
        both fits and the verdict (:func:`lowrank.families.scaling.plots.plot_measure`). Returns the
        axes.

        Raises:
            LowrankError: a measure or group this run does not have.
        """
        from lowrank.families.scaling.plots import plot_measure
        from lowrank.plots.style import choose

        choose("measure", measure, MEASURES, "choose one of")
        choose("group", group, self.groups)
        return plot_measure(self, measure, group, ax=ax)

    def plot_c_curves(self, ax: Axes | None = None, *, layer: int | None = None) -> Axes:
        """c against i / n, a line per n, for a 0-based ``layer`` or (None) the whole model
        (:func:`lowrank.families.scaling.plots.plot_c_curves`). Returns the axes.

        Raises:
            LowrankError: a layer this run does not have.
        """
        from lowrank.families.scaling.plots import plot_c_curves
        from lowrank.plots.style import choose

        runs = self.spectrum_runs()
        layers = next(iter(runs.values())).stats.cumulative.mean.shape[0]
        if layer is not None:
            choose("layer", layer, range(layers), "give a 0-based layer of")
        return plot_c_curves(runs, layer, ax=ax)

    def spectrum_runs(self) -> dict[int, SpectrumResult]:
        """n -> its spectrum run, in increasing n."""
        return dict(sorted(self.runs.items()))

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write every scaling figure (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.families.scaling.plots import write_figures

        if folder is None and self.path is None:
            raise LowrankError("draw(): give a folder or save the run first")
        target = Path(folder) if folder else Path(self.path or ".") / "figures"
        self.figures = write_figures([self], target)
        return self.figures

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run folder: ``n<n>/`` for every n (spectrum runs), then ``scaling.npz``
        and ``run.json`` (each file atomically, run.json last).

        Raises:
            LowrankError: ``path`` holds another run (without ``overwrite``) or files that
                are not a lowrank run.
        """
        out = Path(path)
        check_out_dir(out, self.config["identity"], overwrite)
        for n, run in sorted(self.runs.items()):
            run.save(out / f"n{n}", overwrite=overwrite)
        write_run(out, self.config, self.arrays, npz=FORMAT.npz)
        self.path = out
        return out

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any], arrays: dict[str, Any]) -> ScalingResult:
        """The run with the spectrum run of every n (each validated).

        Raises:
            LowrankError: scaling.npz lacks what the report reads, or an n folder is damaged.
        """
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise LowrankError(f"'{path / FORMAT.npz}' lacks arrays {', '.join(missing)}")
        runs = {int(n): SpectrumResult.read(path / f"n{int(n)}") for n in arrays["ns"]}
        return cls(meta, arrays, path, runs=runs)
