"""The file system refuses a write: one line, exit code 2, and the earlier run untouched.

Tests run as root, where permissions do not stop a write, so faults are injected: a write
step (numpy's npz writer, fsync, the final rename, matplotlib's savefig) is monkeypatched to
write part of its bytes and then raise ENOSPC or EIO, midway through a command's output. The
commands run through the CLI (``lowrank.cli.main``), so these tests hold whatever the
commands' internals become.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import CODEC, SpectrumStats
from lowrank.runs.checkpoints import write_checkpoint
from tests.helpers import SEQ_LEN

N = str(SEQ_LEN)


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, env={"LOWRANK_DEBUG": ""})


def _spectrum_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["spectrum", "--model", str(model), "--seq-len", N, "--num-sequences", "3",
            "--out", str(out), *extra]  # fmt: skip


def _project_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["project", "--model", str(model), "--seq-len", N, "--num-sequences", "1",
            "--k", "8", "--method", "gaussian", "--draws", "1", "--no-model-effect",
            "--out", str(out), *extra]  # fmt: skip


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden temporary files included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_error_line(res: Result, *fragments: str) -> str:
    """Exit code 2, no traceback, and exactly one ``error:`` line on stderr, the last one
    (progress bars and status lines of the work done before the failure may precede it)."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- the fault injection ------------------------------------------------------------------


def _inside(path: Any, folder: Path) -> bool:
    """Whether ``path`` is in ``folder``, or in the private folder a run of ``folder`` is
    written into before it replaces ``folder`` (``.<name>.new-<pid>-<token>`` beside it)."""
    try:
        place = Path(os.fsdecode(path)).resolve()
    except (TypeError, ValueError):
        return False
    real = folder.resolve()
    private = f".{real.name}.new-"
    return any(
        p == real or (p.parent == real.parent and p.name.startswith(private))
        for p in (place, *place.parents)
    )


def _fd_inside(fd: int, folder: Path) -> bool:
    try:
        return _inside(Path(f"/proc/self/fd/{fd}").readlink(), folder)
    except OSError:
        return True  # no /proc: count every fsync


class Faults:
    """Make the ``nth`` write step of a kind under ``folder`` fail with ``code``.

    ``npz``: numpy's npz writer writes a few bytes, then fails (the npz half written);
    ``fsync``: flushing a file to disk fails (the second one: after the arrays were staged);
    ``swap``: the one step that puts a whole new run folder in place fails;
    ``rename``: the second rename of files into place fails (after the first replaced an old
    file, which must be put back; checkpoints, figures); ``savefig``: a figure is half
    written, then fails.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.fired = 0

    def _error(self, code: int, path: Any = None) -> OSError:
        self.fired += 1
        return OSError(code, os.strerror(code), None if path is None else os.fsdecode(path))

    def arm(self, kind: str, folder: Path, code: int, nth: int = 1) -> None:
        calls = [0]

        def due() -> bool:
            calls[0] += 1
            return calls[0] == nth

        if kind == "npz":
            real_savez = np.savez_compressed

            def savez(file: Any, *args: Any, **kwargs: Any) -> None:
                if due():
                    file.write(b"PK\x03\x04 half an npz")
                    raise self._error(code)
                real_savez(file, *args, **kwargs)

            self.monkeypatch.setattr(np, "savez_compressed", savez)
        elif kind == "fsync":
            real_fsync = os.fsync

            def fsync(fd: int) -> None:
                if _fd_inside(fd, folder) and not Path(f"/proc/self/fd/{fd}").is_dir() and due():
                    raise self._error(code)
                real_fsync(fd)

            self.monkeypatch.setattr(os, "fsync", fsync)
        elif kind == "swap":
            from lowrank.runs import commit

            real_swap = commit._swap

            def swap(stage: Path, real: Path, token: str) -> Path | None:
                if _inside(real, folder) and due():
                    raise self._error(code, real)
                return real_swap(stage, real, token)

            self.monkeypatch.setattr(commit, "_swap", swap)
        elif kind == "rename":
            real_replace = Path.replace

            def replace(self_: Path, target: Any) -> Path:
                if _inside(target, folder) and due():
                    raise self._error(code, target)
                return real_replace(self_, target)

            self.monkeypatch.setattr(Path, "replace", replace)
        elif kind == "savefig":
            from matplotlib.figure import Figure

            real_savefig = Figure.savefig

            def savefig(fig: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
                if due():
                    if hasattr(fname, "write"):
                        fname.write(b"%PDF-1.4 half a figure")
                    else:
                        Path(os.fsdecode(fname)).write_bytes(b"%PDF-1.4 half a figure")
                    raise self._error(code, None if hasattr(fname, "write") else fname)
                real_savefig(fig, fname, *args, **kwargs)

            self.monkeypatch.setattr(Figure, "savefig", savefig)
        else:
            raise ValueError(kind)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    yield Faults(monkeypatch)


# (kind, errno, nth): where the write fails
RUN_FAULTS = [
    pytest.param("npz", errno.ENOSPC, 1, id="npz-ENOSPC"),
    pytest.param("fsync", errno.EIO, 2, id="fsync-EIO"),
    pytest.param("swap", errno.EIO, 1, id="swap-EIO"),
]
REASONS = {errno.ENOSPC: "No space left on device (errno 28)", errno.EIO: "(errno 5)"}


# --- the run folders the commands must not lose --------------------------------------------


@pytest.fixture(scope="module")
def shards(roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("fs-shards")
    parts = []
    for i in (1, 2):
        out = base / f"part-{i}"
        res = _invoke(_spectrum_args(roberta_dir, out, "--shard", f"{i}/2"))
        assert res.exit_code == 0, res.output
        parts.append(out)
    return parts


@pytest.fixture(scope="module")
def good_run(shards: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merged spectrum run (also the run `figures` draws)."""
    out = tmp_path_factory.mktemp("fs-good") / "merged"
    res = _invoke(["merge", *map(str, shards), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for p in folder.iterdir():
        if p.is_file():
            (to / p.name).write_bytes(p.read_bytes())
    return to


@pytest.mark.parametrize(("kind", "code", "nth"), RUN_FAULTS)
def test_spectrum_on_a_failing_disk_keeps_the_earlier_run(
    roberta_dir: Path,
    good_run: Path,
    tmp_path: Path,
    faults: Faults,
    kind: str,
    code: int,
    nth: int,
) -> None:
    out = tmp_path / "run"
    assert _invoke(_spectrum_args(roberta_dir, out)).exit_code == 0
    before = digest(out)
    faults.arm(kind, out, code, nth)
    res = _invoke(_spectrum_args(roberta_dir, out, "--seed", "1", "--overwrite"))
    line = assert_one_error_line(res, str(out), REASONS[code], "nothing was replaced")
    assert faults.fired == 1, line
    assert digest(out) == before  # byte-identical, and no temporary file left behind
    assert SpectrumResult.read(out).stats.count == 3


@pytest.mark.parametrize(("kind", "code", "nth"), RUN_FAULTS)
def test_project_on_a_failing_disk_keeps_the_earlier_run(
    roberta_dir: Path, tmp_path: Path, faults: Faults, kind: str, code: int, nth: int
) -> None:
    out = tmp_path / "proj"
    res = _invoke(_project_args(roberta_dir, out))
    assert res.exit_code == 0, res.output
    before = digest(out)
    faults.arm(kind, out, code, nth)
    res = _invoke(_project_args(roberta_dir, out, "--proj-seed", "1", "--overwrite"))
    assert_one_error_line(res, str(out), REASONS[code])
    assert faults.fired == 1
    assert digest(out) == before


@pytest.mark.parametrize(("kind", "code", "nth"), RUN_FAULTS)
def test_merge_on_a_failing_disk_keeps_the_earlier_merge(
    shards: list[Path], tmp_path: Path, faults: Faults, kind: str, code: int, nth: int
) -> None:
    out = tmp_path / "merged"
    assert _invoke(["merge", *map(str, shards), "--out", str(out)]).exit_code == 0
    before = digest(out)
    faults.arm(kind, out, code, nth)
    res = _invoke(["merge", *map(str, shards), "--out", str(out), "--overwrite"])
    assert_one_error_line(res, str(out), REASONS[code], "nothing was replaced")
    assert faults.fired == 1
    assert digest(out) == before


def test_a_failed_first_write_leaves_no_folder(
    shards: list[Path], tmp_path: Path, faults: Faults
) -> None:
    out = tmp_path / "new" / "merged"
    faults.arm("npz", out, errno.ENOSPC)
    res = _invoke(["merge", *map(str, shards), "--out", str(out)])
    assert_one_error_line(res, "No space left on device")
    assert not out.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_figures_on_a_failing_disk_keep_the_earlier_figures(
    good_run: Path, tmp_path: Path, faults: Faults, code: int
) -> None:
    out = tmp_path / "figs"
    assert _invoke(["figures", str(good_run), "--out", str(out)]).exit_code == 0
    before = digest(out)
    faults.arm("savefig", out, code, nth=3)
    res = _invoke(["figures", str(good_run), "--out", str(out)])
    assert_one_error_line(res, REASONS[code])
    assert faults.fired == 1
    assert digest(out) == before  # the half-written figure replaced nothing


def test_run_files_and_figures_are_as_readable_as_the_umask_allows(
    good_run: Path, tmp_path: Path
) -> None:
    """Files are staged with mkstemp (mode 0600): figures came out readable by their owner
    only, unlike every other file the user's umask lets others read."""
    out = tmp_path / "figs"
    old = os.umask(0o022)
    try:
        assert _invoke(["figures", str(good_run), "--out", str(out)]).exit_code == 0
    finally:
        os.umask(old)
    written = [*out.iterdir(), *good_run.iterdir()]
    assert any(p.suffix == ".png" for p in written)
    for path in written:
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path: Path, faults: Faults
) -> None:
    rng = np.random.default_rng(0)
    s = -np.sort(-rng.random(size=(4, 2, 3, 8)), axis=-1)
    stats = SpectrumStats.empty(2, 3, 8, 2).add(s[:2])
    write_checkpoint(tmp_path, {"x": 1}, [stats], 2, 4, "lowrank spectrum", CODEC)
    before = digest(tmp_path)
    for kind, code, nth in [
        ("fsync", errno.EIO, 1),
        ("fsync", errno.ENOSPC, 2),
        ("rename", errno.EIO, 2),
    ]:
        faults.monkeypatch.undo()
        faults.arm(kind, tmp_path, code, nth)
        with pytest.raises(LowrankError, match=r"checkpoint\.(npz|json).*nothing was replaced"):
            write_checkpoint(
                tmp_path, {"x": 1}, [stats.add(s[2:])], 4, 4, "lowrank spectrum", CODEC
            )
        assert digest(tmp_path) == before, kind


def test_a_rename_that_cannot_be_undone_says_so(tmp_path: Path, faults: Faults) -> None:
    """Files renamed into place one by one (a checkpoint's, a figure's): when even putting
    the old files back fails, the line says the folder may be mixed."""
    from lowrank.runs.writing import bytes_writer, write_files

    folder = tmp_path / "r"
    write_files(folder, [("a.txt", bytes_writer(b"old a")), ("b.txt", bytes_writer(b"old b"))])
    faults.monkeypatch.setattr(os, "link", _refuse)  # no backup of the old files possible
    faults.arm("rename", folder, errno.EIO, nth=2)
    with pytest.raises(LowrankError, match="may mix old and new files: write it again"):
        write_files(folder, [("a.txt", bytes_writer(b"new a")), ("b.txt", bytes_writer(b"new"))])


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.EPERM, os.strerror(errno.EPERM))


# --- --out where no folder can be -----------------------------------------------------------

WRITERS = [
    *("spectrum", "project", "verify", "compare", "scaling", "efficiency", "merge"),
    "figures",
]


def _writer_args(command: str, model: Path, out: Path, runs: list[Path]) -> list[str]:
    """The cheapest call of each command that writes, with ``--out out``."""
    small = ["--model", str(model), "--out", str(out)]
    return {
        "spectrum": _spectrum_args(model, out),
        "project": _project_args(model, out),
        "verify": ["verify", "--seq-len", N, "--num-sequences", "1", "--k", "8", *small],
        "compare": ["compare", "--seq-len", N, "--num-sequences", "1", "--budget", "8", *small],
        "scaling": ["scaling", "--seq-len", "8,16,32", "--num-sequences", "2", *small],
        "efficiency": ["efficiency", "--n", "64", "--k", "8", "--layers", "1", "--out", str(out)],
        "merge": ["merge", *map(str, runs), "--out", str(out)],
        "figures": ["figures", str(runs[0]), "--out", str(out)],
    }[command]


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("depth", ["under", "is"])
def test_out_under_a_regular_file_is_one_line(
    roberta_dir: Path, shards: list[Path], tmp_path: Path, command: str, depth: str
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("precious\n")
    out = blocker / "sub" / "run" if depth == "under" else blocker
    before = [digest(p) for p in shards]
    res = _invoke(_writer_args(command, roberta_dir, out, shards))
    line = assert_one_error_line(res, str(blocker))
    assert "file" in line and "folder" in line, line
    assert blocker.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert [digest(p) for p in shards] == before


def test_a_folder_this_process_cannot_write_is_refused_before_the_run(
    roberta_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(os.fsdecode(path)) == locked and mode & os.W_OK:
            return False  # as a read-only folder answers a user who is not root
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    from lowrank.inputs import models

    monkeypatch.setattr(models, "load_model", _refuse)  # refused before the model loads
    res = _invoke(_spectrum_args(roberta_dir, locked / "run"))
    assert_one_error_line(res, f"cannot write in '{locked}'", "permission denied")
    assert list(locked.iterdir()) == []
