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
from lowrank.maths.windows import Policy as WindowPolicy

HELP = """Does the rank of attention grow like log n? One spectrum run per n, on the same text.

Every document long enough for the largest n gives a window at a drawn offset (the same
start for every n, so each n reads a prefix of the same tokens; --windows openings starts
at the document's first token instead), and each n is a normal spectrum run in <out>/n<n>/
(open it with `lowrank figures`). Per n, layer and head: the ranks for 90% and 99% of the
normalized cumulative sum, effective and stable rank, c at n/4 and at a fixed index, and the
rank k that the head output needs, ||PV - (PV)_k|| / ||PV|| <= tau (float64 singular values
of PV; at most the head dimension d). Each rank measure is fitted per layer and for the whole
model with a + b ln n, a n^beta and C - c n^-gamma (levelling off at C; C <= d for the output
rank). A model fits when, fitted without the largest n, it predicts it within 10% and its
curvature in ln n has a 95% bootstrap interval containing 0; the verdict names the one model
that fits, or the one AICc prefers by >= 2 in 95% of resamples of documents; else 'none
fits' or 'cannot tell'. Fewer than five lengths give no verdict. A position control measures
the middle n again with the same tokens at the last position ids the model has (the size of
the position confound in every fit). Writes <out>/scaling.npz and <out>/run.json.
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
                "enough for the largest n gives windows cut to every n.",
                "choice",
                choices=get_args(DatasetName),
                optional=True,
            ),
            Option("split", "test", "Corpus split.", "str"),
            Option(
                "seq_len",
                (32, 64, 128, 256, 512),
                "The lengths n, comma-separated, at least three (special tokens included); a "
                "growth verdict needs five.",
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
                "Resamples of documents behind the intervals of the means (each verdict uses "
                "the first --verdict-bootstrap).",
                low=50,
            ),
            Option(
                "verdict_bootstrap",
                200,
                "Resamples of documents behind every growth verdict (each refits three models "
                "six times).",
                low=50,
            ),
            Option("bootstrap_seed", 0, "Seed of the resamples.", check=check_seed),
            Option(
                "windows",
                "matched",
                "Where each document's window starts: 'matched' draws one offset per window "
                "(uniform over the offsets where the largest n fits; the same start for every "
                "n), 'openings' starts at the document's first token (format 1's policy: it "
                "ties n to the position in the article).",
                "choice",
                choices=get_args(WindowPolicy),
            ),
            Option(
                "windows_per_document",
                1,
                "Windows per document (offsets drawn one per equal stratum of the document); "
                "the bootstrap resamples documents with all their windows.",
                low=1,
                high=64,
            ),
            Option("window_seed", 0, "Seed of the window offsets.", check=check_seed),
            Option(
                "position_control",
                True,
                "Measure the middle n again with the same tokens at shifted position ids "
                "(the position confound, reported beside the fits).",
                "bool",
                negatable=True,
            ),
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
