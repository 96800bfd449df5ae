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
