"""The run-folder contract, checked: a ``run.json`` schema per run kind, and array specs.

Every reader opens ``run.json`` through :func:`lowrank.runs.folders.read_meta`, which calls
:func:`validate_meta`: the ``format_version`` must be one this lowrank reads, and the fields
some reader uses must be present with the right types (pydantic, strict: ``"6"`` is not an
integer, ``true`` is not a number). Other fields are kept and not checked
(``extra="allow"``), so folders of earlier versions, and fields added later, still open.

Arrays are checked by :func:`check_arrays` against an :class:`ArraySpec` per array, built
from ``run.json`` by the ``*_array_spec`` functions below: dtype kind, shape and
finiteness, before any number is used. Each spec documents which arrays may hold NaN (an
undefined statistic, e.g. a method that does not apply to a causal model).

Every failure is one :class:`~lowrank.errors.LowrankError` line that names the file, the
field or array, and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lowrank.errors import LowrankError

# The newest format_version of each run kind that this lowrank reads. A writer that bumps
# its format_version bumps it here too (tests/test_runs.py checks the pairs it can see).
FORMAT_VERSIONS: dict[str, int] = {
    "lowrank-spectrum": 1,
    "lowrank-projection": 2,
    "lowrank-verify": 2,
    "lowrank-efficiency": 2,
    "lowrank-compare": 1,
    "lowrank-scaling": 1,
}

Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(ge=0)]  # NaN fails ge: a NaN duration is refused


class _Open(BaseModel):
    """Strict types for the fields named; any other field is allowed and left alone."""

    model_config = ConfigDict(extra="allow", strict=True)


class ModelInfo(_Open):
    name: str
    kind: str | None = None
    path: str | None = None
    revision: str | None = None


class CorpusInfo(_Open):
    dataset: str
    source: str | None = None
    split: str | None = None


class Shard(_Open):
    """The i-th of N contiguous parts of the sequences (``lowrank spectrum --shard i/N``)."""

    index: Positive
    count: Positive

    @model_validator(mode="after")
    def _inside(self) -> Shard:
        if self.index > self.count:
            raise ValueError(f"shard index {self.index} is above its count {self.count}")
        return self


class RunMeta(_Open):
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


class Precision(_Open):
    """``--precision``: the target half-width and the one reached (inf: too few sequences)."""

    target: float
    achieved_half_width: float | None


class RankShare(_Open):
    """What one rank of a torchrun launch did."""

    rank: Count
    host: str
    device: str
    num_sequences: Count
    batches: Count
    compute_seconds: float


class SpectrumMeta(AnalysisMeta):
    """``lowrank spectrum`` (and ``merge``, and each ``n<n>`` folder of ``scaling``)."""

    seq_len: Positive
    num_sequences: Count | None = None
    heatmap_index: Positive | None = None
    shard: Shard | None = None
    sequence_policy: dict[str, Any] = Field(default_factory=dict)
    analysis_seconds: Seconds | None = None
    precision: Precision | None = None
    world_size: Positive | None = None
    ranks: list[RankShare] | None = None

    @model_validator(mode="after")
    def _index_inside(self) -> SpectrumMeta:
        if self.heatmap_index is not None and self.heatmap_index > self.seq_len:
            raise ValueError(f"heatmap_index {self.heatmap_index} is above seq_len {self.seq_len}")
        return self


class EffectRow(_Open):
    """One row of a projection run's model-level effect."""

    method: str
    sharing: str
    k: Positive | None  # None: a baseline, the same at every k
    relative_error: float  # NaN allowed: undefined for that configuration
    cosine: float


class BaselineTest(_Open):
    """One paired test of a projection run: a method against a trivial baseline, at one k
    (what the verdicts of the report and ``summary()`` are read from)."""

    kind: str
    row: str
    metric: str
    k: Positive
    baseline: str
    mean_diff: float  # NaN allowed: one sequence
    significant: bool


class ModelEffect(_Open):
    mode: str | None = None
    results: list[EffectRow] = Field(default_factory=list)


class ProjectionMeta(AnalysisMeta):
    """``lowrank project``."""

    seq_len: Positive
    num_sequences: Count
    heatmap_k: Positive
    model_effect: ModelEffect | None = None
    baseline_tests: list[BaselineTest] | None = None


class CompareSettings(_Open):
    seed: Count


class CompareMeta(AnalysisMeta):
    """``lowrank compare``."""

    seq_len: Positive
    num_sequences: Count
    compare: CompareSettings
    focus_budget: Positive
    winner_metric: str
    oracles: list[str] | None = None
    finding: str | None = None


class VerifyMeta(AnalysisMeta):
    """``lowrank verify``."""

    seq_len: Positive
    eps: Annotated[list[float], Field(min_length=1)]
    k: Annotated[list[Positive], Field(min_length=1)]


class Hardware(_Open):
    gpu: str | None = None
    processor: str | None = None
    torch_threads: Positive | None = None

    @model_validator(mode="after")
    def _named(self) -> Hardware:
        if self.gpu is None and (self.processor is None or self.torch_threads is None):
            raise ValueError("hardware names neither a gpu nor a processor and torch_threads")
        return self


class Stack(_Open):
    layers: Positive
    hidden: Positive


class EfficiencyMeta(RunMeta):
    """``lowrank efficiency`` (no model or corpus: a stack of random layers)."""

    hardware: Hardware
    stack: Stack
    n: Annotated[list[Positive], Field(min_length=1)]
    k: Annotated[list[Positive], Field(min_length=1)]
    dtype: str
    batch: Positive | None = None
    memory_budget_gib: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    repeats: Positive | None = None


class ScalingMeta(AnalysisMeta):
    """``lowrank scaling`` (its top folder; each ``n<n>`` is a spectrum run)."""

    ns: Annotated[list[Positive], Field(min_length=1)]


SCHEMAS: dict[str, type[RunMeta]] = {
    "lowrank-spectrum": SpectrumMeta,
    "lowrank-projection": ProjectionMeta,
    "lowrank-verify": VerifyMeta,
    "lowrank-efficiency": EfficiencyMeta,
    "lowrank-compare": CompareMeta,
    "lowrank-scaling": ScalingMeta,
}


class CheckpointInfo(_Open):
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


def check_version(meta: Mapping[str, Any], fmt: str, path: Path) -> None:
    """Refuse a run written in a newer ``format_version`` than this lowrank reads."""
    from lowrank import __version__

    version = meta.get("format_version", 1)
    newest = FORMAT_VERSIONS.get(fmt)
    if newest is None or not isinstance(version, int) or isinstance(version, bool):
        return  # a wrongly typed version is the schema's to report
    if version > newest:
        versions = meta.get("versions")
        writer = versions.get("lowrank") if isinstance(versions, dict) else None
        by = f"lowrank {writer}" if isinstance(writer, str) else "another lowrank"
        raise LowrankError(
            f"'{path}' was written by {by} (format version {version}); this lowrank "
            f"{__version__} reads format version <={newest}: upgrade lowrank"
        )


def validate_meta(meta: Mapping[str, Any], fmt: str, path: Path) -> None:
    """Check a run.json of kind ``fmt`` (its version, then its schema); one line on failure."""
    check_version(meta, fmt, path)
    schema = SCHEMAS.get(fmt)
    if schema is not None:
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
