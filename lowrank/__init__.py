"""lowrank: how low-rank is self-attention, and how well do Linformer projections fit it?

The public API (see ``lowrank.api``)::

    import lowrank
    res = lowrank.spectrum(model, tokenizer, texts, seq_len=512)
    res.summary()

Importing ``lowrank`` does no work: torch and transformers load on first use of a function.
Every analysis family of the registry (:mod:`lowrank.registry`) is a function here, named
after its command, with its result type.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lowrank._version import __version__
from lowrank.errors import LowrankError, LowrankWarning, WarningsHandler

# The library never prints: its messages go to this logger, silent until the application
# configures logging (the CLI prints them on stderr); only WARNING records (less than was
# asked) surface on their own, as LowrankWarning, where nothing else would show them.
logging.getLogger("lowrank").addHandler(WarningsHandler())

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the registry decides
    from lowrank.families.compare.api import CompareResult, compare  # noqa: F401
    from lowrank.families.efficiency.api import EfficiencyResult, efficiency  # noqa: F401
    from lowrank.families.keys.api import KeysResult, keys  # noqa: F401
    from lowrank.families.project.api import ProjectionResult, project  # noqa: F401
    from lowrank.families.scaling.api import ScalingResult, scaling  # noqa: F401
    from lowrank.families.spectrum.api import SpectrumResult, merge, spectrum  # noqa: F401
    from lowrank.families.verify.api import VerifyResult, verify  # noqa: F401
    from lowrank.hooks.public import Captured, capture  # noqa: F401
    from lowrank.registry import load  # noqa: F401
    from lowrank.runs.result import RunResult  # noqa: F401


def _names() -> dict[str, str]:
    from lowrank.api import public_names

    return public_names()


def __getattr__(name: str) -> Any:
    if name in _names():
        from lowrank import api

        return getattr(api, name)
    raise AttributeError(f"module 'lowrank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_names()})


__all__ = [
    "LowrankError",
    "LowrankWarning",
    "__version__",
    *sorted(set(_names()) - {"LowrankError", "LowrankWarning"}),
]
