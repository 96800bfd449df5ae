"""The registry of analysis families: the one list every front end reads.

``lowrank.load``, ``lowrank summary``, ``lowrank figures``, the CLI's command list and the
API's function list all come from :data:`FAMILIES`. Adding a family is its folder under
``lowrank/families/`` (declaring its :class:`~lowrank.runs.family.Family` in its
``__init__.py``) plus one line here; docs/development.md has the recipe.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank.errors import LowrankError
from lowrank.runs.family import Family

if TYPE_CHECKING:
    from lowrank.runs.result import RunResult

# One line per family, in the order `lowrank --help` lists them.
FAMILIES: tuple[str, ...] = (
    "spectrum",
    "project",
    "verify",
    "efficiency",
    "compare",
    "scaling",
    "keys",
)


def family(name: str) -> Family:
    """The :class:`Family` record of the family ``name`` (imports only its ``__init__``)."""
    if name not in FAMILIES:
        raise LowrankError(f"no analysis family '{name}': lowrank has {', '.join(FAMILIES)}")
    found = importlib.import_module(f"lowrank.families.{name}").FAMILY
    if not isinstance(found, Family) or found.name != name:
        raise TypeError(f"lowrank.families.{name}.FAMILY is not the Family record of '{name}'")
    return found


def families() -> list[Family]:
    """Every registered family, in :data:`FAMILIES` order."""
    return [family(name) for name in FAMILIES]


def family_of_format(fmt: object) -> Family | None:
    """The family whose run folders carry run.json ``format`` ``fmt`` (None: no family)."""
    return next((f for f in families() if f.format == fmt), None)


def load(path: str | os.PathLike[str]) -> RunResult:
    """Open any run folder and return the result type of the command that wrote it.

    Raises:
        LowrankError: the folder is missing, is not a lowrank run, or is damaged.
    """
    # imported here: numpy and pydantic cost `import lowrank` 0.3 s (measured), and the
    # registry is imported by it to name the API
    from lowrank.runs.folders import RUN_JSON, missing_folder, read_json

    if not isinstance(path, str | os.PathLike):
        raise LowrankError(f"load({path!r}): give the run folder as a path or a string")
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists():
            raise LowrankError(f"'{folder}' is a file, not a run folder: give the folder")
        missing_folder(folder)  # names what an interrupted write left beside it
    if not (folder / RUN_JSON).is_file():
        raise LowrankError(f"'{folder}' is not a run folder: it has no {RUN_JSON}")
    meta = read_json(folder / RUN_JSON)
    fmt = meta.get("format") if isinstance(meta, dict) else None
    found = family_of_format(fmt)
    if found is None:
        known = ", ".join(sorted(f.format for f in families()))
        raise LowrankError(f"'{folder / RUN_JSON}' has format {fmt!r}; lowrank reads {known}")
    result: type[RunResult] = found.load_result()
    return result.read(folder)
