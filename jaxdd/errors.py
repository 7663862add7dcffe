"""User-facing errors: a bad value, missing data or an unknown name, reported without a traceback; the
checks that raise them; and the one message for a full disk, found anywhere in an exception's chain."""

import errno
import math
import numbers
import os


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


def is_finite_number(value) -> bool:
    """Whether `value` is a real number (Python or numpy, not a bool) other than NaN and ±inf.

    The one float check: `inf > 0` holds, so a range check alone lets `lr=inf` through to the first step.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def find_cause(error: BaseException, wanted) -> BaseException | None:
    """The first exception in `error`'s chain (itself, then what it was raised from or during, and the
    members of an exception group) for which `wanted(exception)` holds; None if there is none. Follows
    the chain as a traceback prints it: `raise ... from None` hides the context."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if wanted(current):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending += list(current.exceptions)
        pending.append(current.__cause__)
        if not current.__suppress_context__:
            pending.append(current.__context__)
    return None


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is an OSError for a full disk (ENOSPC) or an exhausted quota (EDQUOT)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(error: OSError, workdir: str | None) -> str:
    """The one message for a full disk (or exhausted quota) met while writing."""
    where = error.filename or workdir or os.getcwd()
    reason = "is full" if error.errno == errno.ENOSPC else "has no quota left"
    return (
        f"The disk holding {str(where)!r} {reason} ({os.strerror(error.errno)}). Free space there and rerun "
        "the same command: a distillation resumes from its last checkpoint."
    )
