"""The Hugging Face libraries: keep their chatter off the terminal, and ask whether the hub is
reachable before they spend minutes retrying.

:func:`check_hub_model` and :func:`check_hub_dataset` answer, before transformers or
datasets is imported, whether a hub model or dataset is cached or reachable at all: the
command line asks them first, so that an offline machine says so in a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lowrank.errors import LowrankError

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


# --- before anything heavy is imported: is what the hub should give there at all? -------------


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_model(repo: str) -> bool:
    """Whether the hub model ``repo``'s config.json is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except (ValueError, OSError):  # not a valid repo id: loading says so
        return True


def check_hub_model(name: str, repo: str, preset: bool, hint: str = "") -> None:
    """Refuse at once a hub model that is neither cached nor reachable, saying what to do
    (without transformers: the check takes a TCP connection, not a minute of retries).
    ``hint`` follows the name (`` (did you mean the preset 'minilm'?)``).

    Raises:
        LowrankError: naming the model, the cache and the three ways to get it.
    """
    if cached_model(repo) or hub_reachable():
        return
    from lowrank.core.options import named

    what = f"the preset '{name}' is the hub model {repo}; it" if preset else f"model '{name}'"
    raise LowrankError(
        f"{what}{hint} is not in the Hugging Face cache ({_hub_cache()}) and the hub cannot be "
        f"reached: run it once where the network reaches huggingface.co (it is kept in the "
        f"cache; set HF_HOME to share one), or there run `hf download {repo} --local-dir DIR` "
        f"and pass {named('model', 'DIR')}"
    )


def cached_dataset(repo: str) -> bool:
    """Whether anything of the hub dataset ``repo`` is in the local caches (the hub's, or
    the ``datasets`` library's); a true answer only means loading may work offline."""
    import os
    from pathlib import Path

    hub = Path(_hub_cache()) / f"datasets--{repo.replace('/', '--')}"
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    library = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    return hub.exists() or any(library.glob(f"{repo.replace('/', '___')}*"))


def check_hub_dataset(dataset: str, repo: str) -> None:
    """Refuse at once a hub dataset that is neither cached nor reachable.

    Raises:
        LowrankError: naming the dataset and how to pass a local copy.
    """
    if cached_dataset(repo) or hub_reachable():
        return
    from lowrank.core.options import flag

    raise LowrankError(
        f"dataset '{dataset}' ({repo}) is not in the local cache and the hub cannot be "
        f"reached: pass a local copy with {flag('data')}"
    )
