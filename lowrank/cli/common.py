"""Shared pieces of the command line: the group, error handling, option types."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import shlex
import stat
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from lowrank._version import __version__
from lowrank.core.numeric import is_out_of_memory
from lowrank.core.options import naming
from lowrank.core.text import printable
from lowrank.errors import LowrankError

F = TypeVar("F", bound=Callable[..., Any])


class CommaList(click.ParamType):
    """``32,64,128``: a comma-separated list of ints, floats or choices.

    Whole numbers may be written as floats (``1e3``); a number that is not whole is passed on
    as a float, for the option's own check to refuse in its one message.
    """

    name = "list"

    def __init__(self, kind: type = int, choices: tuple[str, ...] | None = None) -> None:
        self.kind, self.choices = kind, choices

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail("give at least one value", param, ctx)
        out = []
        for item in items:
            if self.choices is not None:
                if item not in self.choices:
                    self.fail(f"{item!r} is not one of {', '.join(self.choices)}", param, ctx)
                out.append(item)
                continue
            out.append(self._number(item, param, ctx))
        return tuple(out)

    def _number(self, item: str, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.kind(item)
        except ValueError:
            pass
        try:
            number = float(item)
        except ValueError:
            self.fail(f"{item!r} is not a number", param, ctx)
        if self.kind is int and math.isfinite(number) and number == int(number):
            return int(number)
        return number


DEBUG_ENV = "LOWRANK_DEBUG"


def say(text: str, err: bool = False) -> None:
    """Print a line of the command line's output, control characters escaped (text from
    files must not drive the terminal: :func:`lowrank.core.text.printable`)."""
    click.echo(printable(text), err=err)


def _fail(message: str) -> None:
    say(f"error: {_one_line(message, 1000)}", err=True)
    sys.exit(2)


class OutputLost(OSError):
    """stdout refused the command's output (a full disk under ``> file``)."""


def flush_output() -> None:
    """Flush stdout and, when it is a file, sync it to disk: a full disk under
    ``lowrank summary RUN > table.csv`` is an error, not a truncated table and exit 0.

    Raises:
        OutputLost: the write or the sync failed.
    """
    stream = sys.stdout
    try:
        stream.flush()
        fd = stream.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return  # not a real file (a test runner's buffer)
    except OSError as exc:
        raise OutputLost(exc.errno, exc.strerror) from exc


def _output_lost(exc: OutputLost) -> None:
    """One line and exit code 2. When stdout still holds bytes it cannot write, the process
    ends at once: the interpreter's own last flush of them would add a traceback and turn
    the exit code into 120."""
    say(f"error: cannot write the output: {exc.strerror or exc}", err=True)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(2)
    sys.exit(2)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def handle_errors(func: F) -> F:
    """Turn domain errors into one line and exit code 2; Ctrl-C into exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LowrankError as exc:
            if _debugging():
                traceback.print_exc()
            _fail(str(exc))
        except KeyboardInterrupt:
            say("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


_DEBUG = {"on": False}
_OFF = ("", "0", "false", "no", "off")


def _debugging() -> bool:
    return _DEBUG["on"] or os.environ.get(DEBUG_ENV, "").strip().lower() not in _OFF


class LowrankGroup(click.Group):
    """The command group, answering every failure with one line.

    Usage mistakes (an unknown option, a value of the wrong type): ``error: ...``, exit 2.
    Running out of memory: one line naming the options that lower it, exit 2. Any other
    exception: ``internal error: ...``, exit 1, with the full traceback under ``--debug``
    (accepted anywhere on the line) or ``LOWRANK_DEBUG=1``.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        with shown_messages(), naming("cli"):  # every message names the flags
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)

    def _main(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        standalone_mode: bool,
        **extra: Any,
    ) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        _DEBUG["on"] = "--debug" in words
        words = [w for w in words if w != "--debug"]
        if not standalone_mode:
            return super().main(words, prog_name, complete_var, False, **extra)
        try:
            code = super().main(words, prog_name, complete_var, False, **extra)
            flush_output()
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "lowrank"
            _fail(f"{_one_line(exc.format_message())} (see '{where} --help')")
        except click.ClickException as exc:
            say(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            say("interrupted: nothing was written", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `lowrank summary RUN | head`: the reader left, not an error
            sys.stderr.close()
            sys.exit(0)
        except OutputLost as exc:
            _output_lost(exc)
        except Exception as exc:
            if _debugging():
                raise
            if isinstance(exc, OSError) and exc.errno is not None:
                # the file system or a stream refused (a name too long, a loop of links, a
                # full disk under stdout): the environment, not a bug
                if exc.filename:
                    _fail(f"cannot use '{_one_line(str(exc.filename), 120)}': {exc.strerror}")
                _output_lost(OutputLost(exc.errno, exc.strerror or str(exc)))
            if is_out_of_memory(exc):
                _fail(
                    f"out of memory ({type(exc).__name__}): lower --batch-size, --seq-len or "
                    "--n, or use a machine or --device with more free memory"
                )
            say(
                f"internal error: {type(exc).__name__}: {_one_line(str(exc))}; please report "
                "it with the output of the same command run with --debug",
                err=True,
            )
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=LowrankGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowrank")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the full traceback of an error (accepted anywhere on the line; or set "
    "LOWRANK_DEBUG=1).",
)
def main(debug: bool) -> None:
    """Empirical low-rank analysis of transformer self-attention (Linformer, Wang et al. 2020).

    Start with `lowrank spectrum`: it runs the embedded pretrained MiniLM on the embedded
    sample corpus, offline, and writes the paper's Figure 1 statistics to a run folder.
    """


class _LineHandler(logging.Handler):
    """The library's log records as the CLI's lines on stderr: ``warning: ...`` or plain."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"warning: {text}"
        say(text, err=True)


@contextmanager
def shown_messages() -> Iterator[None]:
    """Route the ``lowrank`` logger (the library never prints) to stderr while a command
    runs, and put it back as it was after (a CLI call inside a notebook leaves the library
    silent again)."""
    from lowrank.errors import WarningsHandler

    logger = logging.getLogger("lowrank")
    handler, level, propagate = _LineHandler(), logger.level, logger.propagate
    as_warnings = [h for h in logger.handlers if isinstance(h, WarningsHandler)]
    for other in as_warnings:  # the line handler says it already
        logger.removeHandler(other)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        for other in as_warnings:
            logger.addHandler(other)
        logger.setLevel(level)
        logger.propagate = propagate


def command_line(ctx: click.Context) -> str:
    """The command that reproduces this invocation: the options the user set, canonical."""
    from click.core import ParameterSource

    names, node = [], ctx
    while node.parent is not None:  # the root's name depends on how it was started
        names.append(node.info_name or "")
        node = node.parent
    words = ["lowrank", *reversed(names)]
    for param in ctx.command.params:
        name = param.name or ""
        if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            continue
        value = ctx.params.get(name)
        flag = param.opts[0] if param.opts else name
        if isinstance(param, click.Option) and param.is_flag:
            words += [flag] if value else []
        elif isinstance(param, click.Argument):
            words += [str(v) for v in (value if isinstance(value, tuple) else (value,))]
        elif isinstance(value, tuple):  # a CommaList: written back as it is typed
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)
