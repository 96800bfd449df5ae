"""Run folders: round trip, validation of damaged files, output-folder safety.

run.json against the schema of its kind (each wrong field named in one line), newer format
versions refused, arrays checked against run.json, checkpoints validated, writes whole.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowrank.errors import LowrankError
from lowrank.families.spectrum.format import FORMAT as SPECTRUM_FORMAT
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import CODEC, SpectrumStats, stats_arrays
from lowrank.registry import families, family_of_format
from lowrank.runs.arrays import ArraySpec, check_arrays
from lowrank.runs.checkpoints import read_checkpoint, write_checkpoint
from lowrank.runs.schema import validate_meta
from lowrank.runs.writing import check_out_dir, csv_bytes, write_run

FORMAT, FORMAT_VERSION = SPECTRUM_FORMAT.name, SPECTRUM_FORMAT.version


def _run(tmp_path, name="run"):
    rng = np.random.default_rng(0)
    s = -np.sort(-rng.random(size=(5, 2, 3, 8)), axis=-1)
    stats = SpectrumStats.empty(2, 3, 8, 2).add(s)
    meta = {
        "format": FORMAT,
        "identity": {"a": 1},
        "num_layers": 2,
        "num_heads": 3,
        "seq_len": 8,
        "model": {"name": "m"},
        "corpus": {"dataset": "d"},
    }
    arrays = stats_arrays(stats) | {"input_ids": np.zeros((5, 8), dtype=np.int64)}
    out = tmp_path / name
    write_run(out, meta, arrays, npz="spectrum.npz")
    return out, stats


def test_round_trip_keeps_every_number(tmp_path):
    out, stats = _run(tmp_path)
    run = SpectrumResult.read(out)
    assert run.stats.count == 5 and run.stats.index == 2
    np.testing.assert_array_equal(run.stats.cumulative.mean, stats.cumulative.mean)
    np.testing.assert_array_equal(run.stats.cumulative.m2, stats.cumulative.m2)
    np.testing.assert_array_equal(run.stats.summaries.mean, stats.summaries.mean)
    with np.load(out / "spectrum.npz") as npz:
        np.testing.assert_allclose(npz["cumulative_std"], stats.cumulative.std())
        np.testing.assert_allclose(npz["c_at_index_mean"], stats.cumulative.mean[..., 1])
    assert not list(out.glob(".*tmp"))


def test_damaged_run_folders_are_named_in_one_line(tmp_path):
    out, _ = _run(tmp_path)
    data = (out / "spectrum.npz").read_bytes()
    (out / "spectrum.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LowrankError, match=r"is not the file its run\.json lists"):
        SpectrumResult.read(out)
    meta = _meta(out)
    del meta["manifest"]  # as an earlier lowrank wrote it: the npz itself is judged
    _rewrite(out, meta)
    with pytest.raises(LowrankError, match="corrupted or truncated"):
        SpectrumResult.read(out)
    out2, _ = _run(tmp_path, "run2")
    text = (out2 / "run.json").read_text()
    (out2 / "run.json").write_text(text[:20])
    with pytest.raises(LowrankError, match="not valid JSON"):
        SpectrumResult.read(out2)
    with pytest.raises(LowrankError, match="does not exist"):
        SpectrumResult.read(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LowrankError, match=r"no run\.json"):
        SpectrumResult.read(tmp_path / "plain")
    out3, _ = _run(tmp_path, "run3")
    meta = json.loads((out3 / "run.json").read_text())
    meta["seq_len"] = 9
    (out3 / "run.json").write_text(json.dumps(meta))
    with pytest.raises(LowrankError, match="shape"):
        SpectrumResult.read(out3)


def test_check_out_dir_protects_other_runs_and_foreign_files(tmp_path):
    out, _ = _run(tmp_path)
    check_out_dir(out, {"a": 1}, overwrite=False)  # same identity: fine
    with pytest.raises(LowrankError, match="holds another run"):
        check_out_dir(out, {"a": 2}, overwrite=False)
    check_out_dir(out, {"a": 2}, overwrite=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(LowrankError, match="not a lowrank run"):
            check_out_dir(foreign, {"a": 1}, overwrite=overwrite)
    check_out_dir(tmp_path / "new", {"a": 1}, overwrite=False)


# --- run.json: the schema of each run kind, and format versions ---------------------------


def _meta(out):
    return json.loads((out / "run.json").read_text())


def _rewrite(out, meta):
    (out / "run.json").write_text(json.dumps(meta))


def test_a_newer_format_version_is_refused_naming_who_wrote_it(tmp_path):
    import lowrank

    out, _ = _run(tmp_path)
    _rewrite(out, _meta(out) | {"format_version": 2, "versions": {"lowrank": "9.9.0"}})
    with pytest.raises(LowrankError) as info:
        SpectrumResult.read(out)
    assert str(info.value) == (
        f"'{out / 'run.json'}' was written by lowrank 9.9.0 (format version 2); this lowrank "
        f"{lowrank.__version__} reads format version <=1: upgrade lowrank"
    )
    _rewrite(out, _meta(out) | {"format_version": FORMAT_VERSION})
    assert SpectrumResult.read(out).stats.count == 5  # the version this lowrank writes is read


def test_every_family_declares_one_format_its_result_reads_and_writes():
    names = [f.format for f in families()]
    assert len(set(names)) == len(names)  # one family per format
    for family in families():
        result = family.load_result()
        assert result.FORMAT.name == family.format  # the result type reads its family's runs
        assert family_of_format(family.format) is family
        assert result.FORMAT.version >= 1 and result.FORMAT.npz.endswith(".npz")


def _validate(meta, fmt, path):
    """Validate ``meta`` against the schema and version of the family of format ``fmt``."""
    found = family_of_format(fmt).load_result().FORMAT
    validate_meta(meta, found.schema, found.version, path)


def _newest(fmt):
    return family_of_format(fmt).load_result().FORMAT.version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_layers": "six"}, "num_layers must be an integer, got 'six'"),
        ({"num_heads": True}, "num_heads must be an integer, got True"),
        ({"num_heads": 3.0}, "num_heads must be an integer, got 3.0"),
        ({"seq_len": None}, "seq_len must be an integer, got None"),
        ({"model": {"kind": "local"}}, "model.name is missing"),
        ({"model": "m"}, "model must be an object, got 'm'"),
        ({"corpus": {"dataset": 7}}, "corpus.dataset must be a string, got 7"),
        ({"heatmap_index": 0}, "heatmap_index must be >= 1, got 0"),
        ({"heatmap_index": 9}, "heatmap_index 9 is above seq_len 8"),
        ({"shard": {"index": 3, "count": 2}}, "shard: shard index 3 is above its count 2"),
        ({"shard": "1/2"}, "shard must be an object, got '1/2'"),
        ({"identity": [1]}, "identity must be an object, got [1]"),
        ({"analysis_seconds": float("nan")}, "analysis_seconds must be >= 0"),
        ({"format_version": "1"}, "format_version must be an integer, got '1'"),
    ],
)
def test_a_wrong_field_is_named_in_one_line(tmp_path, change, message):
    out, _ = _run(tmp_path)
    _rewrite(out, _meta(out) | change)
    with pytest.raises(LowrankError) as info:
        SpectrumResult.read(out)
    assert str(info.value).startswith(f"'{out / 'run.json'}': ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fields_no_reader_uses_are_kept_and_not_checked(tmp_path):
    out, _ = _run(tmp_path)
    extra = {"created": 5, "notes": [1, "two"], "model": {"name": "m", "extra": {"x": None}}}
    _rewrite(out, _meta(out) | extra)
    assert SpectrumResult.read(out).config["notes"] == [1, "two"]


def test_a_run_of_another_kind_says_which_kind_it_is(tmp_path):
    out, _ = _run(tmp_path)
    _rewrite(out, _meta(out) | {"format": "lowrank-compare"})
    with pytest.raises(LowrankError, match="is a lowrank-compare run, not a lowrank-spectrum run"):
        SpectrumResult.read(out)


_ANALYSIS = {
    "model": {"name": "m"},
    "corpus": {"dataset": "d"},
    "num_layers": 2,
    "num_heads": 3,
    "seq_len": 8,
}
MINIMAL = {
    "lowrank-projection": _ANALYSIS | {"num_sequences": 2, "heatmap_k": 4},
    "lowrank-compare": _ANALYSIS
    | {"num_sequences": 2, "compare": {"seed": 0}, "focus_budget": 4, "winner_metric": "x"},
    "lowrank-verify": _ANALYSIS | {"eps": [0.5], "k": [4]},
    "lowrank-efficiency": {
        "hardware": {"processor": "x86_64", "torch_threads": 2},
        "stack": {"layers": 2, "hidden": 64},
        "n": [64],
        "k": [8],
        "dtype": "float32",
    },
    "lowrank-scaling": {k: v for k, v in _ANALYSIS.items() if k != "seq_len"} | {"ns": [8, 16]},
}


@pytest.mark.parametrize("fmt", sorted(MINIMAL))
def test_each_run_kind_needs_the_fields_its_readers_use(tmp_path, fmt):
    meta = {"format": fmt} | MINIMAL[fmt]
    _validate(meta, fmt, tmp_path / "run.json")  # the fields readers use are enough
    for key in MINIMAL[fmt]:
        with pytest.raises(LowrankError, match=f"{key} is missing"):
            _validate({k: v for k, v in meta.items() if k != key}, fmt, tmp_path)
    with pytest.raises(LowrankError, match="upgrade lowrank"):
        _validate(meta | {"format_version": _newest(fmt) + 1}, fmt, tmp_path)


def test_efficiency_hardware_must_name_a_gpu_or_a_processor(tmp_path):
    meta = {"format": "lowrank-efficiency"} | MINIMAL["lowrank-efficiency"]
    _validate(meta | {"hardware": {"gpu": "H100"}}, "lowrank-efficiency", tmp_path)
    with pytest.raises(LowrankError, match="neither a gpu nor a processor"):
        _validate(meta | {"hardware": {"processor": "x"}}, "lowrank-efficiency", tmp_path)


# --- arrays: dtype, shape and finiteness against run.json ----------------------------------


def _arrays(out):
    with np.load(out / "spectrum.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _rewrite_npz(out, arrays):
    """Edit the arrays of a folder without a manifest (as lowrank wrote folders before it
    had one): what the array checks alone make of it. With the manifest in place, any
    edit is refused first (test_an_edited_file_is_refused_by_the_manifest)."""
    np.savez_compressed(out / "spectrum.npz", **arrays)
    meta = _meta(out)
    meta.pop("manifest", None)
    _rewrite(out, meta)


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("cumulative_mean", lambda a: np.where(a > 0.5, np.nan, a), "holds NaN or infinite"),
        ("singular_values_m2", lambda a: -a - 1, "below its minimum 0"),
        ("cumulative_mean", lambda a: a.astype(np.int64), "must hold floating-point numbers"),
        ("input_ids", lambda a: a.astype(np.float64), "must hold integers"),
        ("input_ids", lambda a: a[:3], "has shape (3, 8), run.json says (5, 8)"),
        ("summaries_m2", lambda a: a[..., :4], "has shape (2, 3, 4), run.json says (2, 3, 5)"),
        ("num_sequences", lambda a: np.array(6), "holds 6, run.json says 5"),
        ("num_sequences", lambda a: np.array([5]), "has shape (1,), run.json says ()"),
        ("heatmap_index", lambda a: np.array(9), "above its maximum 8"),
        ("rank90_mean", lambda a: a.astype(complex), "must hold floating-point numbers"),
    ],
)
def test_a_damaged_array_is_named_in_one_line(tmp_path, name, change, message):
    out, _ = _run(tmp_path)
    _rewrite(out, _meta(out) | {"num_sequences": 5})
    arrays = _arrays(out)
    arrays[name] = change(arrays[name])
    _rewrite_npz(out, arrays)
    with pytest.raises(LowrankError) as info:
        SpectrumResult.read(out)
    assert str(info.value).startswith(f"'{out / 'spectrum.npz'}': {name} ")
    assert message in str(info.value)


def test_a_missing_array_is_named(tmp_path):
    out, _ = _run(tmp_path)
    arrays = _arrays(out)
    del arrays["cumulative_m2"], arrays["input_ids"]
    _rewrite_npz(out, arrays)
    with pytest.raises(LowrankError, match="lacks arrays cumulative_m2, input_ids"):
        SpectrumResult.read(out)


def test_float32_statistics_and_a_boolean_mask_are_still_a_valid_run(tmp_path):
    out, stats = _run(tmp_path)
    arrays = _arrays(out)
    for name in ("cumulative_mean", "cumulative_m2", "rank90_mean"):
        arrays[name] = arrays[name].astype(np.float32)
    arrays["attention_mask"] = np.ones((5, 8), dtype=bool)
    _rewrite_npz(out, arrays)
    run = SpectrumResult.read(out)
    assert run.stats.cumulative.mean.dtype == np.float64
    np.testing.assert_allclose(run.stats.cumulative.mean, stats.cumulative.mean, rtol=1e-6)
    assert run.attention_mask is not None and run.attention_mask.all()


def test_check_arrays_leaves_nan_where_it_is_legitimate(tmp_path):
    spec = {
        "rate": ArraySpec("float", (2, None), finite=False),
        "count": ArraySpec("int", (2,), minimum=0),
        "names": ArraySpec("str", (2,), equals=["a", "b"]),
        "extra": ArraySpec("float", (), required=False),
    }
    good = {
        "rate": np.array([[np.nan, 1.0, np.inf]] * 2),
        "count": np.array([0, 3]),
        "names": np.array(["a", "b"]),
    }
    check_arrays(tmp_path, good, spec)
    with pytest.raises(LowrankError, match=r"names holds \['a', 'c'\], run.json says"):
        check_arrays(tmp_path, good | {"names": np.array(["a", "c"])}, spec)
    with pytest.raises(LowrankError, match=r"count holds -1, below its minimum 0"):
        check_arrays(tmp_path, good | {"count": np.array([-1, 3])}, spec)
    with pytest.raises(LowrankError, match=r"rate has shape \(3, 3\), run.json says \(2, any\)"):
        check_arrays(tmp_path, good | {"rate": np.zeros((3, 3))}, spec)
    with pytest.raises(LowrankError, match="extra holds NaN"):
        check_arrays(tmp_path, good | {"extra": np.array(np.nan)}, spec)


# --- checkpoints ---------------------------------------------------------------------------


def _checkpoint(tmp_path, counts=(3,), next_index=None, total=9):
    rng = np.random.default_rng(1)
    parts = []
    for count in counts:
        s = -np.sort(-rng.random(size=(count, 2, 3, 8)), axis=-1)
        parts.append(SpectrumStats.empty(2, 3, 8, 2).add(s))
    identity = {"seq_len": 8}
    done = sum(counts) if next_index is None else next_index
    write_checkpoint(tmp_path, identity, parts, done, total, "lowrank spectrum", CODEC)
    return identity


def _edit_checkpoint(tmp_path, edit):
    """Edit the npz's arrays and drop checkpoint.json's record of the npz (as an earlier
    lowrank wrote it), so that the codec's checks are what answers; with the record, any
    edit is refused (test_corruption.test_the_checkpoint_record_refuses_every_changed_npz)."""
    with np.load(tmp_path / "checkpoint.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    info = json.loads((tmp_path / "checkpoint.json").read_text())
    info.pop("npz", None)
    (tmp_path / "checkpoint.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update(num_sequences=np.array(-2)), "num_sequences holds -2, below"),
        (lambda a: a.update(num_sequences=np.array(7)), "counts 7 sequences, more than its 3"),
        (lambda a: a.update(next_index=np.array(10)), "next_index holds 10, above its maximum 9"),
        (lambda a: a.update(next_index=np.array(-1)), "next_index holds -1, below"),
        (lambda a: a.update(world_size=np.array(0)), "world_size holds 0, below"),
        (lambda a: a.update(world_size=np.array(2)), "lacks a [layers, heads, n] cumulative_mean"),
        (lambda a: a.update(cumulative_mean=a["cumulative_mean"][:, :, :4]), "has n = 4"),
        (lambda a: a.update(cumulative_m2=a["cumulative_m2"][:1]), "cumulative_m2 has shape"),
        (lambda a: a["singular_values_mean"].fill(np.nan), "singular_values_mean holds NaN"),
        (lambda a: a.pop("summaries_m2"), "lacks arrays summaries_m2"),
        (lambda a: a.update(heatmap_index=np.array(2.0)), "heatmap_index must hold integers"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_saying_how_to_start_again(tmp_path, edit, message):
    identity = _checkpoint(tmp_path)
    _edit_checkpoint(tmp_path, edit)
    with pytest.raises(LowrankError) as info:
        read_checkpoint(tmp_path, identity, CODEC)
    text = str(info.value)
    assert message in text and "checkpoint.npz" in text and "\n" not in text
    assert text.endswith("pass overwrite=True (not resume=True) to start again")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"identity": {"seq_len": 8}, "next_ind', "not valid JSON"),
        ("[1, 2]", "must be an object"),
        ('{"identity": {"seq_len": 8}, "next_index": -3, "total": 9}', "next_index must be >= 0"),
        ('{"identity": {"seq_len": 8}, "next_index": 12, "total": 9}', "next_index 12 is above"),
        ('{"identity": {"seq_len": 8}, "next_index": "3"}', "next_index must be an integer"),
        ('{"next_index": 3}', "identity is missing"),
    ],
)
def test_a_damaged_checkpoint_json_is_refused_by_resume_and_by_the_out_check(
    tmp_path, text, message
):
    identity = _checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text(text)
    for check in (
        lambda: read_checkpoint(tmp_path, identity, CODEC),
        lambda: check_out_dir(tmp_path, identity, overwrite=False, resume=True),
    ):
        with pytest.raises(LowrankError) as info:
            check()
        assert message in str(info.value) and "overwrite=True" in str(info.value)
    check_out_dir(tmp_path, identity, overwrite=True)  # --overwrite starts again


def test_checkpoints_of_several_ranks_and_a_known_run_length_are_checked(tmp_path):
    identity = _checkpoint(tmp_path, counts=(2, 3))
    parts, next_index = read_checkpoint(tmp_path, identity, CODEC)
    assert [p.count for p in parts] == [2, 3] and next_index == 5
    with pytest.raises(LowrankError, match="next_index holds 5, above its maximum 4"):
        read_checkpoint(tmp_path, identity, CODEC, sequences=4)
    _edit_checkpoint(tmp_path, lambda a: a["rank1.cumulative_m2"].fill(-1.0))
    with pytest.raises(LowrankError, match=r"checkpoint.npz, rank 1,': cumulative_m2 holds -1"):
        read_checkpoint(tmp_path, identity, CODEC)


# --- the output folder and its writes --------------------------------------------------------


def test_out_under_a_file_or_with_a_damaged_run_json(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LowrankError, match=f"'{tmp_path / 'file'}' is a file, not a folder"):
        check_out_dir(tmp_path / "file" / "a" / "b", {"a": 1}, overwrite=True)
    with pytest.raises(LowrankError, match="is a file, not a folder: choose another --out"):
        check_out_dir(tmp_path / "file", {"a": 1}, overwrite=True)
    out, _ = _run(tmp_path)
    (out / "run.json").write_text("[]")  # valid JSON, not a run: another run, never a crash
    with pytest.raises(LowrankError, match="holds another run"):
        check_out_dir(out, {"a": 1}, overwrite=False)
    check_out_dir(out, {"a": 1}, overwrite=True)


def test_write_run_replaces_a_run_whole_and_leaves_no_temporary_files(tmp_path):
    out, _ = _run(tmp_path)
    arrays = _arrays(out)
    table = [{"k": 1, "rate": 0.5}, {"k": 2, "rate": 0.25}]
    write_run(
        out,
        _meta(out) | {"num_sequences": 5},
        arrays,
        npz="spectrum.npz",
        files={"t.csv": csv_bytes(table)},
    )
    assert (out / "t.csv").read_text().splitlines() == ["k,rate", "1,0.5", "2,0.25"]
    assert _meta(out)["num_sequences"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "spectrum.npz", "t.csv"]


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LowrankError, match=r"file' is a file, not a folder"):
        write_run(tmp_path / "file" / "run", {"format": FORMAT}, {"a": np.zeros(2)}, npz="x.npz")
    assert (tmp_path / "file").read_text() == "x"


# --- merge ---------------------------------------------------------------------------------


def test_merge_names_the_damaged_part(tmp_path):
    from lowrank.families.spectrum.merge import merge_folders

    good, _ = _run(tmp_path, "a")
    bad, _ = _run(tmp_path, "b")
    _rewrite(bad, _meta(bad) | {"num_heads": "three"})
    with pytest.raises(LowrankError) as info:
        merge_folders([good, bad])
    assert str(info.value) == (
        f"part 2 '{bad}': '{bad / 'run.json'}': num_heads must be an integer, got 'three'"
    )
