"""The ``lowrank`` command line: a thin layer over the library (one module per command family).

Every command turns a :class:`lowrank.LowrankError` into one line on stderr and exit code 2.
"""

from lowrank.cli import comparisons, costs, lengths, projections, runs, spectrum
from lowrank.cli.common import main

__all__ = ["comparisons", "costs", "lengths", "main", "projections", "runs", "spectrum"]
