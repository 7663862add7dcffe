"""User-facing errors: a bad value, missing data or an unknown name, reported without a traceback."""


class UserError(ValueError):
    """A mistake the user can fix; its message names the bad value and the fix.

    The launcher prints the message and exits non-zero without a traceback. Raise it before any
    expensive work (data loading, compilation) wherever the check is possible.
    """
