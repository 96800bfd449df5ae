"""lowrank: how low-rank is self-attention, and how well do Linformer projections fit it?

The public API (see ``lowrank.api``)::

    import lowrank
    res = lowrank.spectrum(model, tokenizer, texts, seq_len=512)
    res.summary()

Importing ``lowrank`` does no work: torch and transformers load on first use of a function.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lowrank.errors import LowrankError

# The library never prints: its messages go to this logger, silent until the application
# configures logging (the CLI prints them on stderr).
logging.getLogger("lowrank").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from lowrank.api import (
        Captured,
        CompareResult,
        EfficiencyResult,
        ProjectionResult,
        RunResult,
        ScalingResult,
        SpectrumResult,
        VerifyResult,
        capture,
        compare,
        efficiency,
        load,
        merge,
        project,
        scaling,
        spectrum,
        verify,
    )

__version__ = "0.1.0"
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
    "__version__",
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lowrank import api

        return getattr(api, name)
    raise AttributeError(f"module 'lowrank' has no attribute {name!r}")
