"""The ``lowrank`` command line: a thin layer over the library.

One command per analysis family of the registry, built from the family's option declaration
(:mod:`lowrank.cli.commands`), and the commands on run folders (:mod:`lowrank.cli.runs`:
``figures``, ``merge``, ``summary``). Every command turns a :class:`lowrank.LowrankError` into
one line on stderr and exit code 2.
"""

from lowrank.cli import runs
from lowrank.cli.commands import add_family_commands
from lowrank.cli.common import main

add_family_commands(main)

__all__ = ["main", "runs"]
