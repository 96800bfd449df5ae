"""Text from files, shown safely: control characters escaped before they reach a terminal.

A run.json, a corpus or a config may hold any bytes; echoed raw, ``ESC ] 0;... BEL`` retitles
the user's terminal and other sequences do worse. Everything the command line prints that
came from a file goes through :func:`printable`.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 controls (U+0080-U+009F)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

__all__ = ["printable"]


def printable(text: str) -> str:
    """``text`` with every control character but tab and newline written as ``\\xNN``
    (``"a\\x1b]0;x\\x07"`` prints as ``a\\x1b]0;x\\x07``, visibly and harmlessly)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
