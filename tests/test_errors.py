"""The range checks of jaxdd.errors: which values pass, and the one message shape of each."""

import math
import re

import numpy as np
import pytest

from jaxdd.errors import UserError, require_in_interval, require_int, require_non_negative, require_positive


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as raised:
        call(*args, **kwargs)
    return str(raised.value)


@pytest.mark.parametrize(
    "value, minimum, marker",
    [(0, 0, None), (3, 1, None), (np.int64(1), 1, None), (-1, -1, None), (0, 1, 0), (-1, 0, -1), (5, 1, 0)],
)
def test_require_int_accepts(value, minimum, marker):
    require_int("k", value, minimum=minimum, marker=marker)


@pytest.mark.parametrize(
    "value, minimum, marker",
    [(True, 0, None), (False, 0, None), (True, 1, 0), (False, 1, 0), (0, 1, None), (1.0, 1, None),
     (2.5, 1, None), ("3", 1, None), (None, 0, None), (np.float32(1), 0, None), (-1, 1, 0), (-2, 0, -1)],
)  # fmt: skip
def test_require_int_refuses(value, minimum, marker):
    assert _refused(require_int, "k", value, minimum=minimum, marker=marker).startswith(f"k={value!r} ")


@pytest.mark.parametrize(
    "kwargs, tail",
    [
        ({"minimum": 1}, "≥ 1."),
        ({"minimum": 1, "note": "the reference: 256"}, "≥ 1 (the reference: 256)."),
        ({"minimum": 1, "marker": -1, "note": "detect"}, "≥ 1, or -1 (detect)."),
        ({"minimum": 1, "marker": -1}, "≥ 1, or -1."),
    ],
)
def test_require_int_message(kwargs, tail):
    assert _refused(require_int, "gm.num_nets", 0, **kwargs) == f"gm.num_nets=0 must be an integer {tail}"


@pytest.mark.parametrize("value", [1e-12, 1, 2.5, np.float32(0.1), np.int32(3)])
def test_require_positive_accepts(value):
    require_positive("k", value)


@pytest.mark.parametrize("value", [0, 0.0, -1e-9, math.nan, math.inf, -math.inf, np.nan, True, "1", None])
def test_require_positive_refuses(value):
    assert _refused(require_positive, "k", value) == f"k={value!r} must be > 0 and finite."


@pytest.mark.parametrize("value", [0, 0.0, 1e-12, 7, np.float32(0.5)])
def test_require_non_negative_accepts(value):
    require_non_negative("k", value)


@pytest.mark.parametrize("value", [-1e-12, -1, math.nan, math.inf, False, None])
def test_require_non_negative_refuses(value):
    assert _refused(require_non_negative, "k", value) == f"k={value!r} must be ≥ 0 and finite."


def test_number_messages_keep_the_note():
    message = _refused(require_positive, "dm.lr_img", math.inf, note="reference: 1; CIFAR-10 IPC ≥ 100: 10")
    assert message == "dm.lr_img=inf must be > 0 and finite (reference: 1; CIFAR-10 IPC ≥ 100: 10)."
    message = _refused(require_non_negative, "sre2l.r_bn", -0.5, note="the reference: 0.01")
    assert message == "sre2l.r_bn=-0.5 must be ≥ 0 and finite (the reference: 0.01)."


@pytest.mark.parametrize(
    "interval, inside, outside",
    [
        ("[0, 1)", [0, 0.0, 0.5, 0.999999, np.float32(0.5)], [1, 1.0, -1e-9]),
        ("(0, 1]", [1e-9, 0.08, 1, 1.0], [0, 0.0, 1.0000001]),
        ("[0, 1]", [0, 0.5, 1], [-0.1, 1.1]),
        ("(0, 1)", [0.5], [0, 1]),
    ],
)
def test_require_in_interval_edges(interval, inside, outside):
    for value in inside:
        require_in_interval("k", value, interval)
    for value in [*outside, math.nan, math.inf, -math.inf, True, False, None, "0.5"]:
        with pytest.raises(UserError, match="^" + re.escape(f"k={value!r} must lie in {interval}.") + "$"):
            require_in_interval("k", value, interval)


def test_require_in_interval_message():
    message = _refused(require_in_interval, "gm.momentum_img", 1.0, "[0, 1)", note="reference 0.5")
    assert message == "gm.momentum_img=1.0 must lie in [0, 1) (reference 0.5)."
    message = _refused(require_in_interval, "metadd.min_aux_accuracy", 1.5, "[0, 1]")
    assert message == "metadd.min_aux_accuracy=1.5 must lie in [0, 1]."


@pytest.mark.parametrize("interval", ["0, 1", "[0; 1)", "[0, 1, 2]", "{0, 1}", "[a, 1)", "[", ""])
def test_a_malformed_interval_is_a_bug_not_a_user_error(interval):
    with pytest.raises(ValueError) as raised:
        require_in_interval("k", 0.5, interval)
    assert not isinstance(raised.value, UserError)
