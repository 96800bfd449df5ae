"""Keep third-party chatter (hub retries, tokenizer length warnings) off the user's terminal."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

NOISY = ("huggingface_hub", "transformers", "datasets")


@contextmanager
def quiet(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the log level of the Hugging Face libraries for the duration of the block."""
    loggers = [logging.getLogger(n) for n in NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)
