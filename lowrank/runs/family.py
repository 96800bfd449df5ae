"""What an analysis family is, as the registry and every front end see it.

A family (``spectrum``, ``project``, ...) is one folder under ``lowrank/families/`` named
after its command. Its ``__init__.py`` declares one :class:`Family` record; everything heavy
is named by a dotted path (``"package.module:attribute"``) and imported only when used, so
that listing the commands (``lowrank --help``) loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


def resolve(path: str) -> Any:
    """The object ``"package.module:attribute"`` names (importing the module)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Family:
    """One analysis family, declared once in its folder's ``__init__.py``.

    Attributes:
        name: the command (``lowrank spectrum``) and the API function (``lowrank.spectrum``).
        format: run.json's ``format`` of its run folders (``lowrank-<name>`` by convention).
        summary: one line for ``lowrank --help``.
        options: the :class:`~lowrank.core.options.Options` declaration (dotted path).
        api: the Python function (dotted path).
        result: the result type the API returns and ``lowrank.load`` reads (dotted path).
        figures: ``(results, out, **choices) -> list[Path]``, drawing saved runs of this
            family for ``lowrank figures`` (dotted path; None: the family draws none).
        torchrun: whether the command may run under torchrun (every rank runs it).
        extras: further public functions of the family (dotted paths), e.g. spectrum's
            ``merge``.
    """

    name: str
    format: str
    summary: str
    options: str
    api: str
    result: str
    figures: str | None = None
    torchrun: bool = False
    extras: tuple[str, ...] = ()

    def load_options(self) -> Any:
        return resolve(self.options)

    def load_api(self) -> Any:
        return resolve(self.api)

    def load_result(self) -> Any:
        return resolve(self.result)

    def load_figures(self) -> Any:
        return resolve(self.figures) if self.figures else None
