"""Run folders: the documented on-disk contract between analysis and figures.

A spectrum run folder holds two files (see README, "Run folder format"):

* ``run.json`` -- what was run: model, corpus, sequence policy, shapes, versions, timing.
* ``spectrum.npz`` -- the numbers: moments of c and s per (layer, head, index), per-(layer,
  head) summaries, and the exact token sequences analysed.

Files are written to a temporary name and renamed into place, ``spectrum.npz`` first and
``run.json`` last, so a folder with a ``run.json`` always holds a complete run.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.spectra.maths import SUMMARY_NAMES
from lowrank.runs.stats import RunningMoments, SpectrumStats

FORMAT = "lowrank-spectrum"
FORMAT_VERSION = 1
RUN_JSON = "run.json"
SPECTRUM_NPZ = "spectrum.npz"
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
        """``model / dataset``, with a local model folder shown by its last component."""
        model = self.meta["model"]
        name = str(model["name"])
        if model.get("kind") == "local":
            name = Path(name.rstrip("/")).name or name
        return f"{name} / {self.meta['corpus']['dataset']}"

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


CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_NPZ = "checkpoint.npz"


def check_out_dir(
    out: Path, identity: dict[str, Any], overwrite: bool, resume: bool = False
) -> None:
    """Refuse an output folder that holds something we must not replace.

    A missing or empty folder is fine; one holding a run with the same ``identity`` is
    replaced (same numbers); another run needs ``overwrite``; foreign files are never touched.
    A partial run (a checkpoint) of the same identity needs ``resume`` or ``overwrite``.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise LowrankError(f"--out '{out}' is a file, not a folder: choose another --out")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    if resume and RUN_JSON in entries and CHECKPOINT_JSON not in entries:
        raise LowrankError(f"--resume: the run in '{out}' is already complete")
    if CHECKPOINT_JSON in entries and RUN_JSON not in entries:
        try:
            partial = json.loads((out / CHECKPOINT_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            partial = {}
        if partial.get("identity") != identity and not overwrite:
            raise LowrankError(
                f"--out '{out}' holds a partial run of another configuration: choose another "
                "--out or pass --overwrite"
            )
        if not resume and not overwrite:
            raise LowrankError(
                f"--out '{out}' holds a partial run ({partial.get('next_index', '?')} of "
                f"{partial.get('total', '?')} sequences): pass --resume to continue it or "
                "--overwrite to start again"
            )
        return
    if RUN_JSON not in entries:
        raise LowrankError(
            f"--out '{out}' holds files that are not a lowrank run: choose an empty or new folder"
        )
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        old = {}
    if old.get("identity") != identity and not overwrite:
        raise LowrankError(
            f"--out '{out}' holds another run ({old.get('command', 'unknown command')}): "
            "choose another --out or pass --overwrite"
        )


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run(
    out: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], npz: str = SPECTRUM_NPZ
) -> None:
    """Write the arrays (``npz``) then ``run.json`` atomically into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    named: dict[str, Any] = dict(arrays)
    _atomic_write(out / npz, lambda fh: np.savez_compressed(fh, **named))
    text = json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n"
    _atomic_write(out / RUN_JSON, lambda fh: fh.write(text.encode("utf-8")))


def _moments(data: dict[str, np.ndarray], name: str, count: int) -> RunningMoments:
    return RunningMoments(count, data[f"{name}_mean"], data[f"{name}_m2"])


REQUIRED = (
    "num_sequences",
    "heatmap_index",
    "input_ids",
    "summaries_m2",
    *(f"{m}_{k}" for m in _MOMENTS for k in ("mean", "std", "m2")),
    *(f"{s}_mean" for s in SUMMARY_NAMES),
)


def read_run(path: str | Path) -> SpectrumRun:
    """Read and validate a spectrum run folder.

    Raises:
        LowrankError: naming the folder and what is missing, truncated or inconsistent.
    """
    folder = Path(path)
    meta = read_meta(folder, FORMAT)
    meta_path, npz_path = folder / RUN_JSON, folder / SPECTRUM_NPZ
    data = read_npz(npz_path)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise LowrankError(f"'{npz_path}' lacks arrays {', '.join(missing)}")
    try:
        layers, heads, n = (int(meta[k]) for k in ("num_layers", "num_heads", "seq_len"))
    except (KeyError, TypeError, ValueError) as exc:
        raise LowrankError(f"'{meta_path}' lacks num_layers/num_heads/seq_len") from exc
    for name in _MOMENTS:
        for kind in ("mean", "std", "m2"):
            if data[f"{name}_{kind}"].shape != (layers, heads, n):
                raise LowrankError(
                    f"'{npz_path}': {name}_{kind} has shape {data[f'{name}_{kind}'].shape}, "
                    f"run.json says ({layers}, {heads}, {n})"
                )
    if data["summaries_m2"].shape != (layers, heads, len(SUMMARY_NAMES)):
        raise LowrankError(f"'{npz_path}': summaries_m2 has the wrong shape")
    stats = stats_from_arrays(data)
    return SpectrumRun(folder, meta, stats, data["input_ids"], data.get("attention_mask"))


def stats_from_arrays(data: dict[str, np.ndarray]) -> SpectrumStats:
    """The inverse of :func:`stats_arrays` (KeyError when an array is missing)."""
    count = int(data["num_sequences"])
    summary_mean = np.stack([data[f"{s}_mean"] for s in SUMMARY_NAMES], axis=-1)
    return SpectrumStats(
        _moments(data, "cumulative", count),
        _moments(data, "singular_values", count),
        RunningMoments(count, summary_mean, data["summaries_m2"]),
        int(data["heatmap_index"]),
    )


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """One row per record, columns from the first record's keys."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


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


def read_json(path: Path) -> Any:
    """A JSON file of a run folder; unreadable or truncated ones raise a one-line error."""
    if not path.is_file():
        raise LowrankError(f"run folder '{path.parent}' has no {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LowrankError(f"'{path}' is not valid JSON (truncated?): {exc}") from exc


def read_meta(folder: Path, fmt: str) -> dict[str, Any]:
    """``run.json`` of a run folder, checked to be of format ``fmt``."""
    if not folder.is_dir():
        raise LowrankError(f"run folder '{folder}' does not exist")
    meta_path = folder / RUN_JSON
    if not meta_path.is_file():
        raise LowrankError(f"'{folder}' is not a run folder: it has no {RUN_JSON}")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise LowrankError(f"'{meta_path}' is not a {fmt} run")
    return meta


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz file of a run folder (no pickles)."""
    if not path.is_file():
        raise LowrankError(f"run folder '{path.parent}' has no {path.name}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise LowrankError(f"'{path}' is corrupted or truncated: {exc}") from exc


def read_projection_run(path: str | Path) -> ProjectionRun:
    """Read and validate a ``lowrank project`` run folder."""
    folder = Path(path)
    meta = read_meta(folder, PROJECTION_FORMAT)
    arrays = read_npz(folder / PROJECTION_NPZ)
    for key in ("ks", "methods"):
        if key not in arrays:
            raise LowrankError(f"'{folder / PROJECTION_NPZ}' lacks the array {key}")
    return ProjectionRun(folder, meta, arrays)


def write_checkpoint(
    out: Path,
    identity: dict[str, Any],
    parts: list[SpectrumStats],
    next_index: int,
    total: int,
    command: str,
) -> None:
    """Save each rank's accumulators and the next sequence index atomically (npz, then json).

    ``parts`` are in rank order, one per rank; together they hold sequences
    ``[0, next_index)``. One part is stored under the run folder's array names, several under
    ``rank{r}.``-prefixed ones. The npz carries ``next_index`` and ``world_size`` itself, so a
    crash between the two renames leaves a checkpoint that is still consistent.
    """
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "next_index": np.array(next_index),
        "world_size": np.array(len(parts)),
    }
    if len(parts) == 1:
        arrays |= stats_arrays(parts[0])
    else:
        for rank, stats in enumerate(parts):
            arrays |= {f"rank{rank}.{k}": v for k, v in stats_arrays(stats).items()}
    _atomic_write(out / CHECKPOINT_NPZ, lambda fh: np.savez(fh, **arrays))
    info = {
        "identity": identity,
        "next_index": next_index,
        "total": total,
        "world_size": len(parts),
        "command": command,
    }
    text = json.dumps(info, indent=2) + "\n"
    _atomic_write(out / CHECKPOINT_JSON, lambda fh: fh.write(text.encode("utf-8")))


def read_checkpoint(out: Path, identity: dict[str, Any]) -> tuple[list[SpectrumStats], int] | None:
    """Each rank's accumulators (rank order) and the next index of a partial run, if any."""
    if not (out / CHECKPOINT_JSON).is_file():
        return None
    info = read_json(out / CHECKPOINT_JSON)
    if not isinstance(info, dict) or "next_index" not in info:
        raise LowrankError(f"'{out / CHECKPOINT_JSON}' is corrupted: choose --overwrite")
    if info.get("identity") != identity:
        raise LowrankError(f"the checkpoint in '{out}' belongs to another configuration")
    data = read_npz(out / CHECKPOINT_NPZ)
    world = int(data.get("world_size", 1))
    try:
        if world == 1:
            parts = [stats_from_arrays(data)]
        else:
            parts = [
                stats_from_arrays(
                    {k.partition(".")[2]: v for k, v in data.items() if k.startswith(f"rank{r}.")}
                )
                for r in range(world)
            ]
    except KeyError as exc:
        raise LowrankError(f"'{out / CHECKPOINT_NPZ}' lacks {exc}") from exc
    next_index = int(data["next_index"]) if "next_index" in data else int(info["next_index"])
    return parts, next_index


def clear_checkpoint(out: Path) -> None:
    for name in (CHECKPOINT_JSON, CHECKPOINT_NPZ):
        (out / name).unlink(missing_ok=True)


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
    arrays = read_npz(folder / COMPARE_NPZ)
    missing = [k for k in COMPARE_REQUIRED if k not in arrays]
    if missing:
        raise LowrankError(f"'{folder / COMPARE_NPZ}' lacks arrays {', '.join(missing)}")
    shape = arrays["output_error_mean"].shape
    expected = (len(arrays["families"]), len(arrays["budgets"]), *arrays["entropy_mean"].shape)
    if shape != expected:
        raise LowrankError(f"'{folder / COMPARE_NPZ}': output_error_mean has shape {shape}")
    return CompareRun(folder, meta, arrays)
