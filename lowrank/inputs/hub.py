"""The Hugging Face libraries: keep their chatter off the terminal, and ask whether the hub is
reachable before they spend minutes retrying."""

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


def hub_reachable(timeout: float = 5.0) -> bool:
    """One TCP connection to the hub endpoint (False at once when HF_HUB_OFFLINE is set)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline() -> Iterator[None]:
    """Make the Hugging Face libraries use their local cache only, for the block."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
