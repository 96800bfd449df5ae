"""The Hugging Face libraries: keep their chatter off the terminal, and ask whether the hub is
reachable before they spend minutes retrying."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NOISY = ("huggingface_hub", "transformers", "datasets")


@contextmanager
def quiet(level: int = logging.ERROR, progress: bool = True) -> Iterator[None]:
    """Raise the log level of the Hugging Face libraries for the duration of the block.

    Args:
        level: the least severe record they may still emit.
        progress: False also hides their progress bars (transformers' "Loading weights" and
            the hub's), so that a refusal right after loading is the only line on stderr;
            keep True around downloads, whose bars are worth seeing.
    """
    loggers = [logging.getLogger(n) for n in NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    restore = None if progress else _hide_progress_bars()
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)
        if restore is not None:
            restore()


def _hide_progress_bars() -> Callable[[], None]:
    """Turn off the bars of transformers and the hub; return what turns them back as they were."""
    import warnings

    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_bars = hf_logging.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # both transformers' and the hub's

    def restore() -> None:
        with warnings.catch_warnings():  # the hub warns when its environment variable says off
            warnings.simplefilter("ignore")
            if transformers_bars:
                hf_logging.enable_progress_bar()  # turns the hub's on too
            if hub_bars:
                hub_utils.enable_progress_bars()
            else:
                hub_utils.disable_progress_bars()

    return restore


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
