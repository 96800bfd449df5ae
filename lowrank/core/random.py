"""Seeded random generators: one reproducible stream per (tag, seed, sequence, ...)."""

from __future__ import annotations

import numpy as np
import torch


def seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator seeded from several integers (numpy's SeedSequence mixes them), so
    every (tag, seed, sequence, layer, draw, ...) gets its own reproducible stream.

    The number of words is mixed in too: SeedSequence alone treats ``[a, b]`` and
    ``[a, b, 0]`` as the same entropy, which would let two call sites share a stream.
    """
    words = [len(entropy), *entropy]
    seed = int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)
