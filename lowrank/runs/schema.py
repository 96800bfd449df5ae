"""What every run.json holds, checked: the shared pydantic models and one-line messages.

Each family declares its own run.json schema (a subclass of :class:`RunMeta` or
:class:`AnalysisMeta`) in its ``format.py`` and hands it, with its format name and newest
``format_version``, to :func:`validate_meta` through its :class:`~lowrank.runs.formats.RunFormat`.
The models are strict for the fields they name (``"6"`` is not an integer, ``true`` is not a
number) and allow any other field (``extra="allow"``), so folders of earlier versions, and
fields added later, still open. Every failure is one :class:`~lowrank.errors.LowrankError`
line that names the file, the field and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lowrank.errors import LowrankError

Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(ge=0)]  # NaN fails ge: a NaN duration is refused


class Open(BaseModel):
    """Strict types for the fields named; any other field is allowed and left alone."""

    model_config = ConfigDict(extra="allow", strict=True)


class ModelInfo(Open):
    name: str
    kind: str | None = None
    path: str | None = None
    revision: str | None = None


class CorpusInfo(Open):
    dataset: str
    source: str | None = None
    split: str | None = None


class RunMeta(Open):
    """What every run.json holds."""

    format: str
    format_version: Positive = 1
    identity: dict[str, Any] = Field(default_factory=dict)
    command: str | None = None
    versions: dict[str, Any] | None = None


class AnalysisMeta(RunMeta):
    """A run over a model and a corpus (:meth:`lowrank.inputs.prepared.Prepared.meta`)."""

    model: ModelInfo
    corpus: CorpusInfo
    num_layers: Positive
    num_heads: Positive
    causal: bool | None = None


class CheckpointInfo(Open):
    """``checkpoint.json`` of a partial ``lowrank spectrum`` run."""

    identity: dict[str, Any]
    next_index: Count
    total: Count | None = None
    world_size: Positive | None = None

    @model_validator(mode="after")
    def _not_past_the_end(self) -> CheckpointInfo:
        if self.total is not None and self.next_index > self.total:
            raise ValueError(f"next_index {self.next_index} is above total {self.total}")
        return self


def check_version(meta: Mapping[str, Any], newest: int, path: Path) -> None:
    """Refuse a run written in a newer ``format_version`` than ``newest``, the one this
    lowrank reads for the run's kind."""
    from lowrank._version import __version__

    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        return  # a wrongly typed version is the schema's to report
    if version > newest:
        versions = meta.get("versions")
        writer = versions.get("lowrank") if isinstance(versions, dict) else None
        by = f"lowrank {writer}" if isinstance(writer, str) else "another lowrank"
        raise LowrankError(
            f"'{path}' was written by {by} (format version {version}); this lowrank "
            f"{__version__} reads format version <={newest}: upgrade lowrank"
        )


def validate_meta(meta: Mapping[str, Any], schema: type[RunMeta], newest: int, path: Path) -> None:
    """Check a run.json (its version against ``newest``, then ``schema``); one line on failure."""
    check_version(meta, newest, path)
    validate(schema, meta, path)


def validate(schema: type[BaseModel], data: Any, path: Path, advice: str = "") -> None:
    """Validate ``data`` against ``schema``; raise one line naming the file and the field."""
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise LowrankError(f"'{path}': {describe(errors[0])}{more}{advice}") from None


_PHRASES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
    "finite_number": "must be a finite number",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must not be empty",
}


def describe(error: Mapping[str, Any]) -> str:
    """``num_layers must be an integer, got 'six'`` from one pydantic error."""
    where = ""
    for part in error["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    kind = str(error["type"])
    if kind == "missing":
        return f"{where} is missing"
    if kind == "value_error":  # a model validator: its message names the fields
        text = str(error["msg"]).removeprefix("Value error, ")
        return f"{where}: {text}" if where else text
    phrase = _PHRASES.get(kind, str(error["msg"]).lower()).format(**(error.get("ctx") or {}))
    got = repr(error.get("input"))
    got = got if len(got) <= 40 else got[:37] + "..."
    return f"{where or 'run.json'} {phrase}, got {got}"
