"""Windows for ``lowrank scaling`` at matched offsets, and the position-shift control.

Cutting every document to its first n tokens (``openings``) ties n to the position in the
article: on MiniLM later windows of the same articles give higher ranks (n = 128: rank90
38.06 against 36.39, paired t = 5.6; lowrank issue 25). :func:`matched_windows` draws, per
document, start offsets uniformly over the positions where the largest window fits
(stratified when a document gives several windows) and uses the *same* start for every n:
the window of length n is ``tokens[start : start + n - specials]``, so windows stay nested
across n and every n sees the same positions in the same articles. Drawn from a seed, the
choice of windows becomes part of what the document bootstrap resamples.

The position-shift control keeps the tokens and moves the position ids
(:func:`shifted_positions`): the same 128 tokens at positions 384-511 raised rank90 by 12%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lowrank.errors import LowrankError

Policy = Literal["matched", "openings"]


@dataclass(frozen=True)
class Windows:
    """Where each window starts.

    Attributes:
        documents: (W,) index into the corpus of each window's document (a document with
            several windows appears several times: resample documents, not windows).
        starts: (W,) offset of each window's first text token in its document; the window
            of length n is ``tokens[start : start + n - specials]`` for every n.
        ns, specials: the lengths (special tokens included) and the special tokens per window.
        policy, seed, qualified: how starts were drawn, the seed, documents long enough.
    """

    documents: np.ndarray
    starts: np.ndarray
    ns: tuple[int, ...]
    specials: int
    policy: Policy
    seed: int
    qualified: int

    def spans(self, n: int) -> np.ndarray:
        """(W, 2) ``[start, stop)`` of every window at length n."""
        if n not in self.ns:
            raise LowrankError(f"n = {n} is not one of the windows' lengths {self.ns}")
        return np.stack([self.starts, self.starts + n - self.specials], axis=1)

    def record(self) -> dict[str, Any]:
        """The run.json ``window_policy``."""
        rule = {
            "matched": "one start per window, uniform (stratified within a document) over "
            "0..len - (max n - specials); the same start for every n",
            "openings": "every window starts at its document's first token",
        }[self.policy]
        return {
            "policy": self.policy,
            "rule": rule,
            "seed": self.seed,
            "qualified_documents": self.qualified,
            "documents": self.documents.tolist(),
            "starts": self.starts.tolist(),
        }


def matched_windows(
    lengths: Sequence[int],
    ns: Sequence[int],
    count: int,
    seed: int = 0,
    per_document: int = 1,
    specials: int = 0,
    policy: Policy = "matched",
) -> Windows:
    """Draw ``count`` documents (a seeded sample of those long enough) and their windows.

    Args:
        lengths: tokens of each document of the corpus (special tokens excluded).
        ns: window lengths, special tokens included; a document qualifies when it holds
            ``max(ns) - specials`` tokens.
        per_document: windows per document; their starts are drawn one per equal stratum
            of the admissible offsets, so a long document gives early and late windows.
        policy: ``matched`` (drawn starts) or ``openings`` (start 0: the old policy).

    Returns:
        :class:`Windows`, sorted by document then start; the same for the same arguments.

    Raises:
        LowrankError: no document long enough, or an n with no room for text.
    """
    ns = tuple(sorted({int(n) for n in ns}))
    if not ns or ns[0] - specials < 1:
        raise LowrankError(f"lengths {ns} leave no room for text after {specials} special tokens")
    if count < 1 or per_document < 1:
        raise LowrankError("draw at least one document and one window per document")
    body = ns[-1] - specials
    size = np.asarray(lengths, dtype=np.int64)
    qualified = np.flatnonzero(size >= body)
    if qualified.size == 0:
        longest = int(size.max()) if size.size else 0
        raise LowrankError(
            f"no document has the {body} tokens n = {ns[-1]} needs (longest {longest})"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(qualified, size=min(count, qualified.size), replace=False))
    docs = np.repeat(chosen, per_document)
    if policy == "openings":
        starts = np.zeros(docs.size, dtype=np.int64)
    else:
        room = size[docs] - body + 1  # admissible starts 0..room-1
        stratum = np.tile(np.arange(per_document), chosen.size)
        lo = stratum * room // per_document
        hi = np.maximum((stratum + 1) * room // per_document, lo + 1)
        starts = lo + (rng.random(docs.size) * (hi - lo)).astype(np.int64)
    return Windows(docs, starts, ns, specials, policy, seed, int(qualified.size))


def shifted_positions(n: int, shifts: Sequence[int], max_positions: int) -> dict[int, np.ndarray]:
    """Position ids for the position-shift control: the same n tokens at ``shift..shift+n-1``.

    Pass ``position_ids`` (broadcast to the batch) with unchanged ``input_ids`` to a model
    whose forward takes them (BERT, RoBERTa, GPT-2 in transformers); shift 0 is the
    reference. RoBERTa-style models count positions from padding_idx + 1: add that offset.

    Raises:
        LowrankError: a shift < 0 or one that runs past ``max_positions``.
    """
    out = {}
    for shift in sorted({0, *map(int, shifts)}):
        if shift < 0 or shift + n > max_positions:
            raise LowrankError(
                f"shift {shift}: positions {shift}..{shift + n - 1} leave 0..{max_positions - 1}"
            )
        out[shift] = np.arange(shift, shift + n, dtype=np.int64)
    return out
