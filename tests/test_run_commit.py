"""A run folder changes in one step, has one writer, and is not replaced by other inputs.

Issue 28, items 2 to 4. The commit of a run is killed (SIGKILL, no clean-up) at every step
it takes on the file system -- just before each ``open``, ``mkdir``, ``rename``, ``link``,
``remove``, ``rmtree`` and the ``renameat2`` exchange, as Python's audit hooks report them --
in a forked child; every time, the folder must read as the old run or as the new one,
whole, with the user's own file kept, and the next write must succeed and leave nothing
beside it. A second writer is refused naming the first one's pid, and a resume or a rerun
from other inputs is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import SpectrumStats, stats_arrays
from lowrank.runs import commit, locks
from lowrank.runs.writing import write_run
from tests.helpers import SEQ_LEN

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child")

# the audit events of the steps a commit takes on the file system (a hook runs before the
# step: a kill at an event is a kill just before that step)
STEPS = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.link",
    "os.remove",
    "os.rmdir",
    "os.symlink",
    "os.chmod",
    "shutil.rmtree",
    "lowrank.runs.exchange",  # the renameat2 call (ctypes calls raise no audit event)
}


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, env={"LOWRANK_DEBUG": ""})


def _spectrum_run(count: int, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    s = -np.sort(-rng.random(size=(count, 2, 3, 8)), axis=-1)
    stats = SpectrumStats.empty(2, 3, 8, 2).add(s)
    meta = {
        "format": "lowrank-spectrum",
        "identity": {"seed": seed},
        "num_layers": 2,
        "num_heads": 3,
        "seq_len": 8,
        "num_sequences": count,
        "model": {"name": "m"},
        "corpus": {"dataset": "d"},
    }
    ids = rng.integers(0, 100, size=(count, 8))
    return meta, stats_arrays(stats) | {"input_ids": ids}


def _in_child(work: Callable[[], object], folder: Path, kill_at: int | None) -> tuple[int, int]:
    """Run ``work`` in a forked child; with ``kill_at``, SIGKILL it at its ``kill_at``-th
    file-system step under ``folder``'s parent. Returns (steps taken, wait status)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count the steps, die at the chosen one
        os.close(read)
        where = str(folder.parent)
        seen = [0]

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if event in STEPS and where in repr(args):
                seen[0] += 1
                if seen[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(hook)
        code = 0
        try:
            work()
        except BaseException:
            code = 3
        os.write(write, str(seen[0]).encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    return int(text or -1), status


def _state(out: Path) -> str:
    """``old`` or ``new``: which whole run the folder holds (anything else fails)."""
    run = SpectrumResult.read(out)
    count = run.stats.count
    assert count in (3, 5), count
    meta, arrays = _spectrum_run(count, seed=count)
    for name, value in arrays.items():
        np.testing.assert_array_equal(run.arrays[name], value)
    assert run.config["identity"] == meta["identity"]
    return "old" if count == 3 else "new"


def test_a_kill_at_every_step_of_a_commit_leaves_the_old_run_or_the_new(tmp_path: Path) -> None:
    old_meta, old_arrays = _spectrum_run(3, seed=3)
    new_meta, new_arrays = _spectrum_run(5, seed=5)

    def fresh(case: str) -> Path:
        out = tmp_path / case / "run"
        write_run(out, old_meta, old_arrays, npz="spectrum.npz")
        (out / "notes.txt").write_text("mine")  # the user's: kept whatever happens
        return out

    def commit_new(out: Path) -> Callable[[], object]:
        return lambda: write_run(out, new_meta, new_arrays, npz="spectrum.npz")

    probe = fresh("probe")
    total, status = _in_child(commit_new(probe), probe, None)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert total >= 8, total  # mkdir, three files, the exchange, the old run's removal, ...
    seen = []
    for n in range(1, total + 1):
        out = fresh(f"kill-{n}")
        _, status = _in_child(commit_new(out), out, n)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, n
        seen.append(_state(out))  # whole: one run or the other
        assert (out / "notes.txt").read_text() == "mine"
        assert _invoke(["summary", str(out)]).exit_code == 0
        write_run(out, new_meta, new_arrays, npz="spectrum.npz")  # the next write: whole
        assert _state(out) == "new" and (out / "notes.txt").read_text() == "mine"
        assert sorted(p.name for p in out.parent.iterdir()) == ["run"], n  # nothing beside
    assert seen[0] == "old" and seen[-1] == "new" and set(seen) == {"old", "new"}


@pytest.fixture(scope="module")
def scaling_runs(roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    """Two scaling runs of the tiny RoBERTa, of 2 and 3 documents."""
    from lowrank.registry import load

    base = ["scaling", "--model", str(roberta_dir), "--seq-len", "8,16,32"]
    runs = {}
    for count in (2, 3):
        out = tmp_path_factory.mktemp("scaling") / f"made-{count}"
        res = _invoke([*base, "--num-sequences", str(count), "--out", str(out)])
        assert res.exit_code == 0, res.output
        runs[count] = load(out)
    return runs


def _whole_scaling(out: Path, runs: dict[int, Any]) -> int:
    """The documents of the scaling run in ``out``, checked to be one run's throughout."""
    from lowrank.families.scaling.result import ScalingResult
    from lowrank.registry import load

    res = load(out)
    assert isinstance(res, ScalingResult)
    top = int(res.arrays["fit_documents"])
    assert top in runs, top
    for n, run in res.runs.items():
        np.testing.assert_array_equal(run.input_ids, runs[top].runs[n].input_ids)
    return top


def test_a_kill_at_every_step_of_a_scaling_commit_leaves_one_whole_run(
    scaling_runs: dict[int, Any], tmp_path: Path
) -> None:
    def fresh(case: str) -> Path:
        out = tmp_path / case / "run"
        scaling_runs[2].save(out)
        return out

    probe = fresh("probe")
    total, _ = _in_child(lambda: scaling_runs[3].save(probe, overwrite=True), probe, None)
    assert _whole_scaling(probe, scaling_runs) == 3
    seen = set()
    for n in range(1, total + 1, max(1, total // 15)):
        out = fresh(f"kill-{n}")
        work = lambda out=out: scaling_runs[3].save(out, overwrite=True)  # noqa: E731
        _, status = _in_child(work, out, n)
        assert os.WIFSIGNALED(status), n
        seen.add(_whole_scaling(out, scaling_runs))  # n folders and summary of one run
        assert _invoke(["summary", str(out)]).exit_code == 0
    assert seen == {2, 3}


def test_a_failed_scaling_write_leaves_nothing_that_blocks_the_rerun(
    scaling_runs: dict[int, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28, item 17: a full disk after ``n16/`` was written used to leave ``n16/``
    behind, and the rerun was refused as "files that are not a lowrank run"."""
    import lowrank.runs.writing as writing

    out = tmp_path / "run"
    calls = [0]
    real = writing.write_synced

    def full_after_n16(path: Path, write: Any, shown: Path | None = None) -> None:
        calls[0] += 1
        if calls[0] == 5:  # n8/spectrum.npz, n8/run.json, n16/spectrum.npz, n16/run.json
            raise LowrankError(f"cannot write '{shown}': No space left on device (errno 28)")
        real(path, write, shown)

    monkeypatch.setattr(writing, "write_synced", full_after_n16)
    with pytest.raises(LowrankError, match=r"n32.*No space left"):
        scaling_runs[2].save(out)
    assert list(tmp_path.iterdir()) == []  # no n16/, no private folder, no lock
    monkeypatch.undo()
    scaling_runs[2].save(out)
    assert _whole_scaling(out, scaling_runs) == 2


def test_summary_refuses_a_scaling_folder_whose_n_folder_is_another_runs(
    scaling_runs: dict[int, Any], tmp_path: Path
) -> None:
    """An interrupt after ``n16/`` was rewritten used to leave 3 documents under a top-level
    run of 2, and ``summary`` accepted it."""
    import shutil

    mixed, other = tmp_path / "mixed", tmp_path / "other"
    scaling_runs[2].save(mixed)
    scaling_runs[3].save(other)
    shutil.rmtree(mixed / "n16")
    shutil.copytree(other / "n16", mixed / "n16")
    res = _invoke(["summary", str(mixed)])
    assert res.exit_code == 2, res.output
    assert f"'{mixed / 'n16' / 'run.json'}' is not the file its run.json lists" in res.stderr
    assert _invoke(["summary", str(mixed / "n16")]).exit_code == 0  # each run is whole


def test_leftovers_of_a_killed_writer_are_cleaned_by_the_next_one(tmp_path: Path) -> None:
    meta, arrays = _spectrum_run(3, seed=3)
    out = tmp_path / "run"
    write_run(out, meta, arrays, npz="spectrum.npz")
    (tmp_path / ".run.new-999999-abcd").mkdir()  # a private folder of a killed writer
    (tmp_path / ".run.new-999999-abcd" / "spectrum.npz").write_bytes(b"half")
    (out / ".spectrum.npz.999999.x1.tmp").write_bytes(b"half")  # a killed file write
    assert [p.name for p in commit.leftovers(out)] == [".run.new-999999-abcd"]
    write_run(out, meta, arrays, npz="spectrum.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "spectrum.npz"]


def test_an_interrupted_two_rename_swap_is_finished_by_the_next_write(tmp_path: Path) -> None:
    """Where the exchange is missing: killed between its two renames, the folder is gone for
    a moment; readers name the leftover, and the next write puts the whole new run back."""
    old_meta, old_arrays = _spectrum_run(3, seed=3)
    new_meta, new_arrays = _spectrum_run(5, seed=5)
    out = tmp_path / "run"
    write_run(out, old_meta, old_arrays, npz="spectrum.npz")
    staged = tmp_path / ".run.new-999999-beef"
    write_run(staged, new_meta, new_arrays, npz="spectrum.npz")
    out.rename(tmp_path / ".run.old-999999-beef")  # the first rename; the second never came
    with pytest.raises(LowrankError, match="interrupted left its runs in"):
        SpectrumResult.read(out)
    write_run(out, new_meta, new_arrays, npz="spectrum.npz")
    assert _state(out) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_without_the_exchange_the_commit_still_replaces_the_run_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit, "exchange", lambda a, b: False)  # another system
    old_meta, old_arrays = _spectrum_run(3, seed=3)
    new_meta, new_arrays = _spectrum_run(5, seed=5)
    out = tmp_path / "run"
    write_run(out, old_meta, old_arrays, npz="spectrum.npz")
    (out / "notes.txt").write_text("mine")
    write_run(out, new_meta, new_arrays, npz="spectrum.npz")
    assert _state(out) == "new" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_exchange_swaps_two_folders_in_one_step(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not commit.exchange(a, b):
        pytest.skip("this system has no renameat2(RENAME_EXCHANGE)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_an_overwrite_keeps_the_users_files_and_drops_the_old_runs(tmp_path: Path) -> None:
    old_meta, old_arrays = _spectrum_run(3, seed=3)
    out = tmp_path / "run"
    write_run(out, old_meta, old_arrays, npz="spectrum.npz", files={"old.csv": b"a\n"})
    (out / "figures").mkdir()
    (out / "figures" / "f.png").write_bytes(b"png")
    (out / "link").symlink_to("/etc/hostname")
    (out / "checkpoint.json").write_text("{}")
    new_meta, new_arrays = _spectrum_run(5, seed=5)
    write_run(out, new_meta, new_arrays, npz="spectrum.npz")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["figures", "link", "run.json", "spectrum.npz"]  # old.csv was the run's
    assert (out / "figures" / "f.png").read_bytes() == b"png"
    assert (out / "link").is_symlink() and (out / "link").readlink() == Path("/etc/hostname")


# --- one writer per folder -------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lowrank.runs import locks
    locks.acquire(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def held(tmp_path: Path):
    """A folder another process holds the lock of (its pid, the folder)."""
    out = tmp_path / "race"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid, out
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_first(
    roberta_dir: Path, held: tuple[int, Path]
) -> None:
    pid, out = held
    args = ["spectrum", "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN)]
    res = _invoke([*args, "--num-sequences", "2", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: --out '{out}' is being written by another lowrank run (pid {pid}): wait "
        "until it ends, or choose another --out"
    ]
    assert not out.exists()
    meta, arrays = _spectrum_run(3, seed=3)
    with pytest.raises(LowrankError, match=rf"out '{out}' is being written .*\(pid {pid}\)"):
        SpectrumResult(meta, arrays).save(out)  # the API, too


def test_the_lock_lets_go_when_its_holder_dies_or_ends(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.kill()  # SIGKILL: the kernel drops its lock
    proc.wait()
    meta, arrays = _spectrum_run(3, seed=3)
    with locks.hold(out), locks.hold(out):  # re-entrant within a process
        write_run(out, meta, arrays, npz="spectrum.npz")
    assert not locks.holds(out) and not locks.lock_path(out).exists()


# --- inputs that changed ---------------------------------------------------------------------


def _corpus(path: Path, words: str) -> Path:
    text = "\n".join(f" = Article {i} =\n{words * 60} {i}" for i in range(12))
    path.write_text(text)
    return path


def _spectrum(model: Path, data: Path, out: Path, *extra: str) -> Result:
    return _invoke(
        ["spectrum", "--model", str(model), "--data", str(data), "--seq-len", str(SEQ_LEN),
         "--num-sequences", "4", "--batch-size", "1", "--out", str(out), *extra]
    )  # fmt: skip


def test_a_resume_on_a_changed_corpus_is_refused(
    roberta_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lowrank.families.spectrum import pipeline

    data = _corpus(tmp_path / "corpus.txt", "the cat sat on the mat and looked around. ")
    out = tmp_path / "run"
    real, calls = pipeline._spectra, [0]

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "_spectra", interrupted)
        res = _spectrum(roberta_dir, data, out, "--checkpoint-every", "1")
    assert res.exit_code == 130, res.output
    info = json.loads((out / "checkpoint.json").read_text())
    assert info["fingerprint"]["sequences"].startswith("sha256:")
    _corpus(data, "a dog ran in the park and barked at birds. ")  # same path, other text
    res = _spectrum(roberta_dir, data, out, "--checkpoint-every", "1", "--resume")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "was made from other inputs" in errors[0], res.stderr
    assert "token ids differ" in errors[0] and "--overwrite (not --resume)" in errors[0]
    assert not (out / "run.json").exists()
    # --resume beside --overwrite continues the checkpoint too: refused the same way
    res = _spectrum(roberta_dir, data, out, "--checkpoint-every", "1", "--resume", "--overwrite")
    assert res.exit_code == 2 and "was made from other inputs" in res.stderr, res.output
    assert not (out / "run.json").exists()


def test_a_rerun_on_a_changed_corpus_does_not_replace_the_run(
    roberta_dir: Path, tmp_path: Path
) -> None:
    data = _corpus(tmp_path / "corpus.txt", "the cat sat on the mat and looked around. ")
    out = tmp_path / "run"
    assert _spectrum(roberta_dir, data, out).exit_code == 0
    before = (out / "spectrum.npz").read_bytes()
    assert _spectrum(roberta_dir, data, out).exit_code == 0  # same inputs: the same run again
    _corpus(data, "a dog ran in the park and barked at birds. ")
    res = _spectrum(roberta_dir, data, out)
    assert res.exit_code == 2, res.output
    assert "holds a run of these options made from other inputs" in res.stderr
    assert (out / "spectrum.npz").read_bytes() == before
    assert _spectrum(roberta_dir, data, out, "--overwrite").exit_code == 0
    assert (out / "spectrum.npz").read_bytes() != before


def test_a_scaling_rerun_on_a_changed_corpus_does_not_replace_the_run(
    roberta_dir: Path, tmp_path: Path
) -> None:
    """scaling records the fingerprint of its longest windows and the model: the same
    options on a corpus edited in place are refused, as spectrum's are."""
    data = _corpus(tmp_path / "corpus.txt", "the cat sat on the mat and looked around. ")
    out = tmp_path / "run"
    args = ["scaling", "--model", str(roberta_dir), "--data", str(data), "--seq-len", "8,16,32",
            "--num-sequences", "3", "--out", str(out)]  # fmt: skip
    assert _invoke(args).exit_code == 0
    before = (out / "scaling.npz").read_bytes()
    assert _invoke(args).exit_code == 0  # same inputs: the same run again
    _corpus(data, "a dog ran in the park and barked at birds. ")
    res = _invoke(args)
    assert res.exit_code == 2, res.output
    assert "holds a run of these options made from other inputs" in res.stderr
    assert (out / "scaling.npz").read_bytes() == before
    assert _invoke([*args, "--overwrite"]).exit_code == 0
    assert (out / "scaling.npz").read_bytes() != before


def test_a_rerun_on_changed_weights_does_not_replace_the_run(
    roberta_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.numpy import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(roberta_dir, model)
    data = _corpus(tmp_path / "corpus.txt", "the cat sat on the mat and looked around. ")
    out = tmp_path / "run"
    assert _spectrum(model, data, out).exit_code == 0
    weights = load_file(model / "model.safetensors")
    name = next(k for k in sorted(weights) if "query.weight" in k)
    weights[name] = weights[name] * 1.5  # fine-tuned in place: same path, other weights
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    res = _spectrum(model, data, out)
    assert res.exit_code == 2, res.output
    assert "made from other inputs (its model was sha256:" in res.stderr


@pytest.mark.parametrize("command", ["compare", "project"])
def test_other_commands_do_not_replace_a_run_made_from_other_inputs(
    roberta_dir: Path, tmp_path: Path, command: str
) -> None:
    """Every family's save records the fingerprint of its sequences and model, and the
    commit refuses, without --overwrite, a run of the same options over other inputs."""
    data = _corpus(tmp_path / "corpus.txt", "the cat sat on the mat and looked around. ")
    out = tmp_path / "run"
    extra = {
        "compare": ["--budget", "8"],
        "project": ["--k", "8", "--method", "gaussian", "--draws", "1", "--no-model-effect"],
    }[command]
    args = [command, "--model", str(roberta_dir), "--data", str(data), "--seq-len",
            str(SEQ_LEN), "--num-sequences", "1", *extra, "--out", str(out)]  # fmt: skip
    assert _invoke(args).exit_code == 0
    fingerprint = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fingerprint["num_sequences"] == 1 and fingerprint["model"].startswith("sha256:")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _corpus(data, "a dog ran in the park and barked at birds. ")
    res = _invoke(args)
    assert res.exit_code == 2, res.output
    line = res.stderr.splitlines()[-1]  # compare's identity holds the corpus's size already
    assert "made from other inputs" in line or "holds another run" in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _invoke([*args, "--overwrite"]).exit_code == 0
