"""The error and warning classes of lowrank.

Library code raises :class:`LowrankError` with the context a user needs (the path, the
option, the shape); the CLI turns it into a single line and exit code 2.

Something short of what was asked (fewer sequences than ``num_sequences``, padded rows) is
a WARNING record on the ``lowrank`` logger. The CLI prints it as ``warning: ...``; in a
notebook or script that has not configured logging it becomes a :class:`LowrankWarning`
(``warnings.warn``), which Python and Jupyter show by default, pointing at the user's line.
Silence it with ``warnings.filterwarnings("ignore", category=lowrank.LowrankWarning)``; an
application that configures logging receives the record through logging instead.
"""

import logging
import sys
import warnings
from pathlib import Path


class LowrankError(Exception):
    """Bad input or an impossible request, described in one line for the user."""


class LowrankWarning(UserWarning):
    """The run went on with less than was asked (e.g. fewer sequences than requested)."""


_PACKAGE = Path(__file__).resolve().parent
_LOGGING = Path(logging.__file__).resolve().parent


class WarningsHandler(logging.Handler):
    """Turn the library's WARNING records into :class:`LowrankWarning` while the application
    has not configured logging (no handler on the root logger); otherwise stay silent and let
    the record reach the application's handlers by propagation."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        warnings.warn(record.getMessage(), LowrankWarning, stacklevel=_user_level())


def _user_level() -> int:
    """The ``stacklevel`` that points a warning raised in :meth:`WarningsHandler.emit` at the
    first frame outside lowrank and logging (the user's call)."""
    frame = sys._getframe(1)  # the caller of this function: emit, at stacklevel 1
    level = 1
    while frame is not None:
        folder = Path(frame.f_code.co_filename).resolve().parent
        if not (folder == _LOGGING or folder.is_relative_to(_PACKAGE)):
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return 1
