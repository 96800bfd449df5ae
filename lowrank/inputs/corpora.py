"""Read corpora and cut them into model-sized sequences.

Two kinds of corpus and two sequence policies (recorded in every run):

* **articles** (WikiText-103, the embedded encyclopedia sample, plain ``.txt``): documents
  are tokenised without special tokens and concatenated into one stream, which is cut into
  consecutive windows of ``n - s`` tokens (``s`` = the model's number of special tokens,
  2 for ``[CLS] ... [SEP]`` or ``<s> ... </s>``), each wrapped in the model's own tokens.
* **reviews** (IMDB, the embedded review sample, CSV/JSONL/parquet): one document per
  sequence; documents shorter than ``n`` tokens are skipped (so every curve has length n)
  unless ``keep_short``, longer ones are truncated. With ``keep_short`` the policy records
  how many of the chosen sequences are shorter than n (``short_sequences``).

Sequences come in corpus order, or as a seeded sample without replacement (``seed``).

Local files are read in bounded chunks (:mod:`lowrank.inputs.reading`): at most
:data:`MAX_CORPUS_BYTES` (1 GiB) from a corpus, at most :data:`MAX_LINE_CHARS` (16 Mi
characters) in a line, JSONL record or CSV field; binary files, other encodings, empty files
and malformed tables are refused in one line naming the file and what to do.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.inputs import reading
from lowrank.inputs.config import DatasetName, Policy
from lowrank.inputs.hub import hub_reachable, offline, quiet
from lowrank.inputs.reading import (
    check_data_path,
    clean_review,
    human_size,
    no_text,
    read_table,
    read_text,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CorpusKind = Literal["articles", "reviews"]
PaddingSide = Literal["right", "left"]

HUB_DATASETS = {
    "wiki103": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "imdb": ("stanfordnlp/imdb", None),
}
SAMPLES = {"sample-wiki": "sample_wiki.txt", "sample-imdb": "sample_imdb.jsonl"}
_HEADING = re.compile(r"^ ?= ([^=].*) = ?$")  # " = Title = " starts a WikiText article
_WIKI_MARKUP = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}
_REVIEW_FILE = re.compile(r"^(\d+)_(\d+)\.txt$")


@dataclass(frozen=True)
class Corpus:
    """Documents of one corpus, with where they came from."""

    name: str  # dataset name, e.g. "wiki103" or "sample-imdb"
    kind: CorpusKind
    source: str  # a path or a hub id
    split: str | None
    documents: list[str]


@dataclass(frozen=True)
class Sequences:
    """Token sequences ready for the model.

    Attributes:
        input_ids: (N, n) int64, padded with the tokenizer's pad id on ``padding_side``.
        lengths: (N,) int64, valid tokens of each sequence (n unless padded).
        policy: the sequence policy and its counts, recorded in ``run.json``.
        padding_side: ``right`` (valid tokens first; what the spectrum pipeline expects) or
            ``left`` (valid tokens last; run such a batch with
            :func:`lowrank.hooks.attention.padded_inputs`).
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    policy: dict[str, Any] = field(default_factory=dict)
    padding_side: PaddingSide = "right"

    @property
    def attention_mask(self) -> np.ndarray:
        """(N, n) int64, 1 on valid tokens."""
        n = self.input_ids.shape[1]
        if self.padding_side == "left":
            return (np.arange(n)[None, :] >= n - self.lengths[:, None]).astype(np.int64)
        return (np.arange(n)[None, :] < self.lengths[:, None]).astype(np.int64)


def data_dir() -> Path:
    """The folder with the embedded sample corpora (in the wheel, else the repository)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "_data"
    return packaged if packaged.is_dir() else package.parent / "data"


def split_articles(text: str) -> list[str]:
    """Split WikiText-style text into articles at ``= Title =`` lines.

    Text without such headings is one article. WikiText's ``@-@``/``@,@``/``@.@`` number
    and hyphen markup is undone; blank lines are dropped; other lines are kept as they are.
    """
    for token, plain in _WIKI_MARKUP.items():
        text = text.replace(token, plain)
    articles: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if _HEADING.match(line) and current:
            articles.append(current)
            current = []
        current.append(line.strip())
    if current:
        articles.append(current)
    return ["\n".join(a) for a in articles]


def _read_acl_imdb(folder: Path, split: str) -> list[str]:
    """aclImdb layout ``{split}/{pos,neg}/<id>_<rating>.txt``, ordered by (id, label); at most
    :data:`~lowrank.inputs.reading.MAX_CORPUS_BYTES` in all."""
    root = folder / split if (folder / split).is_dir() else folder
    found: list[tuple[int, str, Path]] = []
    for label in ("neg", "pos"):
        for p in (root / label).glob("*.txt") if (root / label).is_dir() else []:
            m = _REVIEW_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), label, p))
    if not found:
        raise LowrankError(
            f"'{folder}' holds no reviews or articles: expected {split}/pos/<id>_<rating>.txt "
            f"and {split}/neg/<id>_<rating>.txt (aclImdb) or wiki.{split}.raw (WikiText); "
            "pass a single corpus file by its path"
        )
    reviews, total = [], 0
    for _, _, p in sorted(found):
        text = read_text(p)
        total += len(text)
        if total > reading.MAX_CORPUS_BYTES:
            raise LowrankError(
                f"the reviews in '{folder}' hold more than "
                f"{human_size(reading.MAX_CORPUS_BYTES)}B, the most lowrank reads from one "
                "corpus: pass a part of them"
            )
        reviews.append(clean_review(text))
    return reviews


_SPLIT_NAMES = ("train", "valid", "validation", "test")


def _named_split(path: Path, split: str) -> str:
    """The split a corpus path names itself (``wiki.valid.tokens``, an aclImdb ``train/``
    folder), which run.json records over ``--split`` (a valid file is never labelled
    "test"); ``split`` where the name says nothing."""
    parts = path.name.split(".")
    if path.is_file() and len(parts) == 3 and parts[0] == "wiki" and parts[2] in ("raw", "tokens"):
        named = parts[1]
    elif path.is_dir() and path.name in _SPLIT_NAMES:
        named = path.name
    else:
        return split
    if named != split:
        log.info(f"'{path.name}' holds the {named} split: recorded as split '{named}'")
    return named


def _wiki_file(folder: Path, split: str) -> Path:
    for suffix in ("raw", "tokens"):
        candidate = folder / f"wiki.{split}.{suffix}"
        if candidate.is_file():
            return candidate
    raise LowrankError(
        f"'{folder}' holds no wiki.{split}.raw or wiki.{split}.tokens: pass the WikiText file "
        f"itself with {flag('data')}, or the {flag('split')} it holds"
    )


def _load_hub(dataset: str, split: str) -> Corpus:
    repo, config = HUB_DATASETS[dataset]
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise LowrankError("hub datasets need the 'datasets' package") from exc
    reachable = hub_reachable()
    try:
        with quiet(), nullcontext() if reachable else offline():
            ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # network, missing split, cache: all become one line
        if not reachable:
            raise LowrankError(
                f"dataset '{dataset}' ({repo}) is not in the local cache and the hub cannot be "
                f"reached: pass a local copy with {flag('data')} ("
                + (
                    "a wiki.test.raw file or its folder"
                    if dataset == "wiki103"
                    else "an aclImdb folder or a CSV/JSONL/parquet file"
                )
                + ")"
            ) from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LowrankError(
            f"could not load dataset '{dataset}' ({repo}, split '{split}') from the hub: "
            f"{first}; pass a local copy with {flag('data')}"
        ) from exc
    if dataset == "wiki103":
        return Corpus(dataset, "articles", repo, split, split_articles("\n".join(ds["text"])))
    return Corpus(dataset, "reviews", repo, split, [clean_review(t) for t in ds["text"]])


def infer_dataset(data: Path) -> DatasetName:
    """The dataset kind of a local path, from its layout or suffix."""
    if data.is_dir():
        if any(data.glob("wiki.*.raw")) or any(data.glob("wiki.*.tokens")):
            return "wiki103"
        return "imdb"
    if data.name.startswith("wiki.") and data.suffix in (".raw", ".tokens"):
        return "wiki103"
    if data.suffix.lower() in (".csv", ".jsonl", ".json", ".parquet"):
        return "imdb"
    return "text"


def load_corpus(dataset: DatasetName | None, data: str | None, split: str = "test") -> Corpus:
    """Read a corpus: an embedded sample, a local copy, or a hub dataset.

    Raises:
        LowrankError: missing, unreadable, binary, non-UTF-8 or oversized files (see
            :func:`read_text`), an unknown layout, a malformed table (a bad JSONL line, no
            text column, not parquet), or a corpus with no text.
    """
    path = Path(data).expanduser() if data else None
    if data:
        check_data_path(data)
    if dataset is None:
        dataset = infer_dataset(path) if path is not None else "sample-wiki"
    if path is None:
        if dataset in SAMPLES:
            path = data_dir() / SAMPLES[dataset]
        elif dataset in HUB_DATASETS:
            corpus = _load_hub(dataset, split)
            return _nonempty(corpus)
        else:
            raise LowrankError(f"dataset '{dataset}' needs a file: pass {flag('data')} PATH")
    if dataset in ("wiki103", "sample-wiki", "text"):
        file = _wiki_file(path, split) if path.is_dir() else path
        split = _named_split(file, split)
        corpus = Corpus(dataset, "articles", str(file), split, split_articles(read_text(file)))
    elif path.is_dir():
        reviews = _read_acl_imdb(path, split)
        split = split if (path / split).is_dir() else _named_split(path, split)
        corpus = Corpus(dataset, "reviews", str(path), split, reviews)
    else:
        corpus = Corpus(dataset, "reviews", str(path), None, read_table(path))
    return _nonempty(corpus)


def _nonempty(corpus: Corpus) -> Corpus:
    docs = [d for d in corpus.documents if d.strip()]
    if not docs:
        raise no_text(corpus.source)
    return Corpus(corpus.name, corpus.kind, corpus.source, corpus.split, docs)


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The model's own start and end tokens (``[CLS]``/``[SEP]``, ``<s>``/``</s>``, none)."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []  # pragma: no cover - a tokenizer that rewrites the text itself


UNK_MARKER = "<unk>"
"""WikiText-2-form files write words outside their 33k vocabulary as ``<unk>``; fed as text,
a tokenizer cuts it into pieces (MiniLM: four), about 20% of the tokens of such a file."""


def unk_policy(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What ``<unk>`` in a corpus becomes for this tokenizer (recorded in run.json).

    ``map``: the tokenizer's own unknown token, one id per marker. ``drop``: the marker is
    removed, when the tokenizer has no unknown token of its own -- none, or one that doubles
    as a control token (GPT-2's and SmolLM2's ``<|endoftext|>`` is also a document
    boundary, which a decoder treats as such).
    """
    unk, token = tokenizer.unk_token_id, tokenizer.unk_token
    control = {
        getattr(tokenizer, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id")
    }
    own = isinstance(unk, int) and unk not in control and "endoftext" not in str(token)
    if own:
        return {"marker": UNK_MARKER, "policy": "map", "token": str(token), "id": int(unk)}
    reason = (
        "no unknown token" if unk is None else f"its unknown token {token!r} is a control token"
    )
    return {"marker": UNK_MARKER, "policy": "drop", "reason": reason}


def tokenize_documents(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], record: dict[str, Any] | None = None
) -> list[list[int]]:
    """Token ids of each document (no special tokens); every ``<unk>`` marker becomes the
    tokenizer's unknown token (one id) or is dropped with the space before it
    (:func:`unk_policy`), never text. With ``record``, ``record["unk"]`` says which and how
    many markers there were."""
    found = sum(d.count(UNK_MARKER) for d in docs)
    if not found:
        return _token_ids(tokenizer, docs)
    policy = unk_policy(tokenizer)
    if policy["policy"] == "map" and _token_ids(tokenizer, [policy["token"]]) == [[policy["id"]]]:
        # the unknown token's own text is read as that one special token: the marker's
        # neighbours keep their spaces, so the words around it tokenise as they would
        docs = [d.replace(UNK_MARKER, policy["token"]) for d in docs]
    elif policy["policy"] == "map":  # pragma: no cover - a tokenizer that splits its own unk
        raise LowrankError(f"the tokenizer splits its own unknown token {policy['token']!r}")
    else:
        docs = [re.sub(r" ?" + re.escape(UNK_MARKER), "", d) for d in docs]
    if record is not None:
        record["unk"] = policy | {"count": found}
    return _token_ids(tokenizer, docs)


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), 256):
        with quiet():  # documents longer than the model are fine here: we cut them later
            out.extend(tokenizer(texts[i : i + 256], add_special_tokens=False)["input_ids"])
    return out


def _choose(available: int, wanted: int, seed: int | None) -> np.ndarray:
    if seed is None or wanted >= available:
        return np.arange(min(available, wanted))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=wanted, replace=False))


def build_sequences(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    num_sequences: int,
    seed: int | None = None,
    policy: Policy = "auto",
    keep_short: bool = False,
    padding_side: PaddingSide = "right",
) -> Sequences:
    """Cut a corpus into at most ``num_sequences`` sequences of ``seq_len`` tokens.

    Short documents kept with ``keep_short`` are padded after their tokens (``right``) or
    before them (``left``).

    Raises:
        LowrankError: when the corpus yields no full sequence.
    """
    prefix, suffix = special_tokens(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise LowrankError(
            f"{named('seq_len', seq_len)} leaves no room for text after special tokens"
        )
    if padding_side not in ("right", "left"):
        raise LowrankError(f"padding side '{padding_side}': use 'right' or 'left'")
    chosen = policy if policy != "auto" else ("pack" if corpus.kind == "articles" else "document")
    pad = tokenizer.pad_token_id
    pad_id = int(pad if pad is not None else (suffix or prefix or [0])[0])
    record: dict[str, Any] = {
        "policy": chosen,
        "special_tokens": {"start": prefix, "end": suffix},
        "order": "corpus" if seed is None else f"seeded sample (seed {seed})",
        "documents": len(corpus.documents),
    }
    token_docs = tokenize_documents(tokenizer, corpus.documents, record)
    if chosen == "pack":
        stream = np.fromiter((t for d in token_docs for t in d), dtype=np.int64)
        available = len(stream) // body
        if available == 0:
            raise LowrankError(
                f"corpus '{corpus.source}' has {len(stream)} tokens, fewer than one sequence of "
                f"{body} (+{len(prefix) + len(suffix)} special): use a longer corpus or a "
                f"smaller {flag('seq_len')}"
            )
        idx = _choose(available, num_sequences, seed)
        windows = stream[: available * body].reshape(available, body)[idx]
        ids = np.concatenate(
            [np.tile(prefix, (len(idx), 1)), windows, np.tile(suffix, (len(idx), 1))], axis=1
        ).astype(np.int64)
        lengths = np.full(len(idx), seq_len, dtype=np.int64)
        record |= {"window_tokens": body, "available": available, "corpus_tokens": len(stream)}
    else:
        keep = [d for d in token_docs if d and (keep_short or len(d) >= body)]
        skipped = sum(1 for d in token_docs if d) - len(keep)
        if not keep:
            raise LowrankError(
                f"no document of corpus '{corpus.source}' has {body} tokens (+special) for "
                f"{named('seq_len', seq_len)}: use a smaller {flag('seq_len')} or "
                f"{flag('keep_short')}"
            )
        idx = _choose(len(keep), num_sequences, seed)
        ids = np.full((len(idx), seq_len), pad_id, dtype=np.int64)
        lengths = np.zeros(len(idx), dtype=np.int64)
        truncated = 0
        for row, i in enumerate(idx):
            doc = keep[i]
            truncated += len(doc) > body
            seq = [*prefix, *doc[:body], *suffix]
            if padding_side == "left":
                ids[row, seq_len - len(seq) :] = seq
            else:
                ids[row, : len(seq)] = seq
            lengths[row] = len(seq)
        record |= {
            "available": len(keep),
            "skipped_short": skipped,
            "truncated": int(truncated),
            "keep_short": keep_short,
            # padded rows: their spectra are those of smaller matrices (see prepare's warning)
            "short_sequences": int((lengths < seq_len).sum()),
        }
    record["num_sequences"] = len(idx)
    if padding_side != "right":
        record["padding_side"] = padding_side
    return Sequences(ids, lengths, record, padding_side)
