"""The growth verdicts of ``lowrank scaling`` (format 2): three models per measure and group,
decided by :func:`lowrank.maths.growth.growth_verdict`, and their arrays for scaling.npz.

Each rank measure is fitted per layer (mean over its heads) and for the whole model (mean over
layers and heads) with ``a + b ln n``, ``a n^beta`` and ``C - c n^-gamma``; the output rank's
level C is bounded by the head dimension d (rank(PV) <= d). The units of every interval are
documents: a document's windows are averaged into one value per n first
(:func:`per_document`), so a resample draws documents with all their windows. Fewer than
:data:`~lowrank.maths.growth.MIN_LENGTHS` lengths give no verdict (the fits are still drawn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowrank.families.scaling.fits import group_values
from lowrank.maths.curves import MODELS, ModelFit, fit_model
from lowrank.maths.growth import LEVEL, MIN_LENGTHS, GrowthVerdict, growth_verdict

NO_VERDICT = "no verdict"


def no_verdict_text(lengths: int) -> str:
    """``no verdict: 4 lengths, a verdict needs 5``."""
    return f"{NO_VERDICT}: {lengths} lengths, a verdict needs {MIN_LENGTHS}"


@dataclass(frozen=True)
class GroupVerdict:
    """The verdict on one measure for one group (``layer <l>`` or ``model``).

    Attributes:
        measure, group: what was fitted.
        mean: (S,) the mean over documents at each n; interval: (S, 2) its bootstrap
            percentile interval (``--bootstrap`` resamples of documents).
        fits: model -> its least-squares fit to ``mean`` (drawn even without a verdict).
        growth: the verdict of :func:`growth_verdict`, None below five lengths.
        bound: the largest level C the saturating model may take (d for the output rank).
    """

    measure: str
    group: str
    mean: np.ndarray
    interval: np.ndarray
    fits: dict[str, ModelFit]
    growth: GrowthVerdict | None
    bound: float | None

    @property
    def label(self) -> str:
        """``logarithmic``, ``power law``, ``saturating``, ``none fits``, ``cannot tell`` or
        ``no verdict``."""
        return self.growth.label if self.growth is not None else NO_VERDICT

    def text(self) -> str:
        """The printed verdict (:meth:`GrowthVerdict.text`, or why there is none); a level C
        fitted at its bound says so (``saturating toward C = 32 [31.6, 32], at the bound d``)."""
        if self.growth is None:
            return no_verdict_text(len(self.mean))
        text = self.growth.text()
        level = self.fits["saturating"].params[0]
        if self.label == "saturating" and self.bound is not None and level >= self.bound - 1e-9:
            text += ", at the bound d"
        return text

    def evidence(self) -> list[str]:
        """One line per model with its margin to every cut (none without a verdict)."""
        return self.growth.evidence()[:-1] if self.growth is not None else []

    def record(self) -> dict[str, Any]:
        """run.json's ``verdicts[measure][group]``."""
        if self.growth is None:
            return {
                "verdict": NO_VERDICT,
                "text": self.text(),
                "lengths": len(self.mean),
                "min_lengths": MIN_LENGTHS,
            }
        return self.growth.record() | {"evidence": self.evidence(), "bound": self.bound}


def per_document(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Average the windows of each document: (S, W, ...) -> (S, D, ...).

    Args:
        values: (S, W, ...) one value per n and window.
        clusters: (W,) 0-based document of each window (0..D-1, every document present).

    Returns:
        (S, D, ...) the mean over each document's windows (equal to ``values`` when every
        document has one window).
    """
    docs = int(clusters.max()) + 1
    onehot = np.zeros((docs, len(clusters)))
    onehot[clusters, np.arange(len(clusters))] = 1.0  # (D, W): each row sums its windows
    sums = np.moveaxis(np.tensordot(onehot, values, axes=([1], [1])), 0, 1)  # (S, D, ...)
    counts = onehot.sum(axis=1).reshape(1, docs, *([1] * (values.ndim - 2)))
    return sums / counts


def mean_interval(values: np.ndarray, resamples: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """(S, 2) percentile interval of the mean over documents at each n.

    Args:
        values: (S, D) per n and document; resamples: (B, D) document indices.
    """
    if not len(resamples):
        return np.full((values.shape[0], 2), np.nan)
    means = values[:, resamples].mean(axis=2)  # (S, B)
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    return np.percentile(means, q, axis=1).T


def group_verdict(
    measure: str,
    group: str,
    ns: Sequence[int],
    values: np.ndarray,
    resamples: np.ndarray,
    draws: tuple[int, int],
    bound: float | None,
) -> GroupVerdict:
    """Fit the three models to one group's means and decide (five lengths or more).

    Args:
        values: (S, D) the measure per n and document; resamples: (B, D) document indices.
        draws: how many of the resamples make the intervals of the means, and how many
            decide the verdict (the first of them).
    """
    n = np.asarray(ns, dtype=np.float64)
    mean = values.mean(axis=1)
    interval = mean_interval(values, resamples[: draws[0]])
    growth = None
    if len(n) >= MIN_LENGTHS:
        growth = growth_verdict(n, values, resamples[: draws[1]], bound=bound)
        fits = {m: a.fit for m, a in growth.models.items()}
    else:
        fits = {m: fit_model(m, n, mean, None, bound) for m in MODELS}
    return GroupVerdict(measure, group, mean, interval, fits, growth, bound)


def group_verdicts(
    per_doc: Mapping[str, np.ndarray],
    ns: Sequence[int],
    resamples: np.ndarray,
    draws: tuple[int, int],
    bounds: Mapping[str, float | None],
) -> dict[str, list[GroupVerdict]]:
    """Per measure, one :class:`GroupVerdict` per layer, then one for the whole model.

    Args:
        per_doc: measure -> (S, D, L, H), the same D documents at every n.
        resamples, draws: as :func:`group_verdict`.
        bounds: measure -> the saturating model's bound (missing: none).
    """
    out: dict[str, list[GroupVerdict]] = {}
    for measure, values in per_doc.items():
        layers = values.shape[2]
        groups: list[tuple[str, int | None]] = [(f"layer {i + 1}", i) for i in range(layers)]
        groups.append(("model", None))
        out[measure] = [
            group_verdict(
                measure,
                name,
                ns,
                group_values(values, layer),
                resamples,
                draws,
                bounds.get(measure),
            )
            for name, layer in groups
        ]
    return out


def verdict_arrays(measure: str, rows: Sequence[GroupVerdict]) -> dict[str, np.ndarray]:
    """The scaling.npz arrays of one measure (G groups, the 3 models of ``growth_models``).

    ``<m>_mean`` [G, S], ``<m>_interval`` [G, S, 2], ``<m>_log_params`` (a, b) and
    ``<m>_power_params`` (a, beta) [G, 2], ``<m>_saturating_params`` (C, c, gamma) [G, 3],
    ``<m>_beta_interval`` [G, 2], ``<m>_label`` and ``<m>_verdict`` [G] (text); per model
    ``<m>_heldout_relative``, ``<m>_heldout_within`` (share of resamples within the cut),
    ``<m>_curvature``, ``<m>_criterion`` (AICc or AIC), ``<m>_fits`` (bool) [G, 3],
    ``<m>_curvature_interval`` [G, 3, 2] and ``<m>_param_interval`` [G, 3, 3, 2] (NaN-padded,
    NaN without a verdict).
    """
    g = len(rows)
    nan3 = np.full((g, len(MODELS)), np.nan)
    out = {
        f"{measure}_mean": np.stack([r.mean for r in rows]),
        f"{measure}_interval": np.stack([r.interval for r in rows]),
        f"{measure}_log_params": np.array([r.fits["log"].params for r in rows]),
        f"{measure}_power_params": np.array([r.fits["power"].params for r in rows]),
        f"{measure}_saturating_params": np.array([r.fits["saturating"].params for r in rows]),
        f"{measure}_beta_interval": np.full((g, 2), np.nan),
        f"{measure}_label": np.array([r.label for r in rows]),
        f"{measure}_verdict": np.array([r.text() for r in rows]),
        f"{measure}_heldout_relative": nan3.copy(),
        f"{measure}_heldout_within": nan3.copy(),
        f"{measure}_curvature": nan3.copy(),
        f"{measure}_criterion": nan3.copy(),
        f"{measure}_fits": np.zeros((g, len(MODELS)), dtype=bool),
        f"{measure}_curvature_interval": np.full((g, len(MODELS), 2), np.nan),
        f"{measure}_param_interval": np.full((g, len(MODELS), 3, 2), np.nan),
    }
    for i, row in enumerate(rows):
        if row.growth is None:
            continue
        for j, model in enumerate(MODELS):
            a = row.growth.models[model]
            out[f"{measure}_heldout_relative"][i, j] = a.heldout
            out[f"{measure}_heldout_within"][i, j] = a.heldout_support
            out[f"{measure}_curvature"][i, j] = a.curvature
            out[f"{measure}_criterion"][i, j] = a.criterion
            out[f"{measure}_fits"][i, j] = a.adequate
            out[f"{measure}_curvature_interval"][i, j] = a.curvature_interval
            for k, iv in enumerate(a.param_intervals[:3]):
                out[f"{measure}_param_interval"][i, j, k] = iv
        out[f"{measure}_beta_interval"][i] = out[f"{measure}_param_interval"][i, 1, 1]
    return out
