"""The public Python API: one function per command, each returning a result object.

>>> import lowrank
>>> res = lowrank.spectrum("minilm", num_sequences=4)      # doctest: +SKIP
>>> res.summary()                                            # doctest: +SKIP

Each function takes the CLI's options (same names with underscores, same defaults, same
validation), raises :class:`lowrank.LowrankError` with the CLI's one-line messages, reports
progress through ``tqdm.auto`` (``progress=False`` silences it) and messages through
``logging`` (logger ``"lowrank"``); it never prints.
"""

from __future__ import annotations

from lowrank.comparisons.api import CompareResult, compare
from lowrank.costs.api import EfficiencyResult, efficiency
from lowrank.errors import LowrankError
from lowrank.hooks.public import Captured, capture
from lowrank.lengths.api import ScalingResult, scaling
from lowrank.projections.api import ProjectionResult, VerifyResult, project, verify
from lowrank.runs.result import RunResult, load
from lowrank.spectra.api import SpectrumResult, merge, spectrum

__all__ = [
    "Captured",
    "CompareResult",
    "EfficiencyResult",
    "LowrankError",
    "ProjectionResult",
    "RunResult",
    "ScalingResult",
    "SpectrumResult",
    "VerifyResult",
    "capture",
    "compare",
    "efficiency",
    "load",
    "merge",
    "project",
    "scaling",
    "spectrum",
    "verify",
]
