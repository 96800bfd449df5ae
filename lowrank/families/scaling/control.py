"""The position-shift control of ``lowrank scaling``: the same tokens at other position ids.

Every window of length n sits at positions 0..n-1, so a fit across n also moves the positions
the model sees: in MiniLM the same 128 tokens at positions 384-511 instead of 0-127 raise
rank90 by 12% (lowrank issue 25). The control measures this confound once per run, at the
middle n: the windows of that n are run again with position ids shifted by the largest shift
the model's positions allow (:func:`plan_control`), and the paired change per document is
reported beside every fit (:func:`control_record`). A rotary model (Llama, SmolLM2) sees
only relative positions in q.k, so its shift changes P by rounding alone; absolute-position
models (BERT, RoBERTa, GPT-2) change for real.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.scaling.fits import group_values
from lowrank.families.scaling.measures import ALL_MEASURES, MEASURES
from lowrank.families.scaling.verdicts import per_document
from lowrank.maths.intervals import MeanInterval, mean_interval
from lowrank.maths.windows import shifted_positions

if TYPE_CHECKING:
    from lowrank.inputs.models import LoadedModel

# models whose position ids start after padding_idx (transformers' create_position_ids_...)
_PADDING_OFFSET = ("roberta", "xlm-roberta", "camembert")


@dataclass(frozen=True)
class ControlPlan:
    """Where the control shifts the windows of one n.

    Attributes:
        n: the length measured again; shift: how far every position id moves.
        positions: (n,) the position ids given to the model (with the model's own offset,
            e.g. RoBERTa's padding_idx + 1, added).
        offset: that offset; skipped: why there is no control ("" when there is one).
    """

    n: int
    shift: int
    positions: np.ndarray
    offset: int = 0
    skipped: str = ""

    def describe(self) -> str:
        """``positions 384-511 instead of 0-127`` (counted from the model's first position)."""
        last = self.n - 1
        return f"positions {self.shift}-{self.shift + last} instead of 0-{last}"


def plan_control(loaded: LoadedModel, ns: Sequence[int]) -> ControlPlan:
    """The control at the middle n, shifted by ``max_positions - n`` (the last positions).

    Skipped (``skipped`` says why) when the model reports no position limit, its forward
    takes no ``position_ids``, or the middle n already fills its positions.
    """
    n = int(sorted(ns)[len(ns) // 2])
    empty = np.zeros(0, dtype=np.int64)
    limit = loaded.max_positions
    if limit is None:
        return ControlPlan(n, 0, empty, skipped="the model has no absolute position limit")
    if "position_ids" not in inspect.signature(loaded.model.forward).parameters:
        return ControlPlan(n, 0, empty, skipped="the model's forward takes no position_ids")
    shift = int(limit) - n
    if shift <= 0:
        return ControlPlan(n, 0, empty, skipped=f"n = {n} fills the model's {limit} positions")
    config = loaded.model.config
    offset = 0
    if config.model_type in _PADDING_OFFSET:
        offset = int(config.pad_token_id) + 1
    positions = shifted_positions(n, [shift], int(limit))[shift] + offset
    return ControlPlan(n, shift, positions, offset)


def relative_changes(base: np.ndarray, shifted: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Per document, ``mean(shifted) / mean(base) - 1`` of one group's values.

    Args:
        base, shifted: (W,) one value per window (averaged over the group's heads);
        clusters: (W,) the document of each window (0-based).

    Returns:
        (D,) relative changes; NaN where the base mean is 0.
    """
    pair = per_document(np.stack([base, shifted]), clusters)  # (2, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pair[0] > 0, pair[1] / pair[0] - 1, np.nan)


def _change(values: np.ndarray) -> MeanInterval:
    """Mean relative change over documents with its interval (changes lie in [-1, inf))."""
    ok = values[np.isfinite(values)]
    if not ok.size:
        return MeanInterval(math.nan, math.nan, math.nan, 0, "", "no document with a base > 0")
    return mean_interval(ok, -1.0, math.inf)


def percent(iv: MeanInterval) -> str:
    """``+11.5% [+10.9%, +12.1%] over 16 documents``, or the mean with why there is none."""
    if not math.isfinite(iv.mean):
        return iv.note
    if not math.isfinite(iv.low):
        return f"{100 * iv.mean:+.1f}% ({iv.note})"
    return (
        f"{100 * iv.mean:+.1f}% [{100 * iv.low:+.1f}%, {100 * iv.high:+.1f}%] over {iv.n} documents"
    )


def control_arrays(base: np.ndarray, shifted: np.ndarray) -> dict[str, np.ndarray]:
    """``position_control_<m>`` [2, W, L, H] (base, shifted) for every fitted measure.

    Args:
        base, shifted: (W, L, H, 7) in :data:`ALL_MEASURES` order.
    """
    return {
        f"position_control_{m}": np.stack([base[..., k], shifted[..., k]])
        for k, m in enumerate(ALL_MEASURES)
        if m in MEASURES
    }


def control_record(
    plan: ControlPlan, arrays: dict[str, np.ndarray], clusters: np.ndarray, groups: list[str]
) -> dict[str, Any]:
    """run.json's ``position_control``: per measure and group the base and shifted means and
    the relative change per document (Student-t on the log of 1 + change, >= 3 documents).

    Args:
        arrays: :func:`control_arrays`; clusters: (W,) the document of each window.
    """
    if plan.skipped:
        return {"n": plan.n, "skipped": plan.skipped}
    per_measure: dict[str, Any] = {}
    for m in MEASURES:
        pair = arrays[f"position_control_{m}"]  # (2, W, L, H)
        rows = {}
        for g, group in enumerate(groups):
            layer = None if group == "model" else g
            base, shifted = (group_values(pair[i][None], layer)[0] for i in (0, 1))  # (W,)
            iv = _change(relative_changes(base, shifted, clusters))
            rows[group] = {
                "base": float(base.mean()),
                "shifted": float(shifted.mean()),
                "relative_change": iv.record(),
                "text": percent(iv),
            }
        per_measure[m] = rows
    return {
        "n": plan.n,
        "shift": plan.shift,
        "position_offset": plan.offset,
        "inputs": f"the same input_ids of the {plan.n}-token windows; {plan.describe()}",
        "documents": int(clusters.max()) + 1,
        "windows": len(clusters),
        "per_measure": per_measure,
        "interval": "per document mean(shifted) / mean(base) - 1 over its windows, layers "
        "and heads of the group; 95% Student-t on ln(1 + change), mapped back",
    }


def control_line(record: dict[str, Any], measure: str, group: str = "model") -> str:
    """The line printed beside a fit: what the same tokens at shifted positions change."""
    if "skipped" in record:
        return f"position control: not measured ({record['skipped']})"
    row = record["per_measure"][measure][group]
    n, shift = record["n"], record["shift"]
    return (
        f"position control (n = {n}): the same tokens at positions {shift}-{shift + n - 1} "
        f"instead of 0-{n - 1} change {measure} by {row['text']}; n and position are "
        "confounded in every fit by effects of this size"
    )
