"""Run folders: the documented on-disk contract between analysis and figures.

A spectrum run folder holds two files (see docs/run-folders.md):

* ``run.json`` -- what was run: model, corpus, sequence policy, shapes, versions, timing.
* ``spectrum.npz`` -- the numbers: moments of c and s per (layer, head, index), per-(layer,
  head) summaries, and the exact token sequences analysed.

Reading checks before use: ``run.json`` against the schema of its run kind and its
``format_version``, every array's dtype, shape and finiteness against ``run.json``
(:mod:`lowrank.runs.schema`); a damaged file is one :class:`LowrankError` line naming it.

Writing is all-or-nothing (:func:`write_files`): every file of a run is written to a
temporary name in the folder and flushed to disk, and only then renamed into place,
``spectrum.npz`` first and ``run.json`` last, so a folder with a ``run.json`` always holds a
complete run. A write that fails (a full disk, an I/O error, a folder that cannot be made)
replaces nothing and is one :class:`LowrankError` line naming the path and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.arrays import (
    check_arrays,
    compare_array_spec,
    projection_array_spec,
    spectrum_array_spec,
)
from lowrank.runs.schema import FORMAT_VERSIONS, CheckpointInfo, validate, validate_meta
from lowrank.runs.stats import RunningMoments, SpectrumStats
from lowrank.spectra.maths import SUMMARY_NAMES

FORMAT = "lowrank-spectrum"
FORMAT_VERSION = FORMAT_VERSIONS[FORMAT]
RUN_JSON = "run.json"
SPECTRUM_NPZ = "spectrum.npz"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_NPZ = "checkpoint.npz"
_MOMENTS = ("cumulative", "singular_values")


@dataclass
class SpectrumRun:
    """A run folder read back: its metadata and its statistics."""

    path: Path
    meta: dict[str, Any]
    stats: SpectrumStats
    input_ids: np.ndarray  # (N, n)
    attention_mask: np.ndarray | None  # (N, n) when any sequence is padded

    @property
    def label(self) -> str:
        """``model / corpus`` as figures name the run (:func:`lowrank.runs.labels.run_label`)."""
        from lowrank.runs.labels import run_label

        return run_label(self.meta)

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])


def stats_arrays(stats: SpectrumStats) -> dict[str, np.ndarray]:
    """The npz arrays of a :class:`SpectrumStats` (means, std with ddof=1, and m2)."""
    arrays: dict[str, np.ndarray] = {"num_sequences": np.array(stats.count)}
    for name in _MOMENTS:
        m: RunningMoments = getattr(stats, name)
        arrays[f"{name}_mean"] = m.mean
        arrays[f"{name}_std"] = m.std()
        arrays[f"{name}_m2"] = m.m2
    for k, name in enumerate(SUMMARY_NAMES):
        arrays[f"{name}_mean"] = stats.summaries.mean[..., k]
        arrays[f"{name}_std"] = stats.summaries.std()[..., k]
    arrays["summaries_m2"] = stats.summaries.m2
    arrays["heatmap_index"] = np.array(stats.index)
    return arrays


def _moments(data: Mapping[str, np.ndarray], name: str, count: int) -> RunningMoments:
    mean = np.asarray(data[f"{name}_mean"], dtype=np.float64)
    return RunningMoments(count, mean, np.asarray(data[f"{name}_m2"], dtype=np.float64))


def stats_from_arrays(data: Mapping[str, np.ndarray]) -> SpectrumStats:
    """The inverse of :func:`stats_arrays` (KeyError when an array is missing; check the
    arrays first with :func:`lowrank.runs.arrays.stats_array_spec`)."""
    count = int(data["num_sequences"])
    summary_mean = np.stack([data[f"{s}_mean"] for s in SUMMARY_NAMES], axis=-1)
    return SpectrumStats(
        _moments(data, "cumulative", count),
        _moments(data, "singular_values", count),
        RunningMoments(
            count,
            summary_mean.astype(np.float64),
            np.asarray(data["summaries_m2"], dtype=np.float64),
        ),
        int(data["heatmap_index"]),
    )


NOTHING_REPLACED = "; nothing was replaced"
RESTART_ADVICE = "; pass --overwrite (not --resume) to start again"


def cannot(action: str, path: Path, exc: OSError, tail: str = "") -> LowrankError:
    """``cannot write 'runs/x/spectrum.npz': No space left on device (errno 28)``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" (errno {exc.errno})" if exc.errno else ""
    return LowrankError(f"cannot {action} '{path}': {reason}{code}{tail}")


# --- reading ------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """A JSON file of a run folder; unreadable or truncated ones raise a one-line error."""
    if not path.is_file():
        raise LowrankError(f"run folder '{path.parent}' has no {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise cannot("read", path, exc) from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LowrankError(f"'{path}' is not valid JSON (truncated?): {exc}") from exc


def read_meta(folder: Path, fmt: str) -> dict[str, Any]:
    """``run.json`` of a run folder, checked to be of format ``fmt``, of a format version
    this lowrank reads, and to match the schema of ``fmt`` (:mod:`lowrank.runs.schema`)."""
    if not folder.is_dir():
        if folder.exists():
            raise LowrankError(f"run folder '{folder}' is a file, not a folder")
        raise LowrankError(f"run folder '{folder}' does not exist")
    meta_path = folder / RUN_JSON
    if not meta_path.is_file():
        raise LowrankError(f"'{folder}' is not a run folder: it has no {RUN_JSON}")
    meta = read_json(meta_path)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != fmt:
        kind = f"a {found} run, not " if isinstance(found, str) and found[:8] == "lowrank-" else ""
        raise LowrankError(f"'{meta_path}' is {kind or 'not '}a {fmt} run")
    validate_meta(meta, fmt, meta_path)
    return meta


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz file of a run folder (no pickles)."""
    if not path.is_file():
        raise LowrankError(f"run folder '{path.parent}' has no {path.name}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        # any failure to decode the bytes is damage: zipfile, zlib, numpy's header parser
        # and its allocator (a header claiming a huge shape) each raise their own types
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise LowrankError(f"'{path}' is corrupted or truncated: {reason}") from exc


def read_run(path: str | Path) -> SpectrumRun:
    """Read and validate a spectrum run folder.

    Raises:
        LowrankError: naming the file and what is missing, truncated or inconsistent.
    """
    folder = Path(path)
    meta = read_meta(folder, FORMAT)
    npz_path = folder / SPECTRUM_NPZ
    data = read_npz(npz_path)
    check_arrays(npz_path, data, spectrum_array_spec(meta, data))
    stats = stats_from_arrays(data)
    return SpectrumRun(folder, meta, stats, data["input_ids"], data.get("attention_mask"))


PROJECTION_FORMAT = "lowrank-projection"
PROJECTION_NPZ = "projection.npz"


@dataclass
class ProjectionRun:
    """A projection run folder read back."""

    path: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def methods(self) -> list[str]:
        return [str(m) for m in self.arrays["methods"]]

    @property
    def ks(self) -> np.ndarray:
        return self.arrays["ks"]

    def rows(self, kind: str) -> list[str]:
        """Row names of ``kind`` (theorem1/theorem2): methods, estimator variants such as
        ``gaussian[projector]``, and references (``output-floor``, ``zero``, ``uniform``).
        Runs of format_version 1 stored one row per method."""
        key = f"rows_{kind}"
        return [str(r) for r in self.arrays[key]] if key in self.arrays else self.methods

    def stat(self, kind: str, row: str, stat: str = "mean", metric: str = "error") -> np.ndarray:
        """(K, L, H) statistic (mean/median/p95 over sequences x draws) of one metric
        (``error``, ``scale-free``, ``cosine``) of ``kind`` for a row."""
        key = f"{kind}_{row}_{stat}" if metric == "error" else f"{kind}_{row}_{metric}_{stat}"
        if key not in self.arrays:
            raise LowrankError(f"'{self.path}' has no {key}")
        return self.arrays[key]


def read_projection_run(path: str | Path) -> ProjectionRun:
    """Read and validate a ``lowrank project`` run folder."""
    folder = Path(path)
    meta = read_meta(folder, PROJECTION_FORMAT)
    npz_path = folder / PROJECTION_NPZ
    arrays = read_npz(npz_path)
    check_arrays(npz_path, arrays, projection_array_spec(meta, arrays))
    if int(meta["heatmap_k"]) not in arrays["ks"].tolist():
        raise LowrankError(
            f"'{folder / RUN_JSON}': heatmap_k {meta['heatmap_k']} is not one of the ks "
            f"{arrays['ks'].tolist()} of '{npz_path}'"
        )
    return ProjectionRun(folder, meta, arrays)


COMPARE_FORMAT = "lowrank-compare"
COMPARE_NPZ = "compare.npz"
COMPARE_REQUIRED = (
    "families",
    "budgets",
    "winner",
    "winner_from_q_k",
    "entropy_mean",
    "sink_mass_mean",
    "effective_rank_mean",
    "c_at_budget_mean",
    *(f"{m}_{s}" for m in ("probs_error", "output_error") for s in ("mean", "std")),
)


@dataclass
class CompareRun:
    """A ``lowrank compare`` run folder read back (arrays named as in compare.npz)."""

    path: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def families(self) -> list[str]:
        return [str(f) for f in self.arrays["families"]]

    @property
    def budgets(self) -> list[int]:
        return [int(b) for b in self.arrays["budgets"]]

    def table(self, metric: str, stat: str = "mean") -> np.ndarray:
        """(F, K, L, H) ``{metric}_{stat}``, e.g. ``output_error``, ``mean``."""
        key = f"{metric}_{stat}"
        if key not in self.arrays:
            raise LowrankError(f"'{self.path}' has no {key}")
        return self.arrays[key]

    def values(self, family: str, budget: int, metric: str, stat: str = "mean") -> np.ndarray:
        """(L, H) one family's metric at one budget."""
        if family not in self.families or budget not in self.budgets:
            raise LowrankError(f"'{self.path}' has no {family} at b = {budget}")
        table = self.table(metric, stat)
        return table[self.families.index(family), self.budgets.index(budget)]

    def summary(self, budget: int | None = None, metric: str | None = None) -> Any:
        """A pandas DataFrame, one row per (layer, head): entropy, sink mass, c at b,
        effective rank, each family's error and the winner at ``budget``."""
        import pandas as pd

        budget = budget if budget is not None else int(self.meta["focus_budget"])
        metric = metric or str(self.meta["winner_metric"])
        ki = self.budgets.index(budget)
        layers, heads = self.arrays["entropy_mean"].shape
        layer, head = np.meshgrid(np.arange(1, layers + 1), np.arange(1, heads + 1), indexing="ij")
        frame: dict[str, Any] = {"layer": layer.ravel(), "head": head.ravel()}
        for name in ("entropy", "sink_mass", "effective_rank"):
            frame[name] = self.arrays[f"{name}_mean"].ravel()
        frame["c_at_budget"] = self.arrays["c_at_budget_mean"][ki].ravel()
        table = self.table(metric)
        for fi, family in enumerate(self.families):
            frame[family] = table[fi, ki].ravel()
        winner = self.arrays["winner"][ki].ravel()
        frame["winner"] = [self.families[w] if w >= 0 else "" for w in winner]
        return pd.DataFrame(frame)


def read_compare_run(path: str | Path) -> CompareRun:
    """Read and validate a ``lowrank compare`` run folder."""
    folder = Path(path)
    meta = read_meta(folder, COMPARE_FORMAT)
    npz_path = folder / COMPARE_NPZ
    arrays = read_npz(npz_path)
    check_arrays(npz_path, arrays, compare_array_spec(meta, arrays))
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
    return CompareRun(folder, meta, arrays)


def read_checkpoint_info(out: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``out``, validated (one line saying how to start again)."""
    path = out / CHECKPOINT_JSON
    try:
        info = read_json(path)
    except LowrankError as exc:
        raise LowrankError(f"{exc}{RESTART_ADVICE}") from None
    validate(CheckpointInfo, info, path, RESTART_ADVICE)
    return dict(info)
