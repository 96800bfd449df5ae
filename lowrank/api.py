"""The public Python API: one function per analysis family, each returning a result object.

>>> import lowrank
>>> res = lowrank.spectrum("minilm", num_sequences=4)      # doctest: +SKIP
>>> res.summary()                                            # doctest: +SKIP

The names come from the family registry (:mod:`lowrank.registry`): every family's function
(``lowrank.spectrum``, named after its command) and result type (``SpectrumResult``), and
the shared ``load``, ``capture``, ``Captured``, ``RunResult`` and ``LowrankError``. Each
function takes its command's options (declared once in the family's ``options.py``: same
names with underscores, same defaults, same checks), raises :class:`lowrank.LowrankError`
naming the keyword argument at fault, reports progress through ``tqdm.auto``
(``progress=False`` silences it) and messages through ``logging`` (logger ``"lowrank"``); it
never prints.
"""

from __future__ import annotations

from typing import Any

from lowrank.registry import families
from lowrank.runs.family import resolve

SHARED: dict[str, str] = {
    "LowrankError": "lowrank.errors:LowrankError",
    "RunResult": "lowrank.runs.result:RunResult",
    "load": "lowrank.registry:load",
    "capture": "lowrank.hooks.public:capture",
    "Captured": "lowrank.hooks.public:Captured",
}


def public_names() -> dict[str, str]:
    """Every public name of ``lowrank`` and the dotted path of its object."""
    names = dict(SHARED)
    for family in families():
        for path in (family.api, family.result, *family.extras):
            names[path.rpartition(":")[2]] = path
    return names


def __getattr__(name: str) -> Any:
    path = public_names().get(name)
    if path is None:
        raise AttributeError(f"module 'lowrank.api' has no attribute {name!r}")
    return resolve(path)


__all__ = sorted(public_names())
