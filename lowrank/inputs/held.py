"""Data the user already holds: token ids and texts, read like a corpus.

``data`` may be token ids (an integer tensor or array ``[N, n]``, or a mapping with
``input_ids`` and ``attention_mask`` ``[N, n]``, as a tokenizer returns it) or texts (a list,
or any iterable of strings such as a ``datasets`` column, read lazily until the sequences are
covered). :mod:`lowrank.inputs.objects` turns either, with the model, into the same
:class:`~lowrank.inputs.prepared.Prepared` the CLI builds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.inputs.config import InputConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank.inputs.corpora import Corpus, Sequences

MEMORY = "memory"
# With a seed, lazily read texts stop at this many times what the sequences need, so the
# seeded sample is drawn from a bounded prefix of an endless iterable.
SEEDED_READ_FACTOR = 10
_CHUNK = 256  # texts tokenised at a time while reading an iterable


def token_arrays(data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(input_ids [N, n] int64, attention_mask [N, n] int64 or None) of token data."""
    mask: Any = None
    if isinstance(data, Mapping):
        if "input_ids" not in data:
            raise LowrankError(
                f"{flag('data')}: a mapping of token ids needs an 'input_ids' entry [N, n]"
            )
        ids, mask = data["input_ids"], data.get("attention_mask")
    else:
        ids = data
    ids_np = _as_array(ids, "input_ids")
    if ids_np.ndim != 2 or ids_np.shape[0] < 1 or ids_np.shape[1] < 2:
        raise LowrankError(
            f"input_ids of shape {tuple(ids_np.shape)}: give [N, n] token ids, N >= 1, n >= 2"
        )
    if mask is None:
        return ids_np, None
    mask_np = _as_array(mask, "attention_mask")
    if mask_np.shape != ids_np.shape:
        raise LowrankError(
            f"attention_mask of shape {tuple(mask_np.shape)} does not match input_ids "
            f"{tuple(ids_np.shape)}"
        )
    if not np.isin(mask_np, (0, 1)).all():
        raise LowrankError("attention_mask holds values other than 0 and 1")
    return ids_np, mask_np


def _as_array(x: Any, name: str) -> np.ndarray:
    """``x`` (a tensor or an array) as int64; token ids must be integers (booleans are no
    ids: a mask passed as ``input_ids`` is refused), a mask integers or booleans."""
    if getattr(x, "is_meta", False):
        raise LowrankError(
            f"{name} is on the meta device (no values): give the tensor with its values"
        )
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    kinds = "iub" if name == "attention_mask" else "iu"
    if arr.dtype.kind not in kinds:
        what = "integers or booleans" if name == "attention_mask" else "integer token ids"
        raise LowrankError(f"{name} must hold {what}, not {arr.dtype}")
    return arr.astype(np.int64)


def token_sequences(data: Any, config: InputConfig) -> Sequences:
    """Sequences from token ids: the first ``num_sequences`` rows (or a seeded sample).

    Each row's valid tokens must be contiguous: ``1...1 0...0`` (right padding) or
    ``0...0 1...1`` (left padding); all rows padded on the same side.
    """
    from lowrank.inputs.corpora import Sequences

    ids, mask = token_arrays(data)
    total, n = ids.shape
    if mask is None:
        mask = np.ones_like(ids)
    lengths = mask.sum(axis=1)
    if (lengths == 0).any():
        raise LowrankError(f"row {int(np.argmin(lengths))} of attention_mask has no valid token")
    positions = np.arange(n)[None, :]
    right = (mask == (positions < lengths[:, None])).all(axis=1)
    left = (mask == (positions >= n - lengths[:, None])).all(axis=1)
    side = "right"
    if not right.all():
        if not left.all():
            bad = int(np.flatnonzero(~(right | left))[0]) if (~(right | left)).any() else 0
            raise LowrankError(
                f"attention_mask row {bad}: the valid tokens must be contiguous and padded on "
                "one side for every row (1...1 0...0, or 0...0 1...1)"
            )
        side = "left"
    if config.seed is None or config.num_sequences >= total:
        idx = np.arange(min(total, config.num_sequences))
    else:
        rng = np.random.default_rng(config.seed)
        idx = np.sort(rng.choice(total, size=config.num_sequences, replace=False))
    policy: dict[str, Any] = {
        "policy": "token ids",
        "order": "given" if config.seed is None else f"seeded sample (seed {config.seed})",
        "available": int(total),
        "short_sequences": int((lengths[idx] < n).sum()),
        "num_sequences": len(idx),
    }
    if side != "right":
        policy["padding_side"] = side
    return Sequences(ids[idx], lengths[idx].astype(np.int64), policy, side)  # type: ignore[arg-type]


def text_of(item: object, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        for key in ("text", "review"):
            if isinstance(item.get(key), str):
                return str(item[key])
    raise LowrankError(
        f"{flag('data')} item {i} is {type(item).__name__}, not a string: give texts, token "
        "ids, or a path"
    )


def read_texts(
    data: Iterable[Any], tokenizer: PreTrainedTokenizerBase, config: InputConfig
) -> list[str]:
    """Texts from a list or any iterable, read lazily until the sequences are covered.

    Items are strings (or mappings with a ``text`` or ``review`` string, e.g. the rows of
    a ``datasets.Dataset``). Reading stops once the texts hold ``num_sequences`` sequences
    of ``seq_len`` tokens under the run's policy (``SEEDED_READ_FACTOR`` times that with a
    seed, so the sample is drawn from a bounded prefix), so an endless iterable is fine.
    """
    from lowrank.inputs.corpora import special_tokens, tokenize_documents

    prefix, suffix = special_tokens(tokenizer)
    body = config.seq_len - len(prefix) - len(suffix)
    packed = config.policy != "document"
    need = config.num_sequences * (SEEDED_READ_FACTOR if config.seed is not None else 1)
    if body < 1:
        raise LowrankError(
            f"{named('seq_len', config.seq_len)} leaves no room for text after special tokens"
        )
    texts: list[str] = []
    have = 0.0  # sequences' worth of tokens (packed) or usable documents (document policy)
    if isinstance(data, bytes | bytearray) or not isinstance(data, Iterable):
        raise LowrankError(
            f"{flag('data')} is {type(data).__name__}: give a path, a dataset name, texts "
            "(a list or iterable of strings) or token ids [N, n]"
        )
    items = iter(data)
    while have < need:
        chunk = [text_of(x, len(texts) + i) for i, x in enumerate(islice(items, _CHUNK))]
        if not chunk:
            break
        texts += chunk
        for doc in tokenize_documents(tokenizer, chunk):
            if packed:
                have += len(doc) / body
            else:
                have += float(bool(doc) and (config.keep_short or len(doc) >= body))
    return texts


def text_corpus(texts: list[str], description: str) -> Corpus:
    """Texts in memory as a corpus of articles (``policy="auto"`` packs them)."""
    from lowrank.inputs.corpora import Corpus

    docs = [t for t in texts if t.strip()]
    if not docs:
        raise LowrankError(f"{flag('data')} holds no text (every string is empty or blank)")
    return Corpus(MEMORY, "articles", description, None, docs)


def describe(data: object, count: int) -> str:
    kind = "list" if isinstance(data, list | tuple) else type(data).__name__
    return f"{count} texts ({kind})"
