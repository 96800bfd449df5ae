"""The arrays of a run folder checked against its run.json: shape, dtype, finiteness, range.

:class:`ArraySpec` says what one array must be; :func:`check_arrays` checks a whole npz
before any of it is used, and names the file, the array and what is wrong. One spec function
per run kind; each says which arrays may legitimately hold NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lowrank.errors import LowrankError

# The newest format_version of each run kind that this lowrank reads. A writer that bumps
# its format_version bumps it here too (tests/test_runs.py checks the pairs it can see).

# --- arrays ------------------------------------------------------------------------------

Kind = Literal["float", "int", "bool", "str", "mask"]
_KINDS: dict[str, tuple[str, str]] = {
    "float": ("f", "floating-point numbers"),
    "int": ("iu", "integers"),
    "bool": ("b", "booleans"),
    "str": ("U", "strings"),
    "mask": ("iub", "integers or booleans"),
}


@dataclass(frozen=True)
class ArraySpec:
    """What one npz array must be.

    Attributes:
        kind: dtype kind: ``float`` (any float width), ``int`` (signed or unsigned), ``bool``,
            ``str`` (unicode) or ``mask`` (int or bool).
        shape: the expected shape; a ``None`` entry accepts any length on that axis.
        finite: floats only: refuse NaN and infinities. False where NaN is a legitimate
            value (an undefined statistic); then nothing is checked.
        minimum, maximum: bounds on the (finite) values.
        equals: the values run.json says the array holds (e.g. ``ns``), compared exactly.
        required: False for arrays an older format did not write, or optional ones.
    """

    kind: Kind
    shape: tuple[int | None, ...]
    finite: bool = True
    minimum: float | None = None
    maximum: float | None = None
    equals: Any = None
    required: bool = True


def check_arrays(
    path: Path, arrays: Mapping[str, np.ndarray], spec: Mapping[str, ArraySpec]
) -> None:
    """Check the arrays of npz file ``path`` against ``spec`` (arrays not in it are free).

    Raises:
        LowrankError: naming the file, the first array at fault and what is wrong; missing
            required arrays are all named at once.
    """
    missing = [name for name, s in spec.items() if s.required and name not in arrays]
    if missing:
        raise LowrankError(f"'{path}' lacks arrays {', '.join(missing)}")
    for name, s in spec.items():
        if name in arrays:
            problem = _problem(np.asarray(arrays[name]), s)
            if problem:
                raise LowrankError(f"'{path}': {name} {problem}")


def _problem(a: np.ndarray, s: ArraySpec) -> str | None:
    kinds, words = _KINDS[s.kind]
    if a.dtype.kind not in kinds:
        return f"must hold {words}, not {a.dtype}"
    if len(a.shape) != len(s.shape) or any(
        want is not None and got != want for got, want in zip(a.shape, s.shape, strict=True)
    ):
        expected = ", ".join("any" if d is None else str(d) for d in s.shape)
        return f"has shape {a.shape}, run.json says ({expected}{',' if len(s.shape) == 1 else ''})"
    if s.kind == "float" and s.finite and not np.isfinite(a).all():
        return "holds NaN or infinite values"
    if s.minimum is not None or s.maximum is not None:
        values = a[np.isfinite(a)] if s.kind == "float" else a
        if values.size and s.minimum is not None and values.min() < s.minimum:
            return f"holds {values.min()}, below its minimum {s.minimum:g}"
        if values.size and s.maximum is not None and values.max() > s.maximum:
            return f"holds {values.max()}, above its maximum {s.maximum:g}"
    if s.equals is not None and a.tolist() != s.equals:
        return f"holds {_short(a.tolist())}, run.json says {_short(s.equals)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _length(arrays: Mapping[str, np.ndarray], name: str) -> int | None:
    """Length of a 1-D array (None when absent or not 1-D: its own spec reports that)."""
    a = arrays.get(name)
    return int(a.shape[0]) if a is not None and a.ndim == 1 else None


def _scalar(arrays: Mapping[str, np.ndarray], name: str) -> int | None:
    """Value of a 0-d integer array (None when absent or not that)."""
    a = arrays.get(name)
    ok = a is not None and a.shape == () and a.dtype.kind in "iu"
    return int(a) if ok and a is not None else None


def stats_array_spec(
    layers: int, heads: int, n: int, count: int | None = None, index: int | None = None
) -> dict[str, ArraySpec]:
    """The statistics of a spectrum run or checkpoint (:func:`folders.stats_arrays`).

    Means, stds and m2 of c and s are ``[layers, heads, n]``, the five summaries
    ``[layers, heads]`` (m2: ``[layers, heads, 5]``); all finite (a mean over sequences of
    finite spectra), stds and m2 non-negative. ``num_sequences`` and ``heatmap_index`` are
    scalars.
    """
    from lowrank.spectra.maths import SUMMARY_NAMES

    cube, plane = (layers, heads, n), (layers, heads)
    spec = {
        "num_sequences": ArraySpec("int", (), minimum=0, equals=count),
        "heatmap_index": ArraySpec("int", (), minimum=1, maximum=n, equals=index),
    }
    # c is a fraction of the nuclear norm; s are singular values (both up to rounding)
    spec["cumulative_mean"] = ArraySpec("float", cube, minimum=0, maximum=1 + 1e-6)
    spec["singular_values_mean"] = ArraySpec("float", cube, minimum=-1e-6)
    for name in ("cumulative", "singular_values"):
        spec[f"{name}_std"] = ArraySpec("float", cube, minimum=0)
        spec[f"{name}_m2"] = ArraySpec("float", cube, minimum=0)
    for name in SUMMARY_NAMES:
        spec[f"{name}_mean"] = ArraySpec("float", plane)
        spec[f"{name}_std"] = ArraySpec("float", plane, minimum=0, required=False)
    spec["summaries_m2"] = ArraySpec("float", (*plane, len(SUMMARY_NAMES)), minimum=0)
    return spec


def spectrum_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """spectrum.npz: the statistics, ``input_ids`` ``[N, n]`` (N = num_sequences, tokens
    >= 0) and, when sequences are padded, ``attention_mask`` ``[N, n]`` of 0/1."""
    n = int(meta["seq_len"])
    count = meta.get("num_sequences")
    if count is None:
        count = _scalar(arrays, "num_sequences")
    spec = stats_array_spec(
        int(meta["num_layers"]), int(meta["num_heads"]), n, count, meta.get("heatmap_index")
    )
    spec["input_ids"] = ArraySpec("int", (count, n), minimum=0)
    spec["attention_mask"] = ArraySpec("mask", (count, n), minimum=0, maximum=1, required=False)
    return spec


def projection_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """projection.npz: ``ks`` ``[K]`` (1..n), row names, ``input_ids`` ``[N, n]``, and per
    row, metric and statistic ``theorem{1,2}_<row>[_<metric>]_{mean,median,p95}``
    ``[K, layers, heads]`` with the samples ``..._samples`` ``[K, layers, heads, S]``. The
    statistics may hold NaN: a row that does not apply (e.g. to a causal model) is NaN;
    the others are >= 0 (errors are ratios of norms) or in [-1, 1] (cosines)."""
    n, cube = int(meta["seq_len"]), (int(meta["num_layers"]), int(meta["num_heads"]))
    k = _length(arrays, "ks")
    spec = {
        "ks": ArraySpec("int", (None,), minimum=1, maximum=n),
        "methods": ArraySpec("str", (None,)),
        "rows_theorem1": ArraySpec("str", (None,), required=False),
        "rows_theorem2": ArraySpec("str", (None,), required=False),
        "input_ids": ArraySpec("int", (meta["num_sequences"], n), minimum=0, required=False),
    }
    for name in arrays:
        if name.startswith(("theorem1_", "theorem2_")):
            samples = name.endswith("_samples")
            shape = (k, *cube, None) if samples else (k, *cube)
            if "_cosine" in name:  # a cosine lies in [-1, 1]; errors are norms, >= 0
                low, high = -1 - 1e-6, 1 + 1e-6
            else:
                low, high = 0.0, None
            spec[name] = ArraySpec("float", shape, finite=False, minimum=low, maximum=high)
    return spec


def compare_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """compare.npz: ``families`` ``[F]``, ``budgets`` ``[B]`` (1..n), per metric
    ``<metric>_{mean,std,m2}`` ``[F, B, layers, heads]`` (NaN where a family does not apply,
    e.g. to a causal model), ``attended_mean``/``coverage_mean`` alike, per-head statistics
    ``<stat>_{mean,std}`` ``[layers, heads]`` and ``c_at_budget_*`` ``[B, layers, heads]``
    (finite), ``winner``/``winner_from_q_k`` ``[B, layers, heads]`` in -1..F-1 (-1: none),
    ``applicable`` ``[F]``, ``input_ids`` ``[N, n]``."""
    n, plane = int(meta["seq_len"]), (int(meta["num_layers"]), int(meta["num_heads"]))
    f, b = _length(arrays, "families"), _length(arrays, "budgets")
    table = (f, b, *plane)
    spec = {
        "families": ArraySpec("str", (None,)),
        "budgets": ArraySpec("int", (None,), minimum=1, maximum=n),
        "metrics": ArraySpec("str", (None,), required=False),
        "head_stats": ArraySpec("str", (None,), required=False),
        "num_sequences": ArraySpec("int", (), minimum=0, required=False),
        "applicable": ArraySpec("bool", (f,), required=False),
        "input_ids": ArraySpec("int", (meta["num_sequences"], n), minimum=0, required=False),
        "attended_mean": ArraySpec("float", table, finite=False, required=False),
        "coverage_mean": ArraySpec("float", table, finite=False, required=False),
        "c_at_budget_mean": ArraySpec("float", (b, *plane)),
        "c_at_budget_std": ArraySpec("float", (b, *plane), minimum=0, required=False),
    }
    top = None if f is None else f - 1
    for name in ("winner", "winner_from_q_k"):
        spec[name] = ArraySpec("int", (b, *plane), minimum=-1, maximum=top)
    metrics = _names(arrays, "metrics", ("probs_error", "output_error"))
    for metric in metrics:
        for stat in ("mean", "std", "m2"):
            required = stat != "m2" and metric in ("probs_error", "output_error")
            spec[f"{metric}_{stat}"] = ArraySpec("float", table, finite=False, required=required)
    for stat in _names(arrays, "head_stats", ("entropy", "sink_mass", "effective_rank")):
        spec[f"{stat}_mean"] = ArraySpec("float", plane)
        spec[f"{stat}_std"] = ArraySpec("float", plane, minimum=0, required=False)
    return spec


def _names(arrays: Mapping[str, np.ndarray], key: str, default: tuple[str, ...]) -> list[str]:
    a = arrays.get(key)
    if a is None or a.ndim != 1 or a.dtype.kind != "U":
        return list(default)
    return list(dict.fromkeys([*default, *(str(x) for x in a)]))


def scaling_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """scaling.npz: ``ns`` ``[S]`` (= run.json ``ns``), ``groups`` ``[layers + 1]``, per
    measure (``measures`` and ``c_measures``) the per-document values ``[S, D, layers,
    heads]`` (D = ``fit_documents``; finite) and ``<measure>_mean`` ``[G, S]`` (finite); the
    fits of each measure (``_interval`` ``[G, S, 2]``, ``_log_params``, ``_power_params``,
    ``_heldout_error``, ``_beta_interval`` ``[G, 2]``, ``_delta_aic``, ``_aic_support``,
    ``_heldout_support`` ``[G]``) may hold NaN or inf (a fit that failed, no resamples),
    and ``_verdict`` ``[G]`` names the verdict."""
    layers, heads = int(meta["num_layers"]), int(meta["num_heads"])
    s, g = len(meta["ns"]), layers + 1
    docs = _scalar(arrays, "fit_documents")
    spec = {
        "ns": ArraySpec("int", (s,), minimum=1, equals=list(meta["ns"])),
        "groups": ArraySpec("str", (g,)),
        "fit_documents": ArraySpec("int", (), minimum=0),
        "measures": ArraySpec("str", (None,)),
        "c_measures": ArraySpec("str", (None,), required=False),
        "tau": ArraySpec("float", (), required=False),
    }
    fits = {"_interval": (g, s, 2), "_log_params": (g, 2), "_power_params": (g, 2)}
    fits |= {"_heldout_error": (g, 2), "_beta_interval": (g, 2), "_delta_aic": (g,)}
    fits |= {"_aic_support": (g,), "_heldout_support": (g,)}
    measures = _names(arrays, "measures", ())
    for m in [*measures, *_names(arrays, "c_measures", ())]:
        spec[m] = ArraySpec("float", (s, docs, layers, heads))
        spec[f"{m}_mean"] = ArraySpec("float", (g, s))
    for m in measures:
        for end, shape in fits.items():
            spec[f"{m}{end}"] = ArraySpec("float", shape, finite=False)
        spec[f"{m}_verdict"] = ArraySpec("str", (g,))
    return spec


def verify_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """verify.npz: ``eps`` ``[E]`` and ``ks`` ``[K]`` (= run.json ``eps`` and ``k``), the
    series names ``[S]`` (``sources`` in format 1), counts ``failures``, ``trials``,
    ``clusters`` ``[S, E, K]`` (>= 0), and ``rate``, ``ci_low``, ``ci_high``, ``bound``,
    ``exact``, ``n_eff``, ``p_holm`` ``[S, E, K]``: NaN where a row has no such value (no
    bound proven, no exact probability, not tested)."""
    eps, ks = list(meta["eps"]), list(meta["k"])
    names = "series" if "series" in arrays or "sources" not in arrays else "sources"
    s = _length(arrays, names)
    cube = (s, len(eps), len(ks))
    spec = {
        "eps": ArraySpec("float", (len(eps),), equals=eps),
        "ks": ArraySpec("int", (len(ks),), equals=ks),
        names: ArraySpec("str", (None,)),
        "statement": ArraySpec("str", (s,), required=False),
    }
    for name in ("failures", "trials", "clusters"):
        spec[name] = ArraySpec("int", cube, minimum=0, required=name != "clusters")
    for name in ("rate", "ci_low", "ci_high", "bound", "exact", "n_eff", "p_holm"):
        required = name in ("rate", "ci_low", "ci_high", "bound")
        spec[name] = ArraySpec("float", cube, finite=False, required=required)
    return spec


def efficiency_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """efficiency.npz: ``n`` ``[N]`` and ``k`` ``[K]`` (= run.json ``n`` and ``k``); per
    baseline (exact, sdpa) ``speedup*_vs_*`` and ``memory_saving*_vs_*`` ``[N, K]``; per stack
    ``batch_*`` (``[N]``, Linformer's ``[N, K]``; >= 0, 0 when left out) and
    ``peak_bytes_per_sequence_*`` alike; ``equal_batch`` ``[N]``. Every float may hold NaN
    (a cell not measured: out of memory, or over the budget). Arrays format 1 did not
    write are optional."""
    ns, ks = list(meta["n"]), list(meta["k"])
    grid, line = (len(ns), len(ks)), (len(ns),)
    spec = {
        "n": ArraySpec("int", line, equals=ns),
        "k": ArraySpec("int", (len(ks),), equals=ks),
        "equal_batch": ArraySpec("int", line, minimum=0, required=False),
    }
    for base in ("exact", "sdpa"):
        for key in ("speedup", "speedup_min", "speedup_max", "memory_saving"):
            spec[f"{key}_vs_{base}"] = ArraySpec("float", grid, finite=False, required=False)
        spec[f"memory_saving_equal_batch_vs_{base}"] = ArraySpec(
            "float", grid, finite=False, required=False
        )
    spec["speedup_vs_exact"] = ArraySpec("float", grid, finite=False)
    for method, shape in (("exact", line), ("sdpa", line), ("linformer", grid)):
        spec[f"batch_{method}"] = ArraySpec("int", shape, minimum=0, required=False)
        spec[f"peak_bytes_per_sequence_{method}"] = ArraySpec(
            "float", shape, finite=False, required=False
        )
    return spec
