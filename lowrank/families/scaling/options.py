"""The options of ``lowrank scaling`` / ``lowrank.scaling``, declared once."""

from __future__ import annotations

from typing import get_args

from lowrank.core.options import (
    MAX_GIB,
    MIN_SEQ_LEN,
    Option,
    Options,
    check_seed,
    merge,
)
from lowrank.inputs.config import DatasetName
from lowrank.inputs.options import (
    API_ONLY,
    DATA_HELP,
    DATASET_HELP,
    device_and_dtype,
    model_help,
    output,
)

HELP = """Does the rank of attention grow like log n? One spectrum run per n, on the same text.

Every document long enough for the largest n is cut to its first n tokens for every n,
and each n is a normal spectrum run in <out>/n<n>/ (open it with `lowrank figures`).
Per n, layer and head: the ranks for 90% and 99% of the normalized cumulative sum,
effective and stable rank, c at n/4 and at a fixed index, and the rank k that the head
output needs, ||PV - (PV)_k|| / ||PV|| <= tau (float64 singular values of PV; at most the
head dimension d). Each rank measure is fitted with a + b ln n and a n^beta per layer and
for the whole model; the fits are compared by AIC and by their error on the largest n,
held out. A verdict ('logarithmic', 'power law, beta = 0.41 ± 0.05') is printed only
when both comparisons agree, each in 95% of bootstrap resamples of documents, and the
preferred model predicts the held-out n within 10%; else 'cannot tell with these n'.
Writes <out>/scaling.npz and <out>/run.json.
"""

OPTIONS = Options(
    "scaling",
    HELP,
    merge(
        (
            Option("model", "minilm", model_help(), kind="any", metavar="NAME|DIR"),
            Option("tokenizer", None, "The tokenizer of a model object.", "any", cli=False),
            Option(
                "data",
                None,
                DATA_HELP + " Token ids are refused: every n cuts the texts.",
                "any",
                metavar="PATH",
            ),
            Option(
                "dataset",
                None,
                DATASET_HELP + " Its documents (articles or reviews) are the units: each long "
                "enough for the largest n is cut to its first n tokens for every n.",
                "choice",
                choices=get_args(DatasetName),
                optional=True,
            ),
            Option("split", "test", "Corpus split.", "str"),
            Option(
                "seq_len",
                (32, 64, 128, 256, 512),
                "The lengths n, comma-separated, at least three (special tokens included).",
                "ints",
                low=MIN_SEQ_LEN,
            ),
            Option(
                "num_sequences",
                16,
                "Documents to analyse, each at every n (capped by those long enough).",
                low=2,
            ),
            Option(
                "seed",
                None,
                "A seeded sample of the documents (default: corpus order).",
                optional=True,
                check=check_seed,
            ),
            Option(
                "tau",
                0.1,
                "Output error of output_rank: the smallest k with ||PV - (PV)_k|| / ||PV|| <= tau.",
                "float",
                low=0.0,
                high=1.0,
                open_low=True,
                open_high=True,
            ),
            Option(
                "fixed_index",
                None,
                "Index of c_at_fixed (default: the smallest n, the largest index every n has).",
                low=1,
                optional=True,
            ),
            Option(
                "bootstrap",
                1000,
                "Resamples of documents behind every interval and verdict.",
                low=50,
            ),
            Option("bootstrap_seed", 0, "Seed of the resamples.", check=check_seed),
            Option(
                "precision",
                None,
                "Per n: stop once the 95% half-width of every mean c value the spectrum "
                "figures read is below this; the fits use the documents every n analysed.",
                "float",
                low=0.0,
                open_low=True,
                optional=True,
            ),
            Option(
                "batch_size",
                None,
                "Fixed batch (default: the largest that the memory estimate fits in "
                "--memory-budget).",
                low=1,
                optional=True,
            ),
            Option(
                "memory_budget",
                None,
                "GiB of working memory above the model that chooses the batch at every n "
                "(default: a quarter of the free memory).",
                "float",
                low=0.0,
                open_low=True,
                high=MAX_GIB,
                optional=True,
            ),
        ),
        device_and_dtype(),
        output("scaling", plot="Draw the scaling figures into <out>/figures."),
        API_ONLY,
    ),
)
