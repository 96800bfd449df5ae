"""The ``lowrank`` command line: a thin layer over the library.

One command per analysis family of the registry, built from the family's option declaration
(:mod:`lowrank.cli.commands`), and the commands on run folders (:mod:`lowrank.cli.runs`:
``figures``, ``merge``, ``summary``). Every command turns a :class:`lowrank.LowrankError` into
one line on stderr and exit code 2, and Ctrl-C into one line and exit code 130 -- also while
this package is being imported, before the commands exist (:func:`interrupt_quietly`).
"""

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def interrupt_quietly() -> Iterator[None]:
    """Within the block, Ctrl-C ends the process with one line and exit code 130 instead of
    a traceback from whatever module was being imported; the previous handler is put back
    after. Only where Python's own handler is in place (a program with its own keeps it)."""
    usable = threading.current_thread() is threading.main_thread()
    if not usable or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        os.write(2, b"interrupted: nothing was written\n")
        os._exit(130)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


with interrupt_quietly():
    from lowrank.cli import runs
    from lowrank.cli.commands import add_family_commands
    from lowrank.cli.common import main

    add_family_commands(main)

__all__ = ["interrupt_quietly", "main", "runs"]
