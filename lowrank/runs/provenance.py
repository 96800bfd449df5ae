"""What ``run.json`` records about how a run was asked for: the command, versions and time.

One place for every command: the CLI passes its command line; a call from Python records the
call itself, e.g. ``lowrank.compare(model='minilm', budget=(8, 16))``, with only the options
that differ from the function's defaults and objects (a model, a tensor) shown by type.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["Provenance", "created_now", "package_versions", "provenance_record", "python_call"]


@dataclass(frozen=True)
class Provenance:
    """What ``run.json`` records about how a run was asked for.

    Attributes:
        command: the command that reproduces the run: the CLI's command line, or the Python
            call.
        versions: lowrank, torch, transformers, numpy and Python versions.
        created: ISO time stamp (UTC, seconds).
    """

    command: str
    versions: dict[str, str]
    created: str

    @classmethod
    def of(
        cls, function: Callable[..., object], options: dict[str, object], command: str | None
    ) -> Provenance:
        """The provenance of a call of ``function`` with ``options`` (its keyword arguments);
        ``command`` (the CLI's command line) replaces the Python call when given."""
        return cls(
            command if command is not None else python_call(function, options),
            package_versions(),
            created_now(),
        )


def provenance_record(
    function: Callable[..., object], call: dict[str, object], command: str | None
) -> dict[str, Any]:
    """run.json's ``command``, ``created`` and ``versions`` of a call of ``function`` (its
    arguments as given), and ``start``, the ``time.perf_counter()`` elapsed time counts
    from."""
    return {
        "start": time.perf_counter(),
        "command": command if command is not None else python_call(function, call),
        "created": created_now(),
        "versions": package_versions(),
    }


def created_now() -> str:
    """The current time as run.json records it (ISO 8601, UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """The versions run.json records: lowrank, torch, transformers, numpy, python."""
    import numpy
    import torch
    import transformers

    from lowrank._version import __version__

    return {
        "lowrank": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


def python_call(function: Callable[..., object], options: dict[str, object]) -> str:
    """``lowrank.<name>(...)`` with the options that differ from the function's defaults."""
    params = inspect.signature(function).parameters
    shown = []
    for name, value in options.items():
        if name == "command":
            continue
        default = params[name].default if name in params else inspect.Parameter.empty
        if value is default or (_plain(value) and _plain(default) and value == default):
            continue
        shown.append(f"{name}={_show(value)}")
    return f"lowrank.{function.__name__}({', '.join(shown)})"


def _plain(value: object) -> bool:
    if isinstance(value, tuple | list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool | os.PathLike)


def _show(value: object) -> str:
    """A value as the call shows it: literals as typed, objects by type (and size or name)."""
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    if _plain(value):
        text = repr(value)
        if len(text) <= 200:
            return text
    if hasattr(value, "config") and hasattr(value, "forward"):  # a model
        name = getattr(value.config, "name_or_path", "") or ""
        return f"<{type(value).__name__}{' ' + str(name) if name else ''}>"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} {list(shape)}>"
    size = len(value) if hasattr(value, "__len__") else None
    return f"<{type(value).__name__}{f' of {size}' if size is not None else ''}>"
