"""Run folders and checkpoints damaged at random: every reader answers in one line, exit 2.

Pristine folders are built once per module from a tiny model (two spectrum shards, a
projection run, a compare run, and a checkpoint of an interrupted spectrum run). Each
hypothesis example copies one, damages the copy and runs a command that reads it: `merge`,
`figures`, `summary`, or `spectrum --resume`. A damage comes from one of three families,
and what the command must do depends on the family:

* harmless (reformatted JSON, unknown or unused fields, float32 statistics, an uncompressed
  npz): the folder is still valid and the command succeeds (exit 0);
* harmful (a field some reader uses dropped, retyped or changed; an array dropped, reshaped,
  retyped, or given NaN or a negative count where none may be): refused, exit 2, one line;
* bytes (a cut, a flipped bit, appended noise, an emptied or deleted file): refused in one
  line when the file no longer parses; accepted when it parses to the same content; either,
  but never a traceback, otherwise.

A refused `merge` or `figures` writes nothing, and no command changes the folders it reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from lowrank.cli import main
from tests.helpers import SEQ_LEN

N = str(SEQ_LEN)
RUNNER_ENV = {"LOWRANK_DEBUG": ""}

# --- the pristine folders -------------------------------------------------------------------


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, env=RUNNER_ENV)


def _spectrum_args(model: Path, *extra: str) -> list[str]:
    return ["spectrum", "--model", str(model), "--seq-len", N, "--num-sequences", "4", *extra]


@dataclass(frozen=True)
class Pristine:
    shards: tuple[Path, Path]  # spectrum runs, shards 1/2 and 2/2
    projection: Path
    compare: Path
    checkpoint: Path  # a folder holding only checkpoint.{json,npz}
    resume: tuple[str, ...]  # the command that continues the checkpoint (without --out)


@pytest.fixture(scope="module")
def pristine(roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    from lowrank.families.spectrum import pipeline

    base = tmp_path_factory.mktemp("pristine")
    shards = []
    for i in (1, 2):
        out = base / f"shard-{i}"
        res = _invoke([*_spectrum_args(roberta_dir, "--shard", f"{i}/2"), "--out", str(out)])
        assert res.exit_code == 0, res.output
        shards.append(out)
    model = ["--model", str(roberta_dir), "--seq-len", N, "--num-sequences", "1"]
    projection = base / "projection"
    res = _invoke(
        [
            "project",
            *model,
            "--k",
            "8,16",
            "--method",
            "gaussian,svd",
            "--draws",
            "1",
            "--no-model-effect",
            "--out",
            str(projection),
        ]
    )
    assert res.exit_code == 0, res.output
    compare = base / "compare"
    res = _invoke(["compare", *model, "--budget", "8,16", "--out", str(compare)])
    assert res.exit_code == 0, res.output
    # an interrupted run: Ctrl-C during its third batch leaves a checkpoint of two sequences
    resume = (*_spectrum_args(roberta_dir, "--batch-size", "1", "--checkpoint-every", "1"),)
    checkpoint = base / "checkpoint"
    real = pipeline._spectra
    calls = [0]

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "_spectra", interrupted)
        res = _invoke([*resume, "--out", str(checkpoint)])
    assert res.exit_code == 130, res.output
    assert sorted(p.name for p in checkpoint.iterdir()) == ["checkpoint.json", "checkpoint.npz"]
    return Pristine((shards[0], shards[1]), projection, compare, checkpoint, resume)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _unlist(folder: Path) -> None:
    """Drop run.json's manifest and checkpoint.json's record of its npz (files as an
    earlier lowrank wrote them): the damages below are then judged by what the files hold.
    With them, any change to a file they list is refused
    (test_the_manifest_refuses_every_changed_file, ..._checkpoint_record_...)."""
    for name, key in (("run.json", "manifest"), ("checkpoint.json", "npz")):
        path = folder / name
        if path.is_file():
            meta = json.loads(path.read_text())
            meta.pop(key, None)
            path.write_text(json.dumps(meta, indent=2))


@contextmanager
def damaged(folder: Path, damage: Damage, unlisted: bool = True) -> Iterator[tuple[Path, str]]:
    """A fresh copy of ``folder`` with ``damage`` done to it, and what a reader must do
    (``unlisted``: of a copy without run.json's manifest)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / folder.name
        shutil.copytree(folder, copy)
        if unlisted:
            _unlist(copy)
        expect = damage.apply(copy)
        with contextlib.suppress(InvalidArgument):  # outside a hypothesis test
            event(f"{damage.family} -> {expect}")
        yield copy, expect


def check_answer(res: Result, expect: str, damage: Damage, only_line: bool = True) -> None:
    """Exit 0 (accepted) or 2 with one ``error:`` line and no traceback (refused), as
    ``expect`` (accept, refuse, either) says. ``only_line``: nothing else on stderr (False
    where the command loads a model, and says so, before it reads the damaged file)."""
    assert res.exit_code in (0, 2), (damage, res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, (damage, res.output)
    if res.exit_code == 2:
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (damage, res.stderr)
        assert len(lines) == 1 or not only_line, (damage, res.stderr)
    wanted = {"accept": 0, "refuse": 2}.get(expect)
    assert wanted is None or res.exit_code == wanted, (damage, expect, res.output)


# --- damages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """One change to a copied folder; ``apply`` makes it and returns what a reader must do."""

    family: str  # harmless, harmful, bytes
    what: str
    change: Callable[[Path], str | None]

    def apply(self, folder: Path) -> str:
        verdict = self.change(folder)
        return verdict or {"harmless": "accept", "harmful": "refuse"}[self.family]

    def __repr__(self) -> str:
        return f"<{self.family}: {self.what}>"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
NOT_AN_INT = JSON_VALUES.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))
NOT_A_STR = JSON_VALUES.filter(lambda v: not isinstance(v, str))
NOT_A_DICT = JSON_VALUES.filter(lambda v: not isinstance(v, dict))
KEYS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).map(lambda k: f"x_{k}")


def _edit_json(name: str, edit: Callable[[dict[str, Any]], None], **dump: Any):
    def change(folder: Path) -> None:
        meta = json.loads((folder / name).read_text())
        edit(meta)
        (folder / name).write_text(json.dumps(meta, **dump))

    return change


def _at(meta: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    for key in path[:-1]:
        meta = meta[key]
    return meta, path[-1]


def _drop(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        parent, key = _at(meta, path)
        parent.pop(key, None)

    return edit


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        parent, key = _at(meta, path)
        parent[key] = value

    return edit


def _shift(path: tuple[str, ...], by: int) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        parent, key = _at(meta, path)
        parent[key] = parent[key] + by

    return edit


@st.composite
def json_damage(draw: st.DrawFn, name: str, table: dict[str, Any]) -> Damage:
    """A harmless or harmful change to the JSON file ``name``, from ``table``: its required
    fields, its typed ints, strings and objects, the values that must match the arrays, and
    the fields no reader uses."""
    needs = {"reformat": "", "unknown": "open", "unused": "unused", "drop": "required"}
    needs |= {"retype": "", "shift": "exact"}
    kind = draw(st.sampled_from([k for k, need in needs.items() if not need or table[need]]))
    if kind == "reformat":
        indent = draw(st.sampled_from([None, 0, 1, 4, "\t"]))
        return Damage(
            "harmless",
            f"reformat {indent!r}",
            _edit_json(name, lambda m: None, indent=indent, sort_keys=draw(st.booleans())),
        )
    if kind == "unknown":
        where = draw(st.sampled_from(table["open"]))
        key, value = draw(KEYS), draw(JSON_VALUES)
        return Damage(
            "harmless",
            f"add {where}.{key} = {value!r}",
            _edit_json(name, _set((*where, key), value)),
        )
    if kind == "unused":
        path = draw(st.sampled_from(table["unused"]))
        if draw(st.booleans()):
            return Damage("harmless", f"drop {path}", _edit_json(name, _drop(path)))
        value = draw(JSON_VALUES)
        return Damage("harmless", f"{path} = {value!r}", _edit_json(name, _set(path, value)))
    if kind == "drop":
        path = draw(st.sampled_from(table["required"]))
        return Damage("harmful", f"drop {path}", _edit_json(name, _drop(path)))
    if kind == "retype":
        group = draw(st.sampled_from([g for g in ("int", "str", "dict") if table[g]]))
        path = draw(st.sampled_from(table[group]))
        values = {"int": NOT_AN_INT, "str": NOT_A_STR, "dict": NOT_A_DICT}[group]
        if path in table.get("optional", ()):
            values = values.filter(lambda v: v is not None)
        value = draw(values)
        return Damage("harmful", f"{path} = {value!r}", _edit_json(name, _set(path, value)))
    path = draw(st.sampled_from(table["exact"]))
    by = draw(st.integers(-3, 3).filter(bool))
    return Damage("harmful", f"{path} {by:+d}", _edit_json(name, _shift(path, by)))


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _edit_npz(name: str, edit: Callable[[dict[str, np.ndarray]], None], compressed: bool = True):
    def change(folder: Path) -> None:
        arrays = _load(folder / name)
        edit(arrays)
        (np.savez_compressed if compressed else np.savez)(folder / name, **arrays)

    return change


@st.composite
def npz_damage(draw: st.DrawFn, name: str, table: dict[str, Any]) -> Damage:
    """A harmless or harmful change to the arrays of ``name``, from ``table``: required
    arrays, float arrays that must be finite (and those that must be >= 0), int arrays,
    arrays that may hold NaN, and optional arrays."""
    floats, noisy = table["finite"] + table["nan_ok"], table["finite"] + table["nan_harmless"]
    needs = {"resave": True, "float32": floats, "drop-optional": True, "drop": table["required"]}
    needs |= {"reshape": table["shaped"], "retype": table["finite"] + table["int"]}
    needs |= {"nonfinite": noisy, "negative": table["nonnegative"]}
    kind = draw(st.sampled_from([k for k, need in needs.items() if need]))
    if kind == "resave":
        compressed = draw(st.booleans())
        return Damage(
            "harmless",
            f"resave compressed={compressed}",
            _edit_npz(name, lambda a: None, compressed),
        )
    if kind == "float32":
        key = draw(st.sampled_from(floats))
        to32 = _edit_npz(name, lambda a: a.update({key: a[key].astype(np.float32)}))
        return Damage("harmless", f"{key} as float32", to32)
    if kind == "drop-optional" and table["optional"]:
        key = draw(st.sampled_from(table["optional"]))
        return Damage("harmless", f"drop {key}", _edit_npz(name, lambda a: a.pop(key)))
    if kind in ("drop", "drop-optional"):
        key = draw(st.sampled_from(table["required"]))
        return Damage("harmful", f"drop {key}", _edit_npz(name, lambda a: a.pop(key)))
    if kind == "reshape":
        key = draw(st.sampled_from(table["shaped"]))
        grow = draw(st.booleans())

        def reshape(a: dict[str, np.ndarray]) -> None:
            x = a[key]
            a[key] = x[..., None] if grow or x.shape[-1] < 2 else x[..., :-1]

        return Damage("harmful", f"reshape {key} grow={grow}", _edit_npz(name, reshape))
    if kind == "retype":
        key = draw(st.sampled_from(table["finite"] + table["int"]))
        to = draw(st.sampled_from(["U3", "c16"] + (["i8"] if key in table["finite"] else ["f8"])))
        return Damage(
            "harmful",
            f"{key} as {to}",
            _edit_npz(name, lambda a: a.update({key: a[key].astype(to)})),
        )
    if kind == "nonfinite":
        key = draw(st.sampled_from(noisy))
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        where = draw(st.floats(0, 1, exclude_max=True))

        def poke(a: dict[str, np.ndarray]) -> None:
            x = a[key].astype(np.float64)
            x.reshape(-1)[int(where * x.size)] = value
            a[key] = x

        if key in table["nan_harmless"]:
            return Damage("harmless", f"{key}[{where:.2f}] = {value}", _edit_npz(name, poke))
        return Damage("harmful", f"{key}[{where:.2f}] = {value}", _edit_npz(name, poke))
    key = draw(st.sampled_from(table["nonnegative"]))
    where = draw(st.floats(0, 1, exclude_max=True))

    def negative(a: dict[str, np.ndarray]) -> None:
        x = a[key].copy()
        x.reshape(-1)[int(where * x.size)] = -1
        a[key] = x

    return Damage("harmful", f"{key}[{where:.2f}] = -1", _edit_npz(name, negative))


def _same_json(data: bytes, original: bytes) -> bool | None:
    """True/False: the damaged bytes parse as the same/another JSON value; None: not JSON."""
    try:
        return json.loads(data.decode("utf-8")) == json.loads(original)
    except (ValueError, RecursionError):
        return None


def _same_npz(path: Path, original: dict[str, np.ndarray]) -> bool | None:
    try:
        arrays = _load(path)
    except Exception:
        return None  # numpy cannot read it: neither can lowrank
    return arrays.keys() == original.keys() and all(
        arrays[k].dtype == original[k].dtype and np.array_equal(arrays[k], original[k])
        for k in arrays
    )


@st.composite
def bytes_damage(draw: st.DrawFn, names: tuple[str, ...]) -> Damage:
    """A cut, a flipped bit, appended noise, an emptied or a deleted file among ``names``."""
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["cut", "flip", "append", "empty", "delete"]))
    where = draw(st.floats(0, 1, exclude_max=True))
    bit = draw(st.integers(0, 7))
    noise = draw(st.binary(min_size=1, max_size=32))

    def change(folder: Path) -> str:
        path = folder / name
        data = path.read_bytes()
        original = _load(path) if name.endswith(".npz") else None
        if kind == "delete":
            path.unlink()
            return "refuse"
        at = int(where * len(data))
        new = {
            "cut": data[:at],
            "flip": data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :],
            "append": data + noise,
            "empty": b"",
        }[kind]
        path.write_bytes(new)
        same = _same_npz(path, original) if original is not None else _same_json(new, data)
        return {True: "accept", False: "either", None: "refuse"}[same]

    return Damage("bytes", f"{kind} {name} at {where:.3f} (bit {bit}, noise {noise!r})", change)


# --- what each kind of folder holds, and which of it readers use -----------------------------

SUMMARIES = ("c_at_index", "rank90", "rank99", "effective_rank", "stable_rank")
STATS_FLOATS = [
    f"{m}_{s}" for m in ("cumulative", "singular_values") for s in ("mean", "std", "m2")
]
STATS_FLOATS += [f"{s}_mean" for s in SUMMARIES] + ["summaries_m2"]

SPECTRUM_FIELDS = {
    "required": [
        ("format",),
        ("model",),
        ("model", "name"),
        ("corpus",),
        ("corpus", "dataset"),
        ("num_layers",),
        ("num_heads",),
        ("seq_len",),
    ],
    "int": [
        ("num_layers",),
        ("num_heads",),
        ("seq_len",),
        ("num_sequences",),
        ("heatmap_index",),
        ("format_version",),
    ],
    "str": [("model", "name"), ("corpus", "dataset")],
    "dict": [("model",), ("corpus",), ("identity",), ("sequence_policy",), ("shard",)],
    "optional": [("num_sequences",), ("heatmap_index",), ("format_version",), ("shard",)],
    "exact": [
        ("num_layers",),
        ("num_heads",),
        ("seq_len",),
        ("num_sequences",),
        ("heatmap_index",),
        ("format_version",),
    ],
    "open": [(), ("model",), ("corpus",)],
    "unused": [
        ("created",),
        ("elapsed_seconds",),
        ("device",),
        ("dtype",),
        ("batch_size",),
        ("seed",),
        ("config",),
        ("backend",),
        ("resumed_from",),
        ("model", "model_type"),
        ("corpus", "kind"),
    ],
}
SPECTRUM_ARRAYS = {
    "required": [*STATS_FLOATS, "num_sequences", "heatmap_index", "input_ids"],
    "optional": [f"{s}_std" for s in SUMMARIES],
    "shaped": [*STATS_FLOATS, "input_ids"],
    "finite": STATS_FLOATS,
    "nan_ok": [],
    "nan_harmless": [],
    "int": ["input_ids", "num_sequences", "heatmap_index"],
    "nonnegative": [k for k in STATS_FLOATS if not k.endswith("_mean")] + ["input_ids"],
}
_STAT_KEYS = ["theorem1_gaussian[paper]_mean", "theorem2_svd_p95", "theorem1_svd_cosine_median"]
PROJECTION_FIELDS = {
    "required": [
        ("model",),
        ("model", "name"),
        ("corpus", "dataset"),
        ("num_layers",),
        ("num_heads",),
        ("seq_len",),
        ("num_sequences",),
        ("heatmap_k",),
    ],
    "int": [("num_layers",), ("num_heads",), ("seq_len",), ("num_sequences",), ("heatmap_k",)],
    "str": [("model", "name"), ("corpus", "dataset")],
    "dict": [("model",), ("corpus",)],
    "exact": [("num_layers",), ("num_heads",), ("num_sequences",), ("heatmap_k",)],
    "open": [(), ("model",), ("corpus",)],
    "unused": [
        ("created",),
        ("elapsed_seconds",),
        ("estimators",),
        ("intervals",),
        ("sharing",),
        ("config",),
        ("device",),
    ],
}
PROJECTION_ARRAYS = {
    "required": ["ks", "methods"],
    "optional": ["input_ids", "metrics", "estimators"],
    "shaped": ["ks", *_STAT_KEYS],
    "finite": [],
    "nan_ok": _STAT_KEYS,
    "nan_harmless": _STAT_KEYS,
    "int": ["ks"],
    "nonnegative": ["ks"],
}
COMPARE_FIELDS = {
    "required": [
        ("model", "name"),
        ("corpus", "dataset"),
        ("num_layers",),
        ("num_heads",),
        ("seq_len",),
        ("num_sequences",),
        ("compare", "seed"),
        ("focus_budget",),
        ("winner_metric",),
    ],
    "int": [("num_layers",), ("num_heads",), ("seq_len",), ("focus_budget",), ("compare", "seed")],
    "str": [("winner_metric",), ("model", "name")],
    "dict": [("compare",), ("corpus",)],
    "exact": [("num_layers",), ("num_heads",), ("focus_budget",), ("format_version",)],
    "open": [(), ("model",), ("compare",)],
    "unused": [
        ("created",),
        ("budget_accounting",),
        ("parity_tolerance",),
        ("findings",),
        ("not_applicable",),
        ("config",),
    ],
}
_HEAD = ["entropy_mean", "sink_mass_mean", "effective_rank_mean", "c_at_budget_mean"]
COMPARE_ARRAYS = {
    "required": [
        "families",
        "budgets",
        "winner",
        "winner_from_q_k",
        "output_error_mean",
        "probs_error_mean",
        *_HEAD,
    ],
    "optional": ["output_error_m2", "attended_mean", "coverage_mean", "input_ids"],
    "shaped": ["budgets", "winner", "output_error_mean", *_HEAD],
    "finite": _HEAD,
    "nan_ok": ["output_error_mean", "probs_error_std"],
    "nan_harmless": [],
    "int": ["winner", "budgets"],
    "nonnegative": ["budgets", "entropy_std"],
}
CHECKPOINT_FIELDS = {
    "required": [("identity",), ("next_index",)],
    "int": [("next_index",), ("total",), ("world_size",)],
    "str": [],
    "dict": [("identity",)],
    "optional": [("total",), ("world_size",)],
    "exact": [],
    "open": [()],
    "unused": [("command",)],
}
CHECKPOINT_ARRAYS = SPECTRUM_ARRAYS | {
    "required": [*STATS_FLOATS, "num_sequences", "heatmap_index"],
    "shaped": STATS_FLOATS,
    "int": ["num_sequences", "heatmap_index", "next_index"],
    "nonnegative": [k for k in STATS_FLOATS if not k.endswith("_mean")] + ["next_index"],
}


def damages(
    json_name: str, json_table: dict[str, Any], npz_name: str, npz_table: dict[str, Any]
) -> st.SearchStrategy[Damage]:
    return st.one_of(
        json_damage(json_name, json_table),
        npz_damage(npz_name, npz_table),
        bytes_damage((json_name, npz_name)),
    )


def harmful(strategy: st.SearchStrategy[Damage]) -> st.SearchStrategy[Damage]:
    return strategy.filter(lambda d: d.family == "harmful")


SPECTRUM_DAMAGE = damages("run.json", SPECTRUM_FIELDS, "spectrum.npz", SPECTRUM_ARRAYS)
PROJECTION_DAMAGE = damages("run.json", PROJECTION_FIELDS, "projection.npz", PROJECTION_ARRAYS)
COMPARE_DAMAGE = damages("run.json", COMPARE_FIELDS, "compare.npz", COMPARE_ARRAYS)
CHECKPOINT_DAMAGE = damages(
    "checkpoint.json", CHECKPOINT_FIELDS, "checkpoint.npz", CHECKPOINT_ARRAYS
)

FAST = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


# --- the properties --------------------------------------------------------------------------


@FAST
@given(damage=SPECTRUM_DAMAGE)
def test_merge_answers_every_damaged_part(pristine: Pristine, damage: Damage) -> None:
    other = digest(pristine.shards[1])
    with damaged(pristine.shards[0], damage) as (part, expect), tempfile.TemporaryDirectory() as t:
        out = Path(t) / "merged"
        res = _invoke(["merge", str(part), str(pristine.shards[1]), "--out", str(out)])
        check_answer(res, expect, damage)
        if res.exit_code == 2:
            # the damaged part is named: by its place, or by its path where two parts differ
            assert "part 1" in res.stderr or f"'{part}'" in res.stderr, res.stderr
            assert not out.exists()  # and nothing was written
        else:
            assert (out / "run.json").is_file()
    assert digest(pristine.shards[1]) == other


@FAST
@given(damage=SPECTRUM_DAMAGE)
def test_summary_answers_every_damaged_spectrum_run(pristine: Pristine, damage: Damage) -> None:
    with damaged(pristine.shards[0], damage) as (folder, expect):
        before = digest(folder)
        res = _invoke(["summary", str(folder)])
        check_answer(res, expect, damage)
        assert digest(folder) == before


def _figures(pristine: Pristine, damage: Damage, draw: bool) -> None:
    with (
        damaged(pristine.shards[0], damage) as (folder, expect),
        tempfile.TemporaryDirectory() as t,
    ):
        if expect != "refuse" and not draw:
            return  # drawing takes seconds: accepted folders are drawn by the other tests
        res = _invoke(["figures", str(folder), "--out", str(Path(t) / "figs")])
        check_answer(res, expect, damage)
        assert (Path(t) / "figs").exists() == (res.exit_code == 0)  # refused: nothing written


@settings(FAST, max_examples=12)
@given(damage=harmful(SPECTRUM_DAMAGE) | bytes_damage(("run.json", "spectrum.npz")))
def test_figures_refuse_every_damaged_run_and_write_nothing(
    pristine: Pristine, damage: Damage
) -> None:
    _figures(pristine, damage, draw=False)


def test_figures_draw_a_folder_whose_damage_is_harmless(pristine: Pristine) -> None:
    def harmless(folder: Path) -> None:
        _edit_json("run.json", _set(("x_note",), [1, {"a": None}]), indent=None)(folder)
        _edit_json("run.json", _drop(("created",)))(folder)
        mean = "cumulative_mean"
        to32 = _edit_npz("spectrum.npz", lambda a: a.update({mean: a[mean].astype(np.float32)}))
        to32(folder)
        _edit_npz("spectrum.npz", lambda a: None, compressed=False)(folder)

    damage = Damage("harmless", "float32, uncompressed, unknown and dropped fields", harmless)
    with (
        damaged(pristine.shards[0], damage) as (folder, expect),
        tempfile.TemporaryDirectory() as t,
    ):
        res = _invoke(["figures", str(folder), "--out", str(Path(t) / "figs")])
        check_answer(res, expect, damage)
        assert len(list((Path(t) / "figs").glob("*.pdf"))) >= 4


@pytest.mark.slow
@settings(FAST, max_examples=40)
@given(damage=SPECTRUM_DAMAGE)
def test_figures_answer_every_damaged_run(pristine: Pristine, damage: Damage) -> None:
    _figures(pristine, damage, draw=True)


@settings(FAST, max_examples=25)
@given(damage=PROJECTION_DAMAGE)
def test_summary_answers_every_damaged_projection_run(pristine: Pristine, damage: Damage) -> None:
    with damaged(pristine.projection, damage) as (folder, expect):
        check_answer(_invoke(["summary", str(folder)]), expect, damage)


@settings(FAST, max_examples=25)
@given(damage=COMPARE_DAMAGE)
def test_summary_answers_every_damaged_compare_run(pristine: Pristine, damage: Damage) -> None:
    with damaged(pristine.compare, damage) as (folder, expect):
        check_answer(_invoke(["summary", str(folder)]), expect, damage)


@settings(FAST, max_examples=15)
@given(damage=CHECKPOINT_DAMAGE)
def test_resume_answers_every_damaged_checkpoint(pristine: Pristine, damage: Damage) -> None:
    _resume(pristine, damage)


def _resume(pristine: Pristine, damage: Damage) -> None:
    with damaged(pristine.checkpoint, damage) as (folder, expect):
        before = digest(folder)
        res = _invoke([*pristine.resume, "--out", str(folder), "--resume"])
        # the model is loaded (and says so) before the checkpoint is read
        check_answer(res, expect, damage, only_line=False)
        if res.exit_code == 2:
            assert digest(folder) == before  # the damaged checkpoint is left to look at
        else:
            assert (folder / "run.json").is_file() and not (folder / "checkpoint.json").exists()


@pytest.mark.slow
@settings(FAST, max_examples=60)
@given(damage=CHECKPOINT_DAMAGE)
def test_resume_answers_every_damaged_checkpoint_more(pristine: Pristine, damage: Damage) -> None:
    _resume(pristine, damage)


@settings(FAST, max_examples=20)
@given(damage=CHECKPOINT_DAMAGE)
def test_the_checkpoint_record_refuses_every_changed_npz(
    pristine: Pristine, damage: Damage
) -> None:
    """checkpoint.json records its npz's size and sha256: an npz whose bytes changed is
    refused on resume, whether or not its arrays would pass the codec's checks (a keys
    checkpoint with an edited count or state resumed to wrong numbers)."""
    original = (pristine.checkpoint / "checkpoint.npz").read_bytes()
    with damaged(pristine.checkpoint, damage, unlisted=False) as (folder, _):
        npz = folder / "checkpoint.npz"
        if not npz.is_file() or npz.read_bytes() == original:
            return  # the damage was to the json, or none: judged by the test above
        res = _invoke([*pristine.resume, "--out", str(folder), "--resume"])
        check_answer(res, "refuse", damage, only_line=False)
        assert "is not the file its checkpoint.json describes" in res.stderr, res.stderr


# --- the manifest: a folder mixing two runs, or a file changed after the run ---------------


@settings(FAST, max_examples=20)
@given(damage=npz_damage("spectrum.npz", SPECTRUM_ARRAYS) | bytes_damage(("spectrum.npz",)))
def test_the_manifest_refuses_every_changed_file(pristine: Pristine, damage: Damage) -> None:
    """With run.json's manifest in place, an npz whose bytes changed is refused, whether or
    not what it holds would pass the array checks (issue 28, item 2)."""
    original = (pristine.shards[0] / "spectrum.npz").read_bytes()
    with damaged(pristine.shards[0], damage, unlisted=False) as (folder, _):
        res = _invoke(["summary", str(folder)])
        npz = folder / "spectrum.npz"
        if npz.is_file() and npz.read_bytes() == original:
            assert res.exit_code == 0, res.output
            return
        check_answer(res, "refuse", damage)
        if npz.is_file():
            assert "is not the file its run.json lists" in res.stderr, res.stderr


def test_summary_refuses_a_folder_that_mixes_two_runs(pristine: Pristine, tmp_path: Path) -> None:
    """The old run.json over the other run's spectrum.npz (what a kill between two renames
    left, before runs were committed whole) is refused, not summarised (item 2)."""
    mixed = tmp_path / "mixed"
    shutil.copytree(pristine.shards[0], mixed)
    shutil.copy(pristine.shards[1] / "spectrum.npz", mixed / "spectrum.npz")
    res = _invoke(["summary", str(mixed)])
    check_answer(res, "refuse", Damage("bytes", "another run's npz", lambda f: None))
    assert f"'{mixed / 'spectrum.npz'}' is not the file its run.json lists" in res.stderr
    assert "mixes files of two runs" in res.stderr and "--overwrite" in res.stderr


def _relist(folder: Path, name: str) -> None:
    """Make run.json's manifest list ``name`` as it now is (a forged, consistent folder)."""
    from lowrank.runs.manifest import file_record

    meta = json.loads((folder / "run.json").read_text())
    meta["manifest"]["files"][name] = file_record(folder / name)
    (folder / "run.json").write_text(json.dumps(meta))


def _bomb(path: Path, name: str, count: int, descr: str = "<f8") -> None:
    """Add to the npz ``path`` a member ``name`` whose header declares ``count`` 8-byte
    zeros (8 GB for 10**9) and whose data holds 16 of them: what the header says is all a
    reader may look at before it refuses."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": (count,)}
    )
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}.npy", header.getvalue() + bytes(128))


@pytest.mark.parametrize(
    ("name", "count", "fragment"),
    [
        ("junk", 10**9, "holds an array 'junk' of 8.0 GB that its run.json does not describe"),
        ("input_ids", None, "input_ids has shape (1000000000,), run.json says (2, 48)"),
    ],
)
def test_an_npz_is_judged_by_its_headers_before_anything_is_inflated(
    pristine: Pristine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    count: int | None,
    fragment: str,
) -> None:
    """An extra member declaring 8 GB, or a named one declaring the wrong shape, is refused
    from its header: no large member is read (item 7; summary used to take 46 s and 8 GB)."""
    from lowrank.runs import npz as npz_module

    folder = tmp_path / "run"
    shutil.copytree(pristine.shards[0], folder)
    path = folder / "spectrum.npz"
    if count is None:  # input_ids declared far larger than run.json says
        arrays = _load(path)
        del arrays["input_ids"]
        np.savez_compressed(path, **arrays)
        _bomb(path, "input_ids", 10**9, "<i8")
    else:
        _bomb(path, name, count)
    _relist(folder, "spectrum.npz")
    read: list[str] = []
    real = npz_module._load

    def spy(archive: zipfile.ZipFile, member: Any) -> np.ndarray:
        read.append(member.info.filename)
        return real(archive, member)

    monkeypatch.setattr(npz_module, "_load", spy)
    res = _invoke(["summary", str(folder)])
    check_answer(res, "refuse", Damage("bytes", f"{name} bomb", lambda f: None))
    assert fragment in res.stderr, res.stderr
    assert f"{name}.npy" not in read  # refused from the header alone
