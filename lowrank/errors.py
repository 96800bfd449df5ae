"""The one error class of lowrank.

Library code raises :class:`LowrankError` with the context a user needs (the path, the
option, the shape); the CLI turns it into a single line and exit code 2.
"""


class LowrankError(Exception):
    """Bad input or an impossible request, described in one line for the user."""
