"""The result of ``lowrank scaling``: the fits and verdicts, and one spectrum run per n.

A scaling run folder holds ``run.json`` and ``scaling.npz`` (format ``lowrank-scaling``) and a
normal spectrum run folder ``n<n>/`` per length. :class:`ScalingResult` holds all of them in
memory, prints the command's summary (:meth:`ScalingResult.report`), tabulates it
(:meth:`ScalingResult.summary`), draws it and writes it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.core.options import named
from lowrank.errors import LowrankError
from lowrank.families.scaling.format import FORMAT
from lowrank.families.scaling.measures import MEASURES
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.runs.commit import commit_folder
from lowrank.runs.locks import hold
from lowrank.runs.manifest import FINGERPRINT
from lowrank.runs.result import RunResult
from lowrank.runs.writing import check_out_dir, check_replace, write_run_files

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


_REQUIRED = ("bootstrap", "tau", "fixed_index")  # beyond the schema: what report() reads


@dataclass(repr=False)  # RunResult's short repr
class ScalingResult(RunResult):
    """A ``lowrank scaling`` run: rank measures against n, their fits and verdicts.

    Arrays (``scaling.npz``; S lengths, W windows analysed at every n, D documents, L layers,
    H heads, G = L + 1 groups: each layer, then the whole model; K = 3 models of
    ``growth_models``: log, power, saturating):

    - ``ns`` [S], ``groups`` [G], ``measures``, ``c_measures``, ``growth_models`` [K],
      ``documents`` and ``window_starts`` [W_all] (each window's document, an index into the
      corpus, and its first text token), ``sequences_used`` [S], ``fit_documents`` (D),
      ``fit_windows`` (W), ``tau``, ``fixed_index``, ``bootstrap``, ``verdict_bootstrap``,
      ``head_dim`` (scalars);
    - per measure in ``MEASURES + C_MEASURES``: the per-window values [S, W, L, H] and
      ``<m>_mean`` [G, S] (mean over documents, each the mean of its windows, and heads, and
      layers for ``model``);
    - per fitted measure: ``<m>_interval`` [G, S, 2] (95% bootstrap interval of the mean),
      ``<m>_log_params`` (a, b of a + b ln n) and ``<m>_power_params`` (a, beta of a n^beta)
      [G, 2], ``<m>_saturating_params`` (C, c, gamma of C - c n^-gamma) [G, 3],
      ``<m>_beta_interval`` [G, 2], per model ``<m>_heldout_relative``, ``<m>_heldout_within``,
      ``<m>_curvature``, ``<m>_criterion``, ``<m>_fits`` [G, K], ``<m>_curvature_interval``
      [G, K, 2], ``<m>_param_interval`` [G, K, 3, 2], and ``<m>_label`` / ``<m>_verdict``
      [G] (the verdict's name and text; ``no verdict`` below five lengths);
    - where the position control ran: ``position_control_<m>`` [2, W, L, H] (the windows of
      ``position_control_n`` at the model's own and at position ids shifted by
      ``position_control_shift``).

    Format-1 folders (two models, windows at the documents' openings) hold
    ``<m>_delta_aic``, ``<m>_aic_support``, ``<m>_heldout_support`` [G] and
    ``<m>_heldout_error`` [G, 2] instead of the per-model arrays; they load, summarise and
    draw (without a verdict in the figures).

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

    @property
    def format_version(self) -> int:
        """1: two models, windows at the openings; 2: three models, windows, position control."""
        return int(self.config.get("format_version", 1))

    def verdict(self, measure: str, group: str = "model") -> str:
        """The verdict on ``measure`` for a group ('layer 1', ..., 'model'), as printed."""
        return str(self.arrays[f"{measure}_verdict"][self.groups.index(group)])

    def verdict_label(self, measure: str, group: str = "model") -> str | None:
        """The verdict's name (``logarithmic``, ``power law``, ``saturating``, ``none fits``,
        ``cannot tell``, ``no verdict``); None for a format-1 run, whose rule is not today's."""
        if self.format_version < 2:
            return None
        return str(self.arrays[f"{measure}_label"][self.groups.index(group)])

    # --- tables ----------------------------------------------------------------------------

    def summary(self, at: int | None = None, **options: Any) -> pd.DataFrame:
        """One row per (fitted measure, group): the mean at every n (``n=<n>`` columns;
        only the n ``at`` when given), the verdict and its label, the log slope b, beta
        with its 95% interval, the saturating level C and exponent gamma, and per model
        (log, power, saturating) the held-out relative error at the largest n, the
        curvature and whether it fits. Format-1 runs give their own columns (AIC
        difference, held-out errors and the shares of resamples that agree).

        Raises:
            LowrankError: ``at`` is not one of the run's n.
        """
        import pandas as pd

        from lowrank.families.scaling.report import summary_rows_v2

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
                row |= summary_rows_v2(self, m, g) if self.format_version >= 2 else self._v1(m, g)
                rows.append(row)
        return pd.DataFrame(rows)

    def _v1(self, m: str, g: int) -> dict[str, Any]:
        lo, hi = self.arrays[f"{m}_beta_interval"][g]
        log_err, power_err = self.arrays[f"{m}_heldout_error"][g]
        return {
            "verdict": self.verdict(m, self.groups[g]),
            "rule": "format 1: a + b ln n against a n^beta, no saturating model",
            "beta": float(self.arrays[f"{m}_power_params"][g, 1]),
            "beta_lo": float(lo),
            "beta_hi": float(hi),
            "delta_aic": float(self.arrays[f"{m}_delta_aic"][g]),
            "aic_support": float(self.arrays[f"{m}_aic_support"][g]),
            "heldout_error_log": float(log_err),
            "heldout_error_power": float(power_err),
            "heldout_support": float(self.arrays[f"{m}_heldout_support"][g]),
        }

    def report(self) -> str:
        """What ``lowrank scaling`` prints: per measure the means at every n and the verdict
        per layer and for the model with every model's margins, the position control, then
        where the run folder and figures are."""
        from lowrank.families.scaling.report import report_v1, report_v2

        lines = report_v2(self) if self.format_version >= 2 else report_v1(self)
        if self.causal:
            lines.insert(
                2,
                "causal decoder: P is lower-triangular; see 'Causal attention' in "
                "docs/spectrum.md for what its spectrum measures",
            )
        if self.path is not None:
            out = self.path
            lines += [
                "",
                f"run folder: {out}  ({out / 'run.json'}, {out / FORMAT.npz}; one spectrum run "
                f"per n: {', '.join(str(out / f'n{n}') for n in self.ns)})",
            ]
        lines += [f"figure: {path}" for path in self.figures]
        return "\n".join(lines)

    # --- figures ---------------------------------------------------------------------------

    def plot(
        self, ax: Axes | None = None, *, measure: str = "output_rank", group: str = "model"
    ) -> Axes:
        """One fitted ``measure`` against n for a ``group`` ('layer 1', ..., 'model'), with
        the fits and the verdict where the data support one
        (:func:`lowrank.families.scaling.plots.plot_measure`). Returns the axes.

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

        self.figures = write_figures([self], self.figure_folder(folder))
        return self.figures

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run folder whole, in one step: ``n<n>/`` for every n (spectrum runs),
        ``scaling.npz`` and ``run.json`` (whose manifest lists every file, those of the
        ``n<n>`` folders too) are written into a private folder that then replaces ``path``
        (:func:`lowrank.runs.commit.commit_folder`): an interrupt leaves the old run or the
        new one, never n folders of one run under the summary of another.

        Raises:
            LowrankError: ``path`` holds another run (without ``overwrite``) or files that
                are not a lowrank run, another process writes it, or it cannot be written.
        """
        import os

        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise LowrankError(f"save({path!r}): give the run folder as a path or a string")
        out = Path(path)
        identity = dict(self.config.get("identity") or {})
        fingerprint = self.config.get(FINGERPRINT)

        def check() -> None:
            check_replace(out, identity, fingerprint)

        with hold(out):
            check_out_dir(out, identity, overwrite, fingerprint=fingerprint)
            with commit_folder(out, None if overwrite else check) as stage:
                folders = []
                for n, run in sorted(self.runs.items()):
                    write_run_files(
                        stage / f"n{n}",
                        run.config,
                        run.arrays,
                        npz=run.FORMAT.npz,
                        files=run.extra_files(),
                        shown=out / f"n{n}",
                    )
                    folders.append(f"n{n}")
                write_run_files(
                    stage, self.config, self.arrays, npz=FORMAT.npz, include=folders, shown=out
                )
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
