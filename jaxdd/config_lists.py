"""List-valued config keys (`eval.archs`, `eval.baselines`, `eval_at`, `kd.temperatures`, `metadd.archs`,
`pool.custom`): one reader for every form a user writes a list in.

ml_collections hands a string key its command-line text unparsed, so `--config.eval.archs=ConvNet,MLP`,
`--config.eval.archs="('ConvNet','MLP')"` and `--config.eval.archs="[ConvNet, MLP]"` all arrive as
strings; a recipe may also assign a real tuple or list. All of them mean ('ConvNet', 'MLP').
"""

from __future__ import annotations

import numbers

from jaxdd.errors import UserError, is_int

_CLOSING = {"(": ")", "[": "]"}
_QUOTES = ("'", '"')


def _named(key: str, value) -> str:
    return f"{key}={value!r}" if key else repr(value)


def _unquote(item: str) -> str:
    """' "ConvNet" ' -> 'ConvNet': surrounding whitespace and one pair of matching quotes removed."""
    item = item.strip()
    if len(item) >= 2 and item[0] in _QUOTES and item[-1] == item[0]:
        item = item[1:-1].strip()
    return item


def split_list(value, *, key: str = "") -> tuple:
    """The items of a list-valued key: 'a, b' / "('a', 'b')" / "['a','b']" / ('a', 'b') -> ('a', 'b').

    '' / '()' / () give (). String items lose surrounding whitespace and quotes; empty ones (a trailing
    comma) are dropped; other items of a real sequence are kept as they are. `key` names the key in the
    UserError for a bracket that is never closed or a value that is no list at all.
    """
    if isinstance(value, tuple | list):
        items = value
    elif isinstance(value, str):
        text = value.strip()
        if text[:1] in _CLOSING:
            if not text.endswith(_CLOSING[text[0]]):
                raise UserError(
                    f"{_named(key, value)} opens {text[0]!r} but does not end with {_CLOSING[text[0]]!r}: "
                    "write the list as a,b or as (a, b) / [a, b]."
                )
            text = text[1:-1]
        items = text.split(",")
    else:
        raise UserError(
            f"{_named(key, value)} must be a comma-separated string such as 'a,b', or a tuple or list."
        )
    items = (_unquote(item) if isinstance(item, str) else item for item in items)
    return tuple(item for item in items if item != "")


def split_names(value, *, key: str = "") -> tuple[str, ...]:
    """A list of names (`split_list`): 'ConvNet, MLP' or "('ConvNet','MLP')" -> ('ConvNet', 'MLP')."""
    items = split_list(value, key=key)
    for item in items:
        if not isinstance(item, str):
            raise UserError(f"{_named(key, value)} holds {item!r}, which is not a name: list names only.")
    return items


def split_ints(value, *, key: str = "") -> tuple[int, ...]:
    """A list of integers (`split_list`): '10, 20' or '(10, 20)' -> (10, 20); '' -> ()."""
    try:
        return tuple(_to_int(item) for item in split_list(value, key=key))
    except ValueError:
        raise UserError(f"{_named(key, value)} must be comma-separated integers, e.g. '500,1000'.") from None


def split_floats(value, *, key: str = "") -> tuple[float, ...]:
    """A list of numbers (`split_list`): '1, 1.5' or '(1, 1.5)' -> (1.0, 1.5); '' -> (). Non-finite
    numbers are returned as they are: the key's validation decides whether they are allowed."""
    try:
        return tuple(_to_float(item) for item in split_list(value, key=key))
    except ValueError:
        raise UserError(f"{_named(key, value)} must be comma-separated numbers, e.g. '1,1.5,2'.") from None


def _to_int(item) -> int:
    if is_int(item):
        return int(item)
    if isinstance(item, str):
        return int(item)
    raise ValueError(item)


def _to_float(item) -> float:
    if isinstance(item, bool) or not isinstance(item, str | numbers.Real):
        raise ValueError(item)
    return float(item)
