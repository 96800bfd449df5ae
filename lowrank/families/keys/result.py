"""The result of ``lowrank keys``: ranks of queries, keys, values and logits, and top-k.

:class:`KeysResult` is a ``keys.npz`` + ``run.json`` run folder in memory; its figures draw it
directly (:mod:`lowrank.families.keys.plots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.core.options import named
from lowrank.errors import LowrankError
from lowrank.families.keys.format import FORMAT
from lowrank.families.keys.names import TOPK_METRICS
from lowrank.runs.folders import RUN_JSON
from lowrank.runs.result import RunResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


@dataclass(repr=False)  # RunResult's short repr
class KeysResult(RunResult):
    """A ``lowrank keys`` run: the low-rank structure of Q, K, V and the logits, and top-k
    attention from r key dimensions.

    Arrays (``keys.npz``; L layers, H query heads, Hkv KV heads, d head dimension, N
    sequences; docs/keys.md and :func:`lowrank.families.keys.format.keys_array_spec` list
    them all): ``key_rank90_pre``/``key_rank90_post``/``value_rank90`` [L, Hkv] and
    ``query_rank90_pre``/``query_rank90_post`` [L, H], PCA component counts for the rank
    fraction of the explained variance, with bootstrap ``_low``/``_high``; ``*_cumvar``
    curves [L, Hx, d]; ``layer_rank90_energy`` [N, 3, L] (ShadowKV); ``logits_*_rank90_*``
    and ``probs_rank90_nuclear`` [N, L, H]; ``weights_rank90_energy`` [L, H];
    ``topk_{recall,mass,error}_mean`` [S, R, K, L, H] over ``topk_bases``, ``topk_ranks``,
    ``topk_budgets``; ``input_ids`` [N, n].
    """

    FORMAT = FORMAT

    @property
    def head_dim(self) -> int:
        """d, the dimension of one head's queries and keys."""
        return int(self.config["head_dim"])

    @property
    def ranks(self) -> list[int]:
        """The r grid of top-k (d, exact top-k, is always in it)."""
        return [int(r) for r in self.arrays["topk_ranks"]]

    @property
    def budgets(self) -> list[float]:
        """The k grid of top-k, fractions of a sequence's valid tokens."""
        return [float(f) for f in self.arrays["topk_budgets"]]

    @property
    def bases(self) -> list[str]:
        """Top-k's bases, in the order of the arrays' first axis."""
        return [str(b) for b in self.arrays["topk_bases"]]

    def focus_rank(self) -> int:
        """The r a summary reads by default: the grid's r nearest d/4 (16 of 64)."""
        return min(self.ranks, key=lambda r: (abs(r - self.head_dim / 4), r))

    def _rank(self, at: int | None) -> int:
        if at is None:
            return self.focus_rank()
        if at not in self.ranks:
            raise LowrankError(
                f"{named('at', at)}: this keys run has r = {', '.join(map(str, self.ranks))}"
            )
        return int(at)

    def summary(self, at: int | None = None, **options: Any) -> pd.DataFrame:
        """One row per (layer, query head), with its KV head: the PCA ranks of its queries
        (pre/post-RoPE) and of its KV head's keys and values with their bootstrap
        intervals, the mean over sequences of its logits' energy ranks (pre/post), its
        weights' energy rank, P's rank90, and top-k with the calibrated basis at r = ``at``
        (default: the grid's r nearest d/4) and the smallest budget: recall, mass, error.

        Raises:
            LowrankError: ``at`` is not one of the run's r.
        """
        import pandas as pd

        r = self._rank(at)
        a = self.arrays
        layers, heads = a["query_rank90_post"].shape
        group = heads // a["key_rank90_post"].shape[1]
        layer, head = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
        kv = head // group
        frame: dict[str, Any] = {
            "layer": layer.ravel() + 1,
            "head": head.ravel() + 1,
            "kv_head": kv.ravel() + 1,
        }
        for name in ("query_rank90_pre", "query_rank90_post"):
            frame[name] = a[name].ravel()
        for name in ("key_rank90_pre", "key_rank90_post", "value_rank90"):
            for suffix in ("", "_low", "_high"):
                frame[name + suffix] = a[name + suffix][layer, kv].ravel()
        for name in ("logits_pre_rank90_energy", "logits_post_rank90_energy"):
            frame[name] = a[name].mean(axis=0).ravel()
        if "weights_rank90_energy" in a:
            frame["weights_rank90_energy"] = a["weights_rank90_energy"].ravel()
        probs = a["probs_rank90_nuclear"]
        frame["probs_rank90_nuclear"] = (
            np.nanmean(probs, axis=0).ravel() if np.isfinite(probs).any() else np.nan
        )
        ri, ki = self.ranks.index(r), 0
        for metric in TOPK_METRICS:
            frame[f"topk_{metric}_r{r}"] = a[f"topk_{metric}_mean"][0, ri, ki].ravel()
        return pd.DataFrame(frame)

    def report(self) -> str:
        """What ``lowrank keys`` prints: the ranks pre/post RoPE per layer, the whole-layer
        and logits views, the top-k table, the run folder and the figures."""
        from lowrank.families.keys.findings import rank_lines, topk_lines
        from lowrank.runs.labels import run_label

        c = self.config
        kind = ", ".join(
            (["rotary"] if c["rotary"] else ["no rotary: pre = post"])
            + (["causal"] if c.get("causal") else [])
        )
        lines = [
            "",
            f"{run_label(c)}: {c['num_sequences']} sequences of {c['seq_len']} tokens; "
            f"{c['num_layers']} layers, {c['num_heads']} query heads, {c['kv_heads']} KV "
            f"heads, d = {c['head_dim']} ({kind})",
            *rank_lines(self.arrays, c),
            *topk_lines(self.arrays, c),
        ]
        if self.path is not None:
            out = self.path
            lines.append(f"run folder: {out}  ({out / RUN_JSON}, {out / FORMAT.npz})")
        lines += [f"figure: {path}" for path in self.figures]
        return "\n".join(lines)

    # --- figures ---------------------------------------------------------------------------

    def plot(
        self, ax: Axes | None = None, *, kv_head: int | None = None, tensor: str = "key"
    ) -> Axes:
        """PCA rank for the rank fraction against layer, pre- against post-RoPE, with the
        head dimension d marked: for one ``kv_head`` (1-based, with its bootstrap band), or
        (None) the mean over KV heads with the range over heads. ``tensor``: ``key`` or
        ``query`` (query heads then). Returns the axes.

        Raises:
            LowrankError: a KV head or tensor this run does not have.
        """
        from lowrank.families.keys.plots import plot_rank_vs_layer
        from lowrank.plots.style import choose

        choose("tensor", tensor, ("key", "query"))
        heads = self.arrays[f"{tensor}_rank90_post"].shape[1]
        if kv_head is not None:
            choose("kv_head", kv_head, range(1, heads + 1))
        return plot_rank_vs_layer(self, ax, head=kv_head, tensor=tensor)

    def plot_topk(
        self, ax: Axes | None = None, *, metric: str = "recall", budgets: list[float] | None = None
    ) -> Axes:
        """``metric`` (recall, mass or error) of top-k against r, one colour per budget k:
        the calibrated PCA basis (solid) and the random orthogonal basis (dotted), mean
        over layers and heads with 95% t-intervals over sequences; r = d is exact top-k.
        Returns the axes.

        Raises:
            LowrankError: a metric or budget this run does not have.
        """
        from lowrank.families.keys.plots import plot_topk_vs_rank
        from lowrank.plots.style import choose

        choose("metric", metric, TOPK_METRICS)
        for f in budgets or []:
            choose("budgets", f, self.budgets)
        return plot_topk_vs_rank(self, ax, metric=metric, budgets=budgets)

    def plot_logits(self, ax: Axes | None = None) -> Axes:
        """Each head's logits energy rank (mean over sequences; pre- and post-RoPE) against
        its weights' W_Q W_K^T energy rank, with y = x. Returns the axes.

        Raises:
            LowrankError: the run has no weights' ranks (fused projections).
        """
        from lowrank.families.keys.plots import plot_logits_vs_weights

        if "weights_rank90_energy" not in self.arrays:
            raise LowrankError("this keys run has no weights' ranks (its projections are fused)")
        return plot_logits_vs_weights(self, ax)

    def plot_layer(self, ax: Axes | None = None) -> Axes:
        """ShadowKV's view: each layer's energy rank of the whole n x (H_kv d) key (pre and
        post RoPE) and value matrices, mean over sequences with their range. Returns the
        axes."""
        from lowrank.families.keys.plots import plot_whole_layer

        return plot_whole_layer(self, ax)

    def draw(self, folder: str | Path | None = None) -> list[Path]:
        """Write every keys figure (PDF and PNG) into ``folder`` (default:
        ``<run folder>/figures``); returns the files."""
        from lowrank.families.keys.plots import write_figures

        self.figures = write_figures([self], self.figure_folder(folder))
        return self.figures

    @classmethod
    def from_folder(
        cls, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> KeysResult:
        """The run, once its top-k grid in run.json is checked against its arrays."""
        if list(meta["topk"]["ranks"]) != arrays["topk_ranks"].tolist():
            raise LowrankError(
                f"'{path / RUN_JSON}': topk.ranks {meta['topk']['ranks']} differ from "
                f"topk_ranks of '{path / FORMAT.npz}'"
            )
        return cls(meta, arrays, path)
