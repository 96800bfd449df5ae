"""A model and a corpus cut into sequences: what every analysis starts from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.inputs.config import PAPER_NUM_SEQUENCES, InputConfig

if TYPE_CHECKING:
    import torch

    from lowrank.inputs.corpora import Corpus, Sequences
    from lowrank.inputs.models import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Model, corpus and sequences of a run, with the metadata every run records."""

    corpus: Corpus
    loaded: LoadedModel
    sequences: Sequences
    device: torch.device
    corpus_kind: str | None = None  # run.json's corpus kind when not corpus.kind ("memory")

    def meta(self, config: InputConfig) -> dict[str, Any]:
        src = self.loaded.source
        return {
            "model": {
                "name": src.name,
                "kind": src.kind,
                "path": src.location,
                "revision": src.revision,
                "model_type": self.loaded.model_type,
                **({"gguf": src.provenance} if src.provenance else {}),
            },
            "corpus": {
                "dataset": self.corpus.name,
                "kind": self.corpus_kind or self.corpus.kind,
                "source": self.corpus.source,
                "split": self.corpus.split,
            },
            "sequence_policy": self.sequences.policy,
            "seq_len": config.seq_len,
            "num_layers": self.loaded.num_layers,
            "num_heads": self.loaded.num_heads,
            "causal": self.loaded.causal,  # a decoder: P is lower-triangular
            "seed": config.seed,
            "device": str(self.device),
            "dtype": config.dtype,
            "batch_size": config.batch_size,
        }

    def require_full_length(self, command: str) -> None:
        """Refuse padded sequences (token ids with an attention mask that has zeros): the
        projections of ``command`` act on whole n x n matrices P."""
        lengths, n = self.sequences.lengths, self.sequences.input_ids.shape[1]
        short = int((lengths < n).sum())
        if short:
            raise LowrankError(
                f"lowrank {command} needs full-length sequences: {short} of {len(lengths)} are "
                f"padded (attention_mask), shorter than n = {n}; give unpadded token ids"
            )


def prepare(config: InputConfig) -> Prepared:
    """Load the corpus and model and cut the sequences, checking every option on the way."""
    from lowrank.core.device import resolve_device
    from lowrank.inputs.corpora import build_sequences, load_corpus
    from lowrank.inputs.models import load_model

    device = resolve_device(config.device)
    if config.dtype != "float32" and device.type == "cpu":
        raise LowrankError(
            f"{named('dtype', config.dtype)} needs {flag('device')} cuda; use float32 on the CPU"
        )
    corpus = load_corpus(config.dataset, config.data, config.split)
    loaded = load_model(config.model, str(device), config.dtype)
    loaded.check_seq_len(config.seq_len)
    sequences = build_sequences(
        corpus,
        loaded.tokenizer,
        config.seq_len,
        config.num_sequences,
        config.seed,
        config.policy,
        config.keep_short,
    )
    prep = Prepared(corpus, loaded, sequences, device)
    report(prep, config)
    return prep


def report(prep: Prepared, config: InputConfig) -> None:
    """Log what was prepared: the model's shape, the sequences, and anything short of asked.

    Fewer sequences than asked is a warning (a :class:`~lowrank.errors.LowrankWarning` in a
    notebook), for texts passed in memory too: 20 paragraphs rarely hold 20 sequences of 512
    tokens, and the run's N is what its intervals rest on.
    """
    corpus, loaded, sequences, device = prep.corpus, prep.loaded, prep.sequences, prep.device
    policy = sequences.policy
    n_seq = len(sequences.lengths)
    if n_seq < config.num_sequences:
        asked = named("num_sequences", config.num_sequences)
        if config.num_sequences == PAPER_NUM_SEQUENCES:  # not asked: the default
            asked = f"the paper's {PAPER_NUM_SEQUENCES} ({flag('num_sequences')}'s default)"
        log.warning(
            f"corpus '{corpus.name}' yields {policy['available']} sequences of {config.seq_len} "
            f"tokens, fewer than {asked}: analysing {n_seq}"
        )
    if policy.get("skipped_short"):
        log.info(
            f"skipped {policy['skipped_short']} documents shorter than {config.seq_len} tokens "
            f"({flag('keep_short')} keeps them)"
        )
    short = policy.get("short_sequences", 0)
    if short and policy.get("policy") == "token ids":
        log.warning(
            f"{short} of {n_seq} sequences ({short / n_seq:.0%}) are padded (attention_mask); "
            "their spectra are those of shorter matrices and bias the means toward short "
            "sequences"
        )
    elif short:
        log.warning(
            f"{flag('keep_short')}: {short} of {n_seq} sequences ({short / n_seq:.0%}) are "
            f"shorter than "
            f"n = {config.seq_len} and padded; their spectra are those of shorter matrices and "
            "bias the means toward short documents"
        )
    log.info(
        f"{loaded.source.name}: {loaded.num_layers} layers x {loaded.num_heads} heads, "
        f"{n_seq} sequences of {config.seq_len} tokens from {corpus.name} on {device}"
    )
