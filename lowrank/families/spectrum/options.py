"""The options of ``lowrank spectrum`` / ``lowrank.spectrum``, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowrank.core.options import Option, Options, check_int, merge, named
from lowrank.errors import LowrankError
from lowrank.inputs.config import PAPER_NUM_SEQUENCES
from lowrank.inputs.options import API_ONLY, model_and_corpus, output


def parse_shard(option: str, shard: object) -> tuple[int, int]:
    """``"2/8"`` or ``(2, 8)`` -> (2, 8), checked (1 <= i <= N)."""
    if isinstance(shard, str):
        try:
            i, n = (int(part) for part in shard.split("/"))
        except ValueError:
            raise LowrankError(f"{named(option, shard)}: write it as i/N, e.g. 2/8") from None
    else:
        try:
            i, n = (check_int(option, v) for v in shard)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise LowrankError(f"{named(option, shard)}: give (i, N), e.g. (2, 8)") from None
    if n < 1 or not 1 <= i <= n:
        raise LowrankError(f"{named(option, shard)}: need 1 <= i <= N")
    return i, n


def default_out(values: dict[str, Any]) -> Path:
    """The CLI's default run folder, ``runs/<model>-<dataset>``."""
    model, dataset, data = values.get("model"), values.get("dataset"), values.get("data")
    name = Path(str(model)).name or "model"
    corpus = dataset or (Path(str(data)).stem if data else "sample-wiki")
    return Path("runs") / f"{name}-{corpus}"


HELP = """Singular-value spectra of every attention matrix P (the paper's Figure 1).

For each sequence, layer and head: the singular values s of P (n x n), the normalized
cumulative curve c_i = sum_{j<=i} s_j / sum_j s_j, and summaries (c at index 128, ranks
for 90% and 99%, effective and stable rank); means and standard deviations over
sequences go to <out>/spectrum.npz and the configuration to <out>/run.json.

Decoder models (GPT-2, Llama, Mistral, Qwen2; run.json records causal: true) have a
causal P: lower-triangular, each row attending to the past only. Such a P is always
invertible (its eigenvalues are its diagonal entries, all positive), its first rows are
sharp because they have few keys, and its best rank-k approximation reaches into the
future, which a causal model may not use. So its c and ranks are bounds: a causal
rank-k attention captures at most c_k and needs at least these ranks. They do not
compare one to one with an encoder's (docs/spectrum.md, "Causal attention").
"""

OPTIONS = Options(
    "spectrum",
    HELP,
    merge(
        model_and_corpus(
            num_sequences=PAPER_NUM_SEQUENCES,
            batch_size=8,
            num_sequences_help="Sequences to analyse (the paper: 10k), capped by what the "
            "corpus holds.",
            batch_help="Sequences per forward pass (it changes c only by float32 rounding, "
            "~1e-7). Checked against the free memory before the first batch.",
        ),
        (
            Option(
                "keep_short",
                False,
                "Document policy: pad documents shorter than n instead of skipping them "
                "(their spectra are those of the valid block, padded with zeros, which biases "
                "the means toward short documents; the run warns and records how many are "
                "short).",
                "bool",
            ),
            Option(
                "auto_batch",
                False,
                "Out of memory: cut the batch to what fits (and halve one that still fails) "
                "instead of stopping with the batch size to use.",
                "bool",
            ),
            Option(
                "precision",
                None,
                "Stop once the 95% half-width of every mean c value the figures use is below "
                "this (e.g. 0.005); --num-sequences stays the cap. Use with --seed for a "
                "random order.",
                "float",
                low=0.0,
                open_low=True,
                optional=True,
            ),
        ),
        output("spectrum"),
        (
            Option(
                "keep_per_sequence",
                False,
                "Also store every sequence's singular values (singular_values_per_sequence "
                "[N, layers, heads, n], float32, in spectrum.npz) for statistics of your own; "
                "not with --resume or torchrun.",
                "bool",
            ),
        ),
        (
            Option(
                "shard",
                None,
                "i/N: analyse the i-th (1-based) of N contiguous, disjoint parts of the "
                "sequence list; combine the parts with `lowrank merge`.",
                "any",
                optional=True,
                check=lambda option, value: None if value is None else parse_shard(option, value),
                metavar="I/N",
            ),
            Option("resume", False, "Continue the partial run saved in --out.", "bool"),
            Option(
                "checkpoint_every",
                None,
                "Save the accumulators every N sequences (default: after each minute of work).",
                low=1,
                optional=True,
            ),
            Option(
                "backend",
                None,
                "Under torchrun: the torch.distributed backend (default: gloo on the CPU, "
                "nccl on CUDA). See docs/long-runs.md, 'Running on a cluster'.",
                "choice",
                choices=("gloo", "nccl"),
                optional=True,
            ),
            Option(
                "verbose",
                False,
                "Under torchrun: every rank prints its messages (default: only rank 0).",
                "bool",
            ),
            Option(
                "attention_mask",
                None,
                "[N, n] 0/1 mask for token ids given as a bare tensor or array.",
                "any",
                cli=False,
            ),
        ),
        API_ONLY,
        replace=(
            Option(
                "out",
                None,
                "Run folder (default: runs/<model>-<dataset>; in Python, None writes nothing).",
                "path",
                optional=True,
                cli_default=default_out,
            ),
        ),
    ),
)
