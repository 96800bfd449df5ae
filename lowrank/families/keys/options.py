"""The options of ``lowrank keys`` / ``lowrank.keys``, declared once."""

from __future__ import annotations

from typing import get_args

from lowrank.core.options import Option, Options, check_seed, merge, named
from lowrank.errors import LowrankError
from lowrank.inputs.config import DatasetName
from lowrank.inputs.options import API_ONLY, model_and_corpus, output

DEFAULT_BUDGETS = (0.125, 0.25, 0.5)
"""Loki's k grid: n/8, n/4, n/2 of the sequence's valid tokens."""
MAX_GROUPS = 1024
"""The most bootstrap groups: each holds a d x d co-moment per layer, head and tensor."""
MIN_BOOTSTRAP = 20
"""Fewer replicates give 2.5% and 97.5% quantiles from one or two draws (an interval of
one replicate may not even hold its estimate)."""


def _check_bootstrap(option: str, value: int) -> int:
    if 0 < value < MIN_BOOTSTRAP:
        raise LowrankError(
            f"{named(option, value)}: give 0 (no intervals) or at least {MIN_BOOTSTRAP} "
            "replicates for a 95% interval"
        )
    return value


HELP = """Low-rank structure of queries, keys, values and logits, pre- and post-RoPE, and top-k
attention from a few key dimensions (Loki, ShadowKV).

Per layer and head, over every valid token of every sequence: PCA of the centred queries
and keys, before and after the rotary embedding, and of the values (explained variance, as
Loki and sklearn); the number of components that carry --rank-fraction (90%) of it, with
bootstrap intervals over sequences. Per sequence: the energy rank of the whole layer's
n x (H_kv d) key and value matrices (ShadowKV's view); the rank of each head's logits
QK^T/sqrt(d) against the rank of its weights W_Q W_K^T, beside P's own rank90 (spectrum's
definition). Top-k attention as Loki does it: queries and keys projected on r principal
components of post-RoPE keys fitted on --calibration-data, the k keys with the largest
approximate scores attended exactly: recall of the exact top-k, the attention mass kept
and the head-output error, against a random orthogonal projection and exact top-k.

Decoders: one entry per KV head for keys and values, per query head for queries; only keys
at or before a query; the first token (attention sink) always kept on top of k. Encoders
have no rotary embedding: pre = post. Arrays go to <out>/keys.npz, the definitions and
settings to <out>/run.json (docs/keys.md).
"""

OPTIONS = Options(
    "keys",
    HELP,
    merge(
        model_and_corpus(num_sequences=16, batch_size=4, dtype=False),
        (
            Option(
                "rank_fraction",
                0.9,
                "The share of explained variance (PCA), energy (whole layer, logits, "
                "weights) or nuclear norm (P) a rank must reach; the *_rank90 arrays hold "
                "the count of components at this share.",
                "float",
                low=0.0,
                high=1.0,
                open_low=True,
                open_high=True,
            ),
            Option(
                "ranks",
                None,
                "r grid of top-k: dimensions of the projected queries and keys, each in "
                "1..d (default: d/8, d/4, d/2, d).",
                "ints",
                low=1,
                optional=True,
                metavar="R[,R...]",
            ),
            Option(
                "budgets",
                DEFAULT_BUDGETS,
                "k grid of top-k, as fractions of a sequence's m valid tokens: k = max(1, "
                "floor(f m)) keys (default n/8, n/4, n/2).",
                "floats",
                low=0.0,
                high=1.0,
                open_low=True,
                metavar="F[,F...]",
            ),
            Option(
                "queries",
                64,
                "Query positions per sequence at which top-k is evaluated (drawn without "
                "replacement, seeded by --draw-seed and the sequence; all when >= n).",
                low=1,
            ),
            Option(
                "keep_first",
                True,
                "Always keep the first token (the attention sink) on top of the k keys; its "
                "attention mass is reported separately.",
                "bool",
                negatable=True,
            ),
            Option(
                "calibration_data",
                None,
                "Corpus the PCA basis of top-k is fitted on, a path (in Python also texts or "
                "token ids). Default: a different corpus from --data: the embedded IMDB "
                "sample for article corpora, the embedded wiki sample for reviews.",
                "any",
                metavar="PATH",
            ),
            Option(
                "calibration_dataset",
                None,
                "Kind of --calibration-data, as --dataset (inferred when omitted).",
                "choice",
                choices=get_args(DatasetName),
                optional=True,
            ),
            Option(
                "calibration_split",
                None,
                "Split of the calibration corpus (default: --split).",
                "str",
                optional=True,
            ),
            Option(
                "calibration_sequences",
                None,
                "Calibration sequences of n tokens (default: --num-sequences).",
                low=1,
                optional=True,
            ),
            Option(
                "probs_rank",
                True,
                "Also P's own rank90 per head and sequence (an SVD of every n x n P: "
                "O(n^3) each, the slowest step).",
                "bool",
                negatable=True,
            ),
            Option(
                "bootstrap",
                200,
                f"Bootstrap replicates of the rank intervals (resampling sequences), at least "
                f"{MIN_BOOTSTRAP}; 0: none.",
                low=0,
                high=100_000,
                check=_check_bootstrap,
            ),
            Option(
                "bootstrap_groups",
                16,
                "Sequences are pooled in this many groups (sequence index mod G) that the "
                "bootstrap resamples: the bootstrap by sequence while N <= G. Memory grows "
                "with G (a d x d co-moment per group, layer, head and tensor).",
                low=2,
                high=MAX_GROUPS,
            ),
            Option(
                "draw_seed",
                0,
                "Seed of the random orthogonal baseline, the sampled query positions and the "
                "bootstrap.",
                check=check_seed,
            ),
            Option("resume", False, "Continue the partial run saved in --out.", "bool"),
            Option(
                "checkpoint_every",
                None,
                "Save the accumulators every N sequences (default: after each 5 minutes of work).",
                low=1,
                optional=True,
            ),
        ),
        output("keys", plot="Draw the keys figures into <out>/figures."),
        API_ONLY,
    ),
)
