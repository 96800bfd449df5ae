"""The three streaming passes of ``lowrank keys`` and their state, which checkpoints resume.

1. calibration: :class:`KeysStats` of the calibration text (one bootstrap group, no P rank):
   its PCA of post-RoPE keys is top-k's calibrated basis, its ranks the second-text check;
2. evaluation: :class:`KeysStats` of the evaluated text (every statistic);
3. top-k: :class:`TopkStats` of the evaluated text again, with the calibrated basis, the
   evaluated text's own basis (the transfer gap) and a random orthogonal one.

Only one layer's queries, keys and values of one batch are alive at a time (the capture hands
them to the statistics inside the layer's attention, :func:`capture_qkv`). The state counts
the sequences done over all passes, so a checkpoint is one index into ``Ncal + 2 N``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowrank.errors import LowrankError
from lowrank.families.keys import maths
from lowrank.families.keys.accumulate import KeysStats
from lowrank.families.keys.names import BASES
from lowrank.families.keys.qkv import LayerQKV, capture_qkv
from lowrank.families.keys.topk import TopkStats

PHASES = ("calibration", "evaluation", "topk")


@dataclass(frozen=True)
class Shape:
    """What the statistics are sized by: layers, query heads, KV heads, head dimension d."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int


def model_shape(model: Any, layers: int, heads: int) -> Shape:
    """The model's :class:`Shape` from its config (``num_key_value_heads``, ``head_dim``;
    without them every head has its own keys and ``d = hidden_size / heads``)."""
    config = model.config
    kv = getattr(config, "num_key_value_heads", None)
    kv = int(kv) if isinstance(kv, int) and kv > 0 else heads
    d = getattr(config, "head_dim", None)
    if not isinstance(d, int) or d < 1:
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if not isinstance(hidden, int) or hidden % heads:
            raise LowrankError(
                f"model type '{config.model_type}': cannot tell its head dimension (no "
                "head_dim, and hidden_size is not a multiple of the heads)"
            )
        d = hidden // heads
    maths.kv_group(heads, kv)  # refuses heads that do not share KV heads evenly
    return Shape(layers, heads, kv, d)


@dataclass(frozen=True)
class Settings:
    """The numbers-defining settings of a keys run (run.json ``keys``)."""

    fraction: float
    ranks: tuple[int, ...]
    budgets: tuple[float, ...]
    queries: int
    keep_first: bool
    probs_rank: bool
    bootstrap: int
    groups: int
    seed: int


def resolve_ranks(given: tuple[int, ...] | None, d: int) -> tuple[int, ...]:
    """The r grid: the given one (each in 1..d) or d/8, d/4, d/2; d itself (exact top-k,
    the baseline) is always added.

    Raises:
        LowrankError: an r above d.
    """
    from lowrank.core.options import named

    if given is not None and max(given) > d:
        raise LowrankError(f"{named('ranks', max(given))}: the head dimension is d = {d}")
    grid = given if given is not None else tuple(max(1, d // f) for f in (8, 4, 2))
    return tuple(sorted({*grid, d}))


@dataclass
class KeysState:
    """Where a keys run stands: the pass, the next sequence in it, and the statistics.

    Attributes:
        phase: index into :data:`PHASES` (3: every pass done).
        next_index: the next sequence of the current pass.
        done: sequences done over every pass (a checkpoint's ``next_index``).
        seconds: time spent in each pass so far.
    """

    phase: int
    next_index: int
    done: int
    calibration: KeysStats
    evaluation: KeysStats
    topk: TopkStats
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    @classmethod
    def start(cls, shape: Shape, settings: Settings) -> KeysState:
        """Nothing done yet: empty statistics sized by ``shape`` and ``settings``."""
        layers, heads, kv, d, f = (*astuple(shape), settings.fraction)
        calibration = KeysStats.empty(layers, heads, kv, d, 1, f, probs_rank=False)
        evaluation = KeysStats.empty(layers, heads, kv, d, settings.groups, f, settings.probs_rank)
        topk = TopkStats.empty(
            len(BASES), settings.ranks, settings.budgets, layers, heads, settings.queries,
            settings.seed, settings.keep_first,
        )  # fmt: skip
        return cls(0, 0, 0, calibration, evaluation, topk)

    def bases(self, shape: Shape, seed: int) -> list[torch.Tensor]:
        """(len(BASES), L, Hkv, d, d): the calibrated and the evaluated PCA axes of post-RoPE
        keys, and Haar-random orthogonal matrices seeded by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        random = maths.random_orthogonal((shape.layers, shape.kv_heads), shape.head_dim, generator)
        return [
            self.calibration.pca["key_post"].axes(),
            self.evaluation.pca["key_post"].axes(),
            random,
        ]


class StateCodec:
    """How a keys checkpoint stores its :class:`KeysState` (one process: no ranks)."""

    def encode(self, part: KeysState) -> dict[str, np.ndarray]:
        arrays = {"state": np.array([part.phase, part.next_index, part.done])}
        arrays["seconds"] = np.array(part.seconds, dtype=np.float64)
        for prefix, stats in (("cal__", part.calibration), ("eval__", part.evaluation)):
            arrays |= {prefix + k: v for k, v in stats.to_arrays().items()}
        return arrays | {"topk__" + k: v for k, v in part.topk.to_arrays().items()}

    def decode(
        self, path: Path, split: list[dict[str, np.ndarray]], identity: dict[str, Any]
    ) -> list[KeysState]:
        if len(split) != 1:
            raise LowrankError(f"'{path}' was written by {len(split)} ranks; keys runs have one")
        data = split[0]

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.removeprefix(prefix): v for k, v in data.items() if k.startswith(prefix)}

        try:
            phase, next_index, done = (int(x) for x in data["state"])
            state = KeysState(
                phase, next_index, done,
                KeysStats.from_arrays(part("cal__")), KeysStats.from_arrays(part("eval__")),
                TopkStats.from_arrays(part("topk__")),
                [float(x) for x in np.asarray(data["seconds"], dtype=np.float64)],
            )  # fmt: skip
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise LowrankError(f"'{path}' is not a keys checkpoint ({exc})") from None
        if not 0 <= phase <= len(PHASES) or next_index < 0 or len(state.seconds) != 3:
            raise LowrankError(f"'{path}': state {[phase, next_index, done]} is out of range")
        return [state]

    def count(self, part: KeysState) -> int:
        return part.done


CODEC = StateCodec()


def check_state(state: KeysState, shape: Shape, settings: Settings, path: Path) -> None:
    """Refuse a checkpoint whose statistics are not sized for this model and these settings."""
    s = shape
    found = {
        "calibration": tuple(state.calibration.pca["key_post"].comoment.shape),
        "evaluation": tuple(state.evaluation.pca["query_pre"].comoment.shape),
        "top-k": (state.topk.ranks, state.topk.budgets, state.topk.queries, state.topk.seed),
    }
    want = {
        "calibration": (1, s.layers, s.kv_heads, s.head_dim, s.head_dim),
        "evaluation": (settings.groups, s.layers, s.heads, s.head_dim, s.head_dim),
        "top-k": (settings.ranks, settings.budgets, settings.queries, settings.seed),
    }
    for key, value in found.items():
        if value != want[key]:
            raise LowrankError(f"'{path}' holds {key} statistics of another model or settings")


def run_pass(
    loaded: Any,
    sequences: Any,
    start: int,
    batch_size: int,
    device: torch.device,
    consume: Callable[[LayerQKV, list[int]], None],
    after: Callable[[int, int], None],
) -> None:
    """Run sequences ``start..`` through the model in batches, calling ``consume(layer, ids)``
    per layer (``ids``: the sequences' indices) and ``after(first, stop)`` per batch.

    Raises:
        LowrankError: a layer the capture does not see (fewer calls than layers).
    """
    from lowrank.hooks.attention import padded_inputs

    n_seq, n = len(sequences.lengths), sequences.input_ids.shape[1]
    side = sequences.padding_side
    for lo in range(start, n_seq, batch_size):
        hi = min(lo + batch_size, n_seq)
        ids = torch.from_numpy(sequences.input_ids[lo:hi]).to(device)
        lengths = torch.from_numpy(sequences.lengths[lo:hi])
        padded = bool((lengths < n).any())
        inputs = padded_inputs(loaded.model, ids, lengths, side) if padded else {"input_ids": ids}
        sink = partial(_each_layer, consume, list(range(lo, hi)))
        with (
            torch.inference_mode(),
            capture_qkv(loaded.model, sink, lengths if padded else None, side) as seen,
        ):
            loaded.model(**inputs)
            calls = seen()
        if calls != loaded.num_layers:
            raise LowrankError(
                f"captured {calls} attention layers of {loaded.num_layers} in model "
                f"'{loaded.source.name}'"
            )
        after(lo, hi)


def _each_layer(
    consume: Callable[[LayerQKV, list[int]], None], rows: list[int], layer: LayerQKV
) -> None:
    consume(layer, rows)
