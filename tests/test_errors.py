"""The CLI's last line of defence: usage mistakes, internal errors, --debug, out of memory."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.cli import runs as commands
from lowrank.errors import LowrankError


def _run(args: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, args, env=env or {"LOWRANK_DEBUG": ""})


def _one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output + result.stderr
    return str(lines[0])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["spectrum", "--batch-size", "0"], "--batch-size"),
        (["spectrum", "--bogus"], "No such option '--bogus'"),
        (["nonesuch"], "No such command 'nonesuch'"),
        (["spectrum", "--seq-len", "abc"], "'abc' is not a valid integer"),
        (["figures"], "Missing argument"),
    ],
)
def test_usage_mistakes_are_one_line_exit_2(args: list[str], fragment: str) -> None:
    result = _run(args)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert line.startswith("error: ") and fragment in line
    assert "--help" in line  # says where to look


def _boom(*args: object, **kwargs: object) -> None:
    raise ValueError("a bug\nspanning lines")


def test_unexpected_exception_is_one_internal_error_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setattr(commands, "load", _boom)
    result = _run(["figures", str(tmp_path)])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line.startswith("internal error: ValueError: a bug spanning lines")
    assert "--debug" in line


@pytest.mark.parametrize("how", ["flag-after", "flag-before", "env"])
def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path, how: str) -> None:
    monkeypatch.setattr(commands, "load", _boom)
    args = ["figures", str(tmp_path)]
    env = {"LOWRANK_DEBUG": ""}
    if how == "flag-after":
        args.append("--debug")
    elif how == "flag-before":
        args.insert(0, "--debug")
    else:
        env = {"LOWRANK_DEBUG": "1"}
    result = _run(args, env)
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)  # re-raised for the traceback


def test_debug_keeps_the_one_line_and_exit_2_of_a_known_error(tmp_path) -> None:
    result = _run(["--debug", "figures", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: run folder")


@pytest.mark.parametrize(
    "exc",
    [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")],
)
def test_out_of_memory_anywhere_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path, exc: BaseException
) -> None:
    def oom(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(commands, "load", oom)
    result = _run(["figures", str(tmp_path)])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert line.startswith("error: out of memory") and "--batch-size" in line


def test_lowrank_error_is_still_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise LowrankError("a clear line")

    monkeypatch.setattr(commands, "load", refuse)
    result = _run(["figures", str(tmp_path)])
    assert result.exit_code == 2
    assert _one_error_line(result) == "error: a clear line"


def test_the_cli_leaves_the_library_logger_as_it_found_it(tmp_path) -> None:
    import logging

    logger = logging.getLogger("lowrank")
    before = (list(logger.handlers), logger.level, logger.propagate)
    seen = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    result = _run(["figures", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    spy = Spy()
    logger.addHandler(spy)
    try:
        logging.getLogger("lowrank.families.spectrum.workflow").warning("after the CLI")
    finally:
        logger.removeHandler(spy)
    assert seen == ["after the CLI"]  # still reaches the application's handlers


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OSError(36, "File name too long", "y" * 300), "error: cannot use 'yyy"),
        (OSError(28, "No space left on device"), "error: cannot write the output: No space"),
    ],
)
def test_a_refusing_file_system_is_one_line_exit_2(monkeypatch, tmp_path, exc, line) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(commands, "load", refuse)
    result = _run(["figures", str(tmp_path)])
    assert result.exit_code == 2
    assert _one_error_line(result).startswith(line)


def test_a_message_with_a_newline_stays_one_line(tmp_path) -> None:
    result = _run(["summary", str(tmp_path / "no\nrun")])
    assert result.exit_code == 2
    assert _one_error_line(result) == f"error: run folder '{tmp_path / 'no run'}' does not exist"


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("yes", True), ("false", False), ("0", False), ("off", False), ("", False)],
)
def test_lowrank_debug_values(monkeypatch, value, on) -> None:
    from lowrank.cli import common

    monkeypatch.setenv("LOWRANK_DEBUG", value)
    monkeypatch.setitem(common._DEBUG, "on", False)
    assert common._debugging() is on


# --- fast answers: what is wrong is said before torch and transformers load (issue 27) -------

ORDER_SCRIPT = """
import json, sys
from lowrank.cli import main
out = []
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="lowrank")
    except SystemExit as exc:
        out.append([exc.code, "torch" in sys.modules, "transformers" in sys.modules])
print(json.dumps(out))
"""


def _in_fresh_process(cases: list[list[str]], **env: str) -> tuple[list[list[object]], str]:
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", ORDER_SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=os.environ | {"LOWRANK_DEBUG": "", **env},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_usage_errors_and_missing_files_are_answered_before_torch_is_imported(tmp_path) -> None:
    """The order, not the time: each error comes while neither torch nor transformers is in
    ``sys.modules`` (they used to cost 6-16 s before the one line)."""
    cases = [
        ["summary", str(tmp_path / "gone")],
        ["figures", str(tmp_path / "gone")],
        ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")],
        ["spectrum", "--seq-len", "0"],
        ["spectrum", "--data", str(tmp_path / "none.txt")],
        ["spectrum", "--model", str(tmp_path / "nomodel")],
        ["spectrum", "--model", str(tmp_path / "x.gguf")],
        ["spectrum", "--model", "nosuchorg/nosuchmodel"],
        ["spectrum", "--model", "roberta-base"],
        ["spectrum", "--dataset", "wiki103"],
        ["project", "--data", str(tmp_path / "none.txt")],
        ["compare", "--model", str(tmp_path / "nomodel")],
    ]
    results, stderr = _in_fresh_process(cases, HF_HUB_OFFLINE="1")
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(cases), stderr
    for args, (code, torch_loaded, transformers_loaded), line in zip(
        cases, results, errors, strict=True
    ):
        assert code == 2, (args, line)
        assert not torch_loaded and not transformers_loaded, (args, line)
    assert "model directory" in errors[5] and "GGUF file" in errors[6]
    assert "is not in the Hugging Face cache" in errors[7]


def test_an_offline_hub_preset_says_what_to_do_instead(tmp_path) -> None:
    """``--model roberta-base`` offline used to ask "did you mean the preset
    'roberta-base'?" of a user who typed that preset."""
    _, stderr = _in_fresh_process([["spectrum", "--model", "roberta-base"]], HF_HUB_OFFLINE="1")
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "did you mean" not in line
    assert "the preset 'roberta-base' is the hub model FacebookAI/roberta-base" in line
    assert "HF_HOME" in line and "--model DIR" in line and "hf download" in line


# --- what reaches the terminal (issue 28, items 6, 12, 13) -------------------------------------

FULL_DISK = """
import errno, io, os, sys
from lowrank.cli import main

class Full(io.RawIOBase):  # a file on a disk with `room` bytes left
    def __init__(self, room):
        self.room = room
    def writable(self):
        return True
    def write(self, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), self.room)
        self.room -= n
        return n

sys.stdout = io.TextIOWrapper(io.BufferedWriter(Full(int(sys.argv[1]))), encoding="utf-8")
main(sys.argv[2:], prog_name="lowrank")
"""

SYNC_FAILS = """
import errno, os, sys
from lowrank.cli import main

def fsync(fd):  # the disk took the bytes into its cache, then could not keep them
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

os.fsync = fsync
main(sys.argv[1:], prog_name="lowrank")
"""


@pytest.fixture(scope="module")
def saved_run(roberta_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.helpers import SEQ_LEN

    out = tmp_path_factory.mktemp("errors") / "run"
    res = _run(["spectrum", "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN),
                "--num-sequences", "2", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("how", ["partial-write", "sync"])
def test_a_table_cut_short_by_a_full_disk_is_an_error(saved_run, tmp_path, how: str) -> None:
    """``lowrank summary RUN --format csv > file`` on a full disk used to exit 0 with 4096 of
    6975 bytes written."""
    import subprocess
    import sys

    args = ["summary", str(saved_run), "--format", "csv"]
    if how == "partial-write":
        cmd = [sys.executable, "-c", FULL_DISK, "100", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    else:
        with (tmp_path / "table.csv").open("w") as sink:
            cmd = [sys.executable, "-c", SYNC_FAILS, *args]
            proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: cannot write the output: No space left on device"], proc.stderr


def test_control_characters_from_a_file_are_escaped(saved_run, roberta_dir, tmp_path) -> None:
    """A run.json ``command`` holding ``ESC ] 0;... BEL`` used to retitle the terminal."""
    import json
    import shutil

    from tests.helpers import SEQ_LEN

    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    meta = json.loads((out / "run.json").read_text())
    meta["command"] = "\x1b]0;owned\x07lowrank spectrum"
    meta["identity"] = {"other": 1}
    (out / "run.json").write_text(json.dumps(meta))
    res = _run(["spectrum", "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN),
                "--num-sequences", "2", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "\x1b" not in line and "\x07" not in line
    assert "holds another run (\\x1b]0;owned\\x07lowrank spectrum)" in line


INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys

# as in a terminal: a shell without job control starts background jobs with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)

class Interrupt(importlib.abc.MetaPathFinder):  # Ctrl-C while the CLI's modules load
    def find_spec(self, name, path=None, target=None):
        if name == "lowrank.cli.commands":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
from lowrank.cli import main
main(["summary", "nowhere"], prog_name="lowrank")
"""


def test_ctrl_c_while_the_command_line_loads_is_one_line_and_130() -> None:
    """SIGINT 0.01-0.06 s after start used to print a 15-28 line KeyboardInterrupt traceback."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["interrupted: nothing was written"], proc.stderr


def test_figures_are_never_written_through_a_symbolic_link(saved_run, tmp_path) -> None:
    """``RUN/figures`` a link to another folder: lowrank wrote the figures there."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    target = tmp_path / "precious"
    target.mkdir()
    (target / "figure1.png").write_bytes(b"mine")
    (run / "figures").symlink_to(target)
    res = _run(["figures", str(run), "--out", str(run / "figures")])
    assert res.exit_code == 2
    assert "is a symbolic link: lowrank does not write through links" in _one_error_line(res)
    assert [p.name for p in target.iterdir()] == ["figure1.png"]
    assert (target / "figure1.png").read_bytes() == b"mine"
