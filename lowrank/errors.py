"""The one error class of lowrank.

Library code raises :class:`LowrankError` with the context a user needs (the path, the
option, the shape); the CLI turns it into a single line and exit code 2.
"""


class LowrankError(Exception):
    """Bad input or an impossible request, described in one line for the user."""


def require_finite_positive(option: str, value: float) -> None:
    """Raise the one-line error for an option that must be a finite number above 0 (NaN,
    infinities, zero and negatives are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LowrankError(f"{option} {value!r} must be a number")
    if not (value == value and abs(value) != float("inf") and value > 0):
        raise LowrankError(f"{option} {value} must be a finite number > 0")
