"""What every figure shares: the paper style, new axes, legends, log ticks, run labels, saving.

Plot functions take ``ax=None`` (:func:`axes_or_new`) and return the axes. A panel whose
legend would cover data puts it below the axes (:func:`below_legend`: long lists) or beside
them (:func:`side_legend`: short ones); a figure of several panels gathers one legend below
them (:func:`merged_legend`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.writing import write_files

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

R = TypeVar("R")
SINGLE_COLUMN = 3.4  # inches: one column of a two-column paper
DOUBLE_COLUMN = 7.0


@contextmanager
def paper_style() -> Iterator[None]:
    """Seaborn paper context, colour-blind palette, embedded TrueType fonts."""
    import matplotlib as mpl
    import seaborn as sns

    rc: dict[str, Any] = {
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "savefig.dpi": 300,
        "savefig.bbox": "tight",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 8,
    }
    with mpl.rc_context(), sns.plotting_context("paper", font_scale=0.9):
        sns.set_palette("colorblind")
        mpl.rcParams.update(rc)  # type: ignore[arg-type]  # stubs want Literal keys
        yield


def axes_or_new(ax: Axes | None, size: tuple[float, float] = (SINGLE_COLUMN, 2.4)) -> Axes:
    """``ax``, or the axes of a new figure of ``size`` inches (the plot functions' ax=None).

    The new figure uses constrained layout, so a legend outside the axes stays on it.

    Raises:
        LowrankError: ``ax`` is neither None nor matplotlib Axes (an option passed by
            position: options are keywords, ``res.plot(ax, metric=...)``).
    """
    from matplotlib.axes import Axes as MplAxes

    if ax is not None:
        if not isinstance(ax, MplAxes):
            raise LowrankError(
                f"ax={ax!r}: give matplotlib Axes or None as the first argument; the plot "
                "options are keywords (e.g. plot(ax, metric=...))"
            )
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=size, layout="constrained").add_subplot()


def choose(name: str, value: Any, allowed: Iterable[Any], what: str = "this run has") -> None:
    """Raise one line naming the valid values when ``value`` is not among ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        listed = ", ".join(str(a) for a in allowed) or "none"
        raise LowrankError(f"{name}={value!r}: {what} {listed}")


def side_legend(ax: Axes, handles: list[Any] | None = None, **options: Any) -> None:
    """The legend beside the axes, top-aligned on their right, where it covers no data."""
    kwargs: dict[str, Any] = {
        "loc": "upper left",
        "bbox_to_anchor": (1.02, 1.0),
        "borderaxespad": 0.0,
        "frameon": False,
        "fontsize": "small",
        "title_fontsize": "small",
    }
    kwargs.update(options)
    if handles is not None:
        kwargs["handles"] = handles
    ax.legend(**kwargs)


def below_legend(
    ax: Axes, handles: list[Any] | None = None, ncol: int | None = None, **options: Any
) -> None:
    """The legend under the axes, clear of the tick labels and the x label: for long lists
    of entries, which beside a narrow panel would squeeze it. ``ncol`` None: two columns
    when every label line is short, else one."""
    from matplotlib.transforms import ScaledTranslation

    if ncol is None:
        labels = [str(h.get_label()) for h in handles or ax.get_legend_handles_labels()[0]]
        longest = max((len(line) for label in labels for line in label.split("\n")), default=0)
        ncol = 2 if longest <= 32 else 1

    fig = ax.figure
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    tight = ax.get_tightbbox(renderer)
    below = ax.get_window_extent(renderer).y0 - tight.y0 if tight is not None else 0.0
    gap = below / fig.dpi + 0.05  # inches from the axes' bottom edge to the legend
    kwargs: dict[str, Any] = {
        "loc": "upper center",
        "bbox_to_anchor": (0.5, 0.0),
        "bbox_transform": ax.transAxes + ScaledTranslation(0, -gap, fig.dpi_scale_trans),
        "borderaxespad": 0.0,
        "ncol": ncol,
        "frameon": False,
        "fontsize": "small",
        "title_fontsize": "small",
    }
    kwargs.update(options)
    if handles is not None:
        kwargs["handles"] = handles
    ax.legend(**kwargs)


def merged_legend(fig: Figure, axes: Iterable[Axes], ncol: int = 5, **options: Any) -> None:
    """One legend below the panels with every distinct entry of ``axes`` (first wins)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    kwargs: dict[str, Any] = {
        "loc": "outside lower center",
        "ncol": max(1, min(len(entries), ncol)),
        "frameon": False,
        "fontsize": "small",
    }
    kwargs.update(options)
    fig.legend(list(entries.values()), list(entries), **kwargs)


def bottom_legend(fig: Figure, ax: Axes) -> None:
    """One legend for a multi-panel figure, below the panels, from ``ax``'s entries."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=len(labels),
        frameon=False,
        fontsize="small",
    )


def readable_log_ticks(
    ax: Axes, suffix: str = "", axis: Literal["x", "y"] = "y", base: Literal[2, 10] = 10
) -> None:
    """Labelled ticks on a log axis whatever its range, where matplotlib may label a single
    power of ten (or none) and leave the values unreadable.

    Ticks are powers of two (``base=2``: 0.25, 0.5, 1, 2, ...) or 1-2-5 steps (0.1, 0.2,
    0.5, 1, 2, ...), thinned to powers of ten over three decades or more; a range too short
    for three such ticks gets evenly spaced round values (0.8, 0.9, 1, 1.1). Labels are
    plain numbers with ``suffix`` (``"x"``: 0.5x, 1x, 2x). Call it once the limits are set.
    """
    from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    lo, hi = min(lo, hi), max(lo, hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0:
        return
    span = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 2)
    if base == 2:
        powers = range(int(np.floor(np.log2(lo))), int(np.ceil(np.log2(hi))) + 1)
        inside = [p for p in powers if lo <= 2.0**p <= hi]
        step = max(1, -(-len(inside) // 7))  # at most 7 labels, 1 (2^0) among them
        candidates = [2.0**p for p in powers if p % step == 0]
    elif np.log10(hi / lo) >= 3:
        candidates = [10.0**p for p in span]
    else:
        candidates = [m * 10.0**p for p in span for m in (1, 2, 5)]
    ticks = [t for t in candidates if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9)]
    if len(ticks) < 3:
        ticks = [
            float(t)
            for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            if lo <= t <= hi and t > 0
        ]
    axis_obj = ax.yaxis if axis == "y" else ax.xaxis
    axis_obj.set_ticks(ticks, [f"{float(f'{t:.3g}'):g}{suffix}" for t in ticks])
    axis_obj.set_minor_locator(NullLocator())
    axis_obj.set_minor_formatter(NullFormatter())


def save(fig: Figure, path: Path) -> list[Path]:
    """Write ``path.pdf`` and ``path.png`` (300 dpi), both or neither, and close the figure.

    The files go through :func:`lowrank.runs.writing.write_files` (temporary files, then
    renames), so a full disk or an I/O error is one line and leaves earlier figures intact.
    """
    import matplotlib.pyplot as plt

    # no creation date in the PDF: redrawing the same run gives the same file
    meta: dict[str, dict[str, None] | None] = {".pdf": {"CreationDate": None}, ".png": None}

    def writer(suffix: str) -> Callable[[IO[bytes]], None]:
        return lambda fh: fig.savefig(fh, format=suffix[1:], metadata=meta[suffix])

    targets = [path.with_suffix(suffix) for suffix in (".pdf", ".png")]
    try:
        write_files(path.parent, [(t.name, writer(t.suffix)) for t in targets])
    finally:
        plt.close(fig)
    return targets


def per_run(results: Sequence[R], out: Path) -> list[tuple[R, Path]]:
    """Where each run's figures go: ``out`` itself for one run, ``out/<name>`` for several
    (named after their folders, made unique), so that figures of two runs never collide."""
    if len(results) == 1:
        return [(results[0], out)]
    names: list[str] = []
    for index, result in enumerate(results, 1):
        path = getattr(result, "path", None)
        name = Path(path).name if path is not None else f"run{index}"
        names.append(name if name not in names else f"{name}-{index}")
    return [(result, out / name) for result, name in zip(results, names, strict=True)]


def layer_ticks(count: int, most: int = 12) -> list[int]:
    """Round layer numbers to label, at most about ``most``: every layer, or the multiples
    of 2, 5, 10 or 20, with layer 1 where the next label is 5 or more away."""
    step = next((s for s in (1, 2, 5, 10, 20) if count / s <= most), 50)
    return ([1] if step >= 5 else []) + list(range(step, count + 1, step))
