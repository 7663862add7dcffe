"""User-facing errors: a bad value, missing data or an unknown name, reported without a traceback; the
checks that raise them (`require`; the range checks `require_int`, `require_positive`,
`require_non_negative` and `require_in_interval`, each with its one message); and the one message for a
full disk, found anywhere in an exception's chain."""

import errno
import math
import numbers
import operator
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


# ---- the range checks: one message shape each, "KEY=VALUE must ... (NOTE)." ----
# `key`: the setting's dotted name as the user writes it ('gm.lr_img'); `note`: the hint that follows in
# parentheses (the reference's value, what a marker means), left out when empty.


def require_int(key: str, value, *, minimum: int, marker: int | None = None, note: str = "") -> None:
    """Raises UserError unless `value` is an integer (`is_int`: a bool is not one) ≥ `minimum`, or is
    `marker` (a value below the range that stands for "choose for me", e.g. 0 = detect).

    Message: "KEY=VALUE must be an integer ≥ MINIMUM (NOTE)." or "... ≥ MINIMUM, or MARKER (NOTE)."
    """
    bound = f"≥ {minimum}" if marker is None else f"≥ {minimum}, or {marker}"
    require(
        is_int(value) and (value >= minimum or (marker is not None and value == marker)),
        _with_note(f"{key}={value!r} must be an integer {bound}", note),
    )


def require_positive(key: str, value, *, note: str = "") -> None:
    """Raises UserError unless `value` is a finite number (`is_finite_number`) > 0.

    Message: "KEY=VALUE must be > 0 and finite (NOTE)."
    """
    require(
        is_finite_number(value) and value > 0, _with_note(f"{key}={value!r} must be > 0 and finite", note)
    )


def require_non_negative(key: str, value, *, note: str = "") -> None:
    """Raises UserError unless `value` is a finite number (`is_finite_number`) ≥ 0.

    Message: "KEY=VALUE must be ≥ 0 and finite (NOTE)."
    """
    require(
        is_finite_number(value) and value >= 0, _with_note(f"{key}={value!r} must be ≥ 0 and finite", note)
    )


def require_in_interval(key: str, value, interval: str, *, note: str = "") -> None:
    """Raises UserError unless `value` is a finite number (`is_finite_number`) in `interval`, written as
    the message shows it: '[0, 1)', '(0, 1]', '[0, 1]' ('[' / ']' include the bound, '(' / ')' do not).
    A malformed `interval` is the caller's bug: ValueError, not UserError.

    Message: "KEY=VALUE must lie in INTERVAL (NOTE)."
    """
    contains = _interval_test(interval)
    require(
        is_finite_number(value) and contains(value),
        _with_note(f"{key}={value!r} must lie in {interval}", note),
    )


def _with_note(message: str, note: str) -> str:
    return f"{message} ({note})." if note else f"{message}."


def _interval_test(interval: str):
    """`value -> bool` for an interval written '[low, high)', '(low, high]' and the like."""
    bounds = interval[1:-1].split(",")
    if len(interval) < 2 or interval[0] not in "[(" or interval[-1] not in "])" or len(bounds) != 2:
        raise ValueError(f"interval {interval!r} is not written '[low, high)', '(low, high]' or the like.")
    low, high = float(bounds[0]), float(bounds[1])
    above = operator.le if interval[0] == "[" else operator.lt
    below = operator.le if interval[-1] == "]" else operator.lt
    return lambda value: above(low, value) and below(value, high)


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
