"""The result of ``lowrank.spectrum`` and ``lowrank.merge``: a spectrum run held in memory.

:class:`SpectrumResult` carries spectrum.npz's arrays under their names
(``res.cumulative_mean`` is ``res.arrays["cumulative_mean"]``, [layers, heads, n]) and
run.json as ``res.config``. It prints as the CLI does (:meth:`~SpectrumResult.report`), gives
the paper's table (:meth:`~SpectrumResult.summary`) and long-form curves for seaborn
(:meth:`~SpectrumResult.curves`), draws Figure 1's panels, and saves a normal run folder that
``lowrank.load``, ``lowrank figures``, ``lowrank summary`` and ``lowrank merge`` read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.core.options import check_int
from lowrank.errors import LowrankError
from lowrank.families.spectrum.format import FORMAT
from lowrank.families.spectrum.stats import SpectrumStats, stats_from_arrays
from lowrank.runs.folders import RUN_JSON
from lowrank.runs.labels import run_label
from lowrank.runs.result import RunResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


@dataclass(repr=False)  # RunResult's short repr
class SpectrumResult(RunResult):
    """A ``lowrank spectrum`` run: singular-value spectra of every attention matrix P.

    ``config`` is run.json; ``arrays`` are spectrum.npz's, named as there (n = seq_len):

    * ``cumulative_{mean,std,m2}`` [layers, heads, n]: moments over sequences of the
      normalized cumulative curve c_i = sum_{j<=i} s_j / sum_j s_j (std with ddof=1, m2 the
      sum of squared deviations);
    * ``singular_values_{mean,std,m2}`` [layers, heads, n]: the same for the singular
      values s of P, largest first;
    * ``{c_at_index,rank90,rank99,effective_rank,stable_rank}_{mean,std}``
      [layers, heads]: per-matrix summaries (c at the heatmap index, the smallest k with
      c_k >= 0.9 / 0.99, exp of the entropy of s / sum s, sum s^2 / s_1^2);
      ``summaries_m2`` [layers, heads, 5];
    * ``num_sequences``, ``heatmap_index`` (0-d), ``input_ids`` [N, n] (the sequences
      analysed) and, when any is padded, ``attention_mask`` [N, n].

    ``figures`` lists the files drawn with ``plot=True``; ``seconds`` is the analysis time
    of a run computed in this process (None when read from a folder).
    """

    seconds: float | None = field(default=None, repr=False)

    FORMAT = FORMAT

    # -- views ---------------------------------------------------------------------------

    @property
    def stats(self) -> SpectrumStats:
        """The mergeable statistics (:class:`lowrank.maths.stats.SpectrumStats`)."""
        return stats_from_arrays(self.arrays)

    @property
    def seq_len(self) -> int:
        """n, the tokens of each sequence (run.json's ``seq_len``)."""
        return int(self.config["seq_len"])

    @property
    def attention_mask(self) -> np.ndarray | None:
        """[N, n] 0/1 mask of the sequences analysed, or None when none is padded."""
        return self.arrays.get("attention_mask")

    @property
    def label(self) -> str:
        """``model / corpus`` as figures name the run (:func:`lowrank.runs.labels.run_label`)."""
        return run_label(self.config)

    @property
    def index(self) -> int:
        """The run's heatmap index (1-based): 128 for n = 512, n/4 below."""
        return int(self.arrays["heatmap_index"])

    @property
    def count(self) -> int:
        """Sequences analysed."""
        return int(self.arrays["num_sequences"])

    # -- tables --------------------------------------------------------------------------

    def summary(self, at: int | None = None, **options: Any) -> pd.DataFrame:
        """The paper's table: one row per (layer, head), both 1-based.

        Args:
            at: 1-based singular-value index at which c is read (default: the run's heatmap
                index, 128 for n = 512).

        Returns:
            Columns ``layer``, ``head``, ``index`` (= at), ``c`` (mean over sequences of
            c_at, from ``cumulative_mean``), ``c_std`` (its std over sequences, the
            spread), ``rank90``, ``rank99``, ``effective_rank``, ``stable_rank`` (means over
            sequences) and ``num_sequences``.

        Raises:
            LowrankError: ``at`` outside 1..n.
        """
        import pandas as pd

        if options:
            raise LowrankError(f"summary() takes at=; not {', '.join(sorted(options))}")
        mean, std = self.arrays["cumulative_mean"], self.arrays["cumulative_std"]
        layers, heads, n = mean.shape
        at = self.index if at is None else check_int("at", at, low=1, high=n)
        layer, head = np.meshgrid(np.arange(1, layers + 1), np.arange(1, heads + 1), indexing="ij")
        table = {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "index": np.full(layers * heads, int(at)),
            "c": mean[..., at - 1].ravel(),
            "c_std": std[..., at - 1].ravel(),
            **{k: self.arrays[f"{k}_mean"].ravel() for k in _RANKS},
            "num_sequences": np.full(layers * heads, self.count),
        }
        return pd.DataFrame(table)

    def curves(self) -> pd.DataFrame:
        """The mean cumulative curves in long form, for seaborn (``sns.lineplot(x="index",
        y="c", hue="layer", data=res.curves())``).

        Returns:
            One row per (layer, head, index), layers x heads x n rows; columns ``layer``,
            ``head``, ``index`` (1-based), ``c`` (``cumulative_mean``) and ``std``
            (``cumulative_std``, over sequences).
        """
        import pandas as pd

        mean, std = self.arrays["cumulative_mean"], self.arrays["cumulative_std"]
        layers, heads, n = mean.shape
        grid = np.meshgrid(
            np.arange(1, layers + 1), np.arange(1, heads + 1), np.arange(1, n + 1), indexing="ij"
        )
        return pd.DataFrame(
            {
                "layer": grid[0].ravel(),
                "head": grid[1].ravel(),
                "index": grid[2].ravel(),
                "c": mean.ravel(),
                "std": std.ravel(),
            }
        )

    def report(self) -> str:
        """The text ``lowrank spectrum`` prints: mean c at the heatmap index per layer (mean
        and std across heads), throughput, the precision reached, the run folder, and (runs
        of several ranks, runs drawn with plot) one line per rank and per figure."""
        from lowrank.families.spectrum.pipeline import per_layer_table

        meta = self.config
        used = int(meta.get("num_sequences", self.count))
        seconds = self.seconds
        if seconds is None:
            seconds = float(meta.get("analysis_seconds") or 0.0)
        lines = [
            "",
            f"mean normalized cumulative singular value at index {self.index} (over heads):",
            "  layer   mean c   std across heads",
        ]
        for layer, (mean, std) in enumerate(per_layer_table(self.stats), 1):
            lines.append(f"  {layer:>5}   {mean:.4f}   {std:.4f}")
        rate = used / seconds if seconds > 0 else float("nan")
        lines.append(f"{used} sequences in {seconds:.1f} s ({rate:.2f} seq/s)")
        precision = meta.get("precision")
        if precision:
            lines.append(
                f"precision: 95% half-width {precision['achieved_half_width']:.4g} (target "
                f"{precision['target']}) after {used} sequences"
            )
        if self.path is not None:
            out = self.path
            lines.append(f"run folder: {out}  ({out / RUN_JSON}, {out / FORMAT.npz})")
        if int(meta.get("world_size") or 1) > 1:
            lines += [share_line(share) for share in meta.get("ranks", [])]
        lines += [f"figure: {path}" for path in self.figures]
        return "\n".join(lines)

    # -- figures -------------------------------------------------------------------------

    def draw(self, folder: str | Path | None = None, *, by_layer: bool = False) -> list[Path]:
        """Write the run's figures (the spectrum panel, by layer, the heatmap, the per-layer
        summary and Figure 1; PDF and PNG) into ``folder`` (default: ``<run folder>/figures``);
        returns the files."""
        from lowrank.families.spectrum.plots import write_figures

        self.figures = write_figures([self], self.figure_folder(folder), by_layer=by_layer)
        return self.figures

    def plot(self, ax: Axes | None = None, *, by_layer: bool = False, title: bool = True) -> Axes:
        """Mean cumulative spectrum against index, with the spread across heads (paper
        Fig. 1, left; :func:`lowrank.families.spectrum.plots.plot_cumulative`); ``by_layer`` draws a
        line per layer. Returns the axes."""
        from lowrank.families.spectrum.plots import plot_cumulative

        return plot_cumulative(self, ax=ax, by_layer=by_layer, title=title)

    def heatmap(
        self,
        ax: Axes | None = None,
        *,
        vmin: float | None = None,
        vmax: float | None = None,
        title: bool = True,
    ) -> Axes:
        """Layer x head heatmap of mean c at the heatmap index (paper Fig. 1, right;
        :func:`lowrank.families.spectrum.plots.plot_heatmap`); pass the same ``vmin``/``vmax`` to
        compare runs. Returns the axes."""
        from lowrank.families.spectrum.plots import plot_heatmap

        return plot_heatmap(self, ax=ax, vmin=vmin, vmax=vmax, title=title)


_RANKS = ("rank90", "rank99", "effective_rank", "stable_rank")


def share_line(share: dict[str, Any]) -> str:
    """One rank's line of the report: what it did, where, and in how much compute."""
    return (
        f"rank {share['rank']} ({share['host']}, {share['device']}): {share['num_sequences']} "
        f"sequences in {share['batches']} batches, {share['compute_seconds']:.1f} s of compute"
    )
