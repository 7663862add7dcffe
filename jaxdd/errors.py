"""User-facing errors: a bad value, missing data or an unknown name, reported without a traceback."""

import numbers


class UserError(ValueError):
    """A mistake the user can fix; its message names the bad value and the fix.

    The launcher prints the message and exits non-zero without a traceback. Raise it before any
    expensive work (data loading, compilation) wherever the check is possible.
    """


def require(condition: bool, message: str) -> None:
    """Raises UserError(`message`) unless `condition`: the one-line form of every validation check."""
    if not condition:
        raise UserError(message)


def is_int(value) -> bool:
    """Whether `value` is an integer (Python or numpy) and not a bool (True would otherwise pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
