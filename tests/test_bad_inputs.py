"""Every bad input: one line on stderr, exit code 2, no traceback, nothing already saved lost.

One table over every command. A case names its arguments with placeholders that the fixtures
fill in: ``{roberta}`` a tiny local model, ``{run}`` a good spectrum run folder (its files must
be byte-identical after the failed command), ``{file}`` a regular file, ``{new}`` a fresh path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowrank.cli import main
from tests.helpers import SEQ_LEN

N = str(SEQ_LEN)
MODEL = ["--model", "{roberta}", "--seq-len", N]
SPEC = ["spectrum", *MODEL, "--num-sequences", "2"]
PROJ = ["project", *MODEL, "--num-sequences", "1", "--k", "8"]
VERIFY = ["verify", *MODEL, "--num-sequences", "1"]
COMPARE = ["compare", *MODEL, "--num-sequences", "1", "--budget", "8"]
SCALING = ["scaling", "--model", "{roberta}", "--num-sequences", "2", "--seq-len", "16,32"]
EFF = ["efficiency", "--n", "64", "--k", "8", "--layers", "1", "--repeats", "1"]

CASES: list[tuple[str, list[str], str]] = [
    # (id, arguments, a fragment the one line must hold)
    # -- spectrum: numbers that make no sense
    ("spectrum-seed-negative", [*SPEC, "--seed", "-1"], "--seed"),
    ("spectrum-seed-huge", [*SPEC, "--seed", str(2**40)], "--seed"),
    ("spectrum-precision-nan", [*SPEC, "--precision", "nan"], "--precision"),
    ("spectrum-precision-inf", [*SPEC, "--precision", "inf"], "--precision"),
    ("spectrum-precision-negative", [*SPEC, "--precision", "-0.1"], "--precision"),
    ("spectrum-seq-len-1", ["spectrum", "--model", "{roberta}", "--seq-len", "1"], "--seq-len"),
    ("spectrum-seq-len-3", ["spectrum", "--model", "{roberta}", "--seq-len", "3"], "--seq-len"),
    ("spectrum-seq-len-text", [*SPEC, "--seq-len", "abc"], "--seq-len"),
    ("spectrum-batch-0", [*SPEC, "--batch-size", "0"], "--batch-size"),
    ("spectrum-num-sequences-0", ["spectrum", *MODEL, "--num-sequences", "0"], "--num-sequences"),
    ("spectrum-checkpoint-every-0", [*SPEC, "--checkpoint-every", "0"], "--checkpoint-every"),
    ("spectrum-shard-order", [*SPEC, "--shard", "3/2"], "--shard"),
    ("spectrum-shard-text", [*SPEC, "--shard", "half"], "--shard"),
    ("spectrum-dtype-cpu", [*SPEC, "--device", "cpu", "--dtype", "float16"], "--dtype"),
    ("spectrum-unknown-option", [*SPEC, "--frobnicate"], "--frobnicate"),
    # -- spectrum: models, corpora, folders
    ("spectrum-model-missing", ["spectrum", "--model", "{new}/nomodel"], "nomodel"),
    ("spectrum-model-file", ["spectrum", "--model", "{file}"], "file.txt"),
    ("spectrum-model-no-config", ["spectrum", "--model", "{empty_dir}"], "empty"),
    ("spectrum-model-truncated", ["spectrum", "--model", "{truncated_model}"], "safetensors"),
    ("spectrum-data-missing", [*SPEC, "--data", "{new}/none.txt"], "none.txt"),
    ("spectrum-data-empty", [*SPEC, "--data", "{empty_txt}"], "empty.txt"),
    ("spectrum-data-binary", [*SPEC, "--data", "{binary}"], "binary.txt"),
    ("spectrum-data-latin1", [*SPEC, "--data", "{latin1}"], "latin1.txt"),
    ("spectrum-data-empty-dir", [*SPEC, "--data", "{empty_dir}"], "empty"),
    ("spectrum-data-bad-jsonl", [*SPEC, "--data", "{bad_jsonl}"], "bad.jsonl"),
    ("spectrum-data-csv-no-text", [*SPEC, "--data", "{csv_no_text}"], "notext.csv"),
    ("spectrum-out-under-file", [*SPEC, "--out", "{file}/sub"], "file.txt"),
    ("spectrum-out-name-too-long", [*SPEC, "--out", "{new}/" + "x" * 300], "too long"),
    ("spectrum-out-is-file", [*SPEC, "--out", "{file}"], "file.txt"),
    ("spectrum-out-other-run", [*SPEC, "--seed", "3", "--out", "{run}"], "--overwrite"),
    ("spectrum-resume-complete", [*SPEC, "--resume", "--out", "{run}"], "complete"),
    # -- figures
    ("figures-missing", ["figures", "{new}/gone"], "gone"),
    ("figures-file", ["figures", "{file}"], "file.txt"),
    ("figures-not-json", ["figures", "{bad_json_run}"], "run.json"),
    ("figures-newer-format", ["figures", "{future_run}"], "upgrade"),
    ("figures-truncated-npz", ["figures", "{truncated_run}"], "spectrum.npz"),
    ("figures-shape-tampered", ["figures", "{reshaped_run}"], "shape"),
    ("figures-out-name-too-long", ["figures", "{run}", "--out", "x" * 300], "too long"),
    ("figures-out-under-file", ["figures", "{run}", "--out", "{file}/figs"], "file.txt"),
    # -- merge
    ("merge-missing-part", ["merge", "{run}", "{new}/gone", "--out", "{new}/m"], "gone"),
    ("merge-damaged-part", ["merge", "{run}", "{truncated_run}", "--out", "{new}/m"], "part 2"),
    (
        "merge-onto-other-run",
        ["merge", "{shard1}", "{shard2}", "--out", "{proj_run}"],
        "--overwrite",
    ),
    ("merge-out-under-file", ["merge", "{shard1}", "{shard2}", "--out", "{file}/m"], "file.txt"),
    ("merge-one-part", ["merge", "{shard1}", "--out", "{new}/m"], "two"),
    ("merge-same-part-twice", ["merge", "{shard1}", "{shard1}", "--out", "{new}/m"], "given twice"),
    # -- summary
    ("summary-missing", ["summary", "{new}/gone"], "gone"),
    ("summary-file", ["summary", "{file}"], "file.txt"),
    ("summary-at-0", ["summary", "{run}", "--at", "0"], "--at"),
    ("summary-at-beyond-n", ["summary", "{run}", "--at", "100000"], "--at"),
    ("summary-format", ["summary", "{run}", "--format", "xml"], "--format"),
    ("summary-newer-format", ["summary", "{future_run}"], "upgrade"),
    ("summary-not-json", ["summary", "{bad_json_run}"], "run.json"),
    ("summary-c-above-one", ["summary", "{above_one_run}"], "cumulative_mean"),
    ("summary-negative-error", ["summary", "{negative_proj_run}"], "below its minimum"),
    (
        "figures-c-above-one",
        ["figures", "{above_one_run}", "--out", "{new}/f"],
        "above its maximum",
    ),
    # -- project
    ("project-seed-negative", [*PROJ, "--seed", "-1"], "--seed"),
    ("project-k-0", [*PROJ, "--k", "0"], "--k"),
    ("project-k-twice", [*PROJ, "--k", "8,8"], "--k"),
    ("project-k-empty", [*PROJ, "--k", ","], "--k"),
    ("project-k-beyond-n", [*PROJ, "--k", "100000"], "--k"),
    ("project-draws-0", [*PROJ, "--draws", "0"], "--draws"),
    ("project-delta-nan", [*PROJ, "--delta", "nan"], "--delta"),
    ("project-method-unknown", [*PROJ, "--method", "magic"], "magic"),
    ("project-proj-seed-negative", [*PROJ, "--proj-seed", "-5"], "--proj-seed"),
    ("project-out-other-run", [*PROJ, "--out", "{run}"], "--overwrite"),
    # -- verify
    ("verify-eps-0", [*VERIFY, "--eps", "0"], "--eps"),
    ("verify-eps-1", [*VERIFY, "--eps", "1.5"], "--eps"),
    ("verify-eps-nan", [*VERIFY, "--eps", "nan"], "--eps"),
    ("verify-eps-underflow", [*VERIFY, "--eps", "1e-300"], "too small"),
    ("verify-eps-twice", [*VERIFY, "--eps", "0.1,0.1"], "--eps"),
    ("verify-seed-negative", [*VERIFY, "--seed", "-1"], "--seed"),
    ("verify-inv-temp-nan", [*VERIFY, "--inverse-temperatures", "nan"], "--inverse-temperatures"),
    ("verify-inv-temp-neg", [*VERIFY, "--inverse-temperatures", "-1"], "--inverse-temperatures"),
    ("verify-delta-inf", [*VERIFY, "--delta", "inf"], "--delta"),
    ("verify-target-1", [*VERIFY, "--target", "1"], "--target"),
    # -- efficiency
    ("efficiency-n-0", [*EFF[:1], "--n", "0"], "--n"),
    ("efficiency-n-twice", [*EFF[:1], "--n", "64,64"], "--n"),
    ("efficiency-n-huge", [*EFF[:1], "--n", str(10**9), "--k", "8"], "--n"),
    ("efficiency-k-beyond-n", [*EFF[:1], "--n", "64", "--k", "128"], "--k"),
    ("efficiency-budget-nan", [*EFF, "--memory-budget", "nan"], "--memory-budget"),
    ("efficiency-budget-huge", [*EFF, "--memory-budget", "1e308"], "--memory-budget"),
    ("efficiency-repeats-huge", [*EFF[:7], "--repeats", str(10**20)], "--repeats"),
    ("efficiency-layers-0", [*EFF[:5], "--layers", "0"], "--layers"),
    ("efficiency-repeats-0", [*EFF[:7], "--repeats", "0"], "--repeats"),
    # -- compare
    ("compare-budget-0", [*COMPARE, "--budget", "0"], "--budget"),
    ("compare-budget-beyond-n", [*COMPARE, "--budget", "100000"], "--budget"),
    ("compare-budget-twice", [*COMPARE, "--budget", "8,8"], "--budget"),
    ("compare-globals-negative", [*COMPARE, "--globals", "-1"], "--globals"),
    ("compare-lsh-rounds-0", [*COMPARE, "--lsh-rounds", "0"], "--lsh-rounds"),
    ("compare-family-unknown", [*COMPARE, "--families", "magic"], "magic"),
    ("compare-seed-negative", [*COMPARE, "--seed", "-1"], "--seed"),
    ("compare-model-t5", ["compare", "--model", "{t5}", "--seq-len", N, "--budget", "8"], "t5"),
    # -- scaling
    ("scaling-seq-len-twice", [*SCALING[:3], "--seq-len", "16,16"], "--seq-len"),
    ("scaling-seq-len-empty", [*SCALING[:3], "--seq-len", ","], "--seq-len"),
    ("scaling-seq-len-beyond-positions", [*SCALING[:3], "--seq-len", "16,4096"], "4096"),
    ("scaling-seed-negative", [*SCALING, "--seed", "-1"], "--seed"),
    ("scaling-precision-nan", [*SCALING, "--precision", "nan"], "--precision"),
    ("scaling-budget-nan", [*SCALING, "--memory-budget", "nan"], "--memory-budget"),
    ("scaling-bootstrap-negative", [*SCALING, "--bootstrap", "-1"], "--bootstrap"),
    ("scaling-model-t5", ["scaling", "--model", "{t5}", "--seq-len", "16,32,48"], "t5"),
]


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _unlisted(folder: Path) -> None:
    """Drop run.json's manifest, as folders of an earlier lowrank have none: the edited
    arrays are then judged by the array checks (with it, the manifest refuses any edit)."""
    meta = json.loads((folder / "run.json").read_text())
    meta.pop("manifest", None)
    (folder / "run.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def places(roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad-inputs")
    run = base / "run"
    ok = CliRunner().invoke(
        main, [a.format(roberta=roberta_dir) for a in SPEC] + ["--out", str(run)]
    )
    assert ok.exit_code == 0, ok.output
    proj = base / "proj"
    ok = CliRunner().invoke(
        main, [a.format(roberta=roberta_dir) for a in PROJ] + ["--out", str(proj)]
    )
    assert ok.exit_code == 0, ok.output
    shards = []
    for i in (1, 2):
        shard = base / f"shard{i}"
        ok = CliRunner().invoke(
            main,
            [a.format(roberta=roberta_dir) for a in SPEC]
            + ["--num-sequences", "4", "--shard", f"{i}/2", "--out", str(shard)],
        )
        assert ok.exit_code == 0, ok.output
        shards.append(shard)
    (base / "file.txt").write_text("a regular file\n")
    (base / "empty").mkdir()
    (base / "empty.txt").write_text("")
    (base / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (base / "latin1.txt").write_bytes(("Caf\xe9 cr\xe8me br\xfbl\xe9e. " * 400).encode("latin-1"))
    (base / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (base / "notext.csv").write_text("id,label\n1,2\n3,4\n")
    truncated_model = base / "truncated-model"
    shutil.copytree(roberta_dir, truncated_model)
    weights = truncated_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    t5 = base / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    )
    bad_json = base / "bad-json"
    shutil.copytree(run, bad_json)
    (bad_json / "run.json").write_text('{"format": "lowrank-spectrum", "num_la')
    future = base / "future"
    shutil.copytree(run, future)
    meta = json.loads((future / "run.json").read_text())
    meta["format_version"] = 99
    (future / "run.json").write_text(json.dumps(meta))
    truncated = base / "truncated"
    shutil.copytree(run, truncated)
    npz = truncated / "spectrum.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    reshaped = base / "reshaped"
    shutil.copytree(run, reshaped)
    with np.load(reshaped / "spectrum.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["cumulative_mean"] = arrays["cumulative_mean"][:, :, :-1]
    np.savez_compressed(reshaped / "spectrum.npz", **arrays)
    _unlisted(reshaped)
    above_one = base / "above-one"
    shutil.copytree(run, above_one)
    with np.load(run / "spectrum.npz") as data:
        tampered = {k: data[k] for k in data.files}
    tampered["cumulative_mean"] = tampered["cumulative_mean"] + 0.75  # c above 1
    np.savez_compressed(above_one / "spectrum.npz", **tampered)
    _unlisted(above_one)
    negative = base / "negative-error"
    shutil.copytree(proj, negative)
    with np.load(proj / "projection.npz") as data:
        tampered = {k: data[k] for k in data.files}
    name = next(k for k in tampered if k.startswith("theorem2_") and k.endswith("_mean"))
    tampered[name] = -np.abs(tampered[name]) - 1.0
    np.savez_compressed(negative / "projection.npz", **tampered)
    _unlisted(negative)
    return {
        "above_one_run": above_one,
        "negative_proj_run": negative,
        "roberta": roberta_dir,
        "run": run,
        "proj_run": proj,
        "shard1": shards[0],
        "shard2": shards[1],
        "file": base / "file.txt",
        "empty_dir": base / "empty",
        "empty_txt": base / "empty.txt",
        "binary": base / "binary.txt",
        "latin1": base / "latin1.txt",
        "bad_jsonl": base / "bad.jsonl",
        "csv_no_text": base / "notext.csv",
        "truncated_model": truncated_model,
        "t5": t5,
        "bad_json_run": bad_json,
        "future_run": future,
        "truncated_run": truncated,
        "reshaped_run": reshaped,
    }


def test_the_table_covers_every_command() -> None:
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    commands = {args[0] for _, args, _ in CASES}
    assert commands == {
        "spectrum", "figures", "merge", "summary", "project", "verify", "efficiency",
        "compare", "scaling",
    }  # fmt: skip


@pytest.mark.parametrize(("case", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(
    places: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    args: list[str],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # a case that wrongly succeeds writes its default --out here
    fill = {k: str(v) for k, v in places.items()} | {"new": str(tmp_path)}
    argv = [a.format(**fill) for a in args]
    guarded = [places[name] for name in ("run", "proj_run", "shard1", "shard2")]
    before = [_digest(folder) for folder in guarded]
    result = CliRunner().invoke(main, argv, env={"LOWRANK_DEBUG": ""})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (case, result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment.format(**fill) in lines[0], lines[0]
    assert [_digest(folder) for folder in guarded] == before  # nothing saved was touched
