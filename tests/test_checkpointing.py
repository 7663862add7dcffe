"""Checkpointing: exact round trips, retention, fallback past unreadable steps, config checks."""

import functools
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxdd.checkpointing import IGNORED_CONFIG_KEYS, Checkpointer, config_differences
from jaxdd.config import resolve_backend
from jaxdd.errors import UserError
from jaxdd.methods.base import DistillState

# Orbax's callbacks after a failed restore may land after the filter a failed restore installs is gone
# (`test_a_restore_drops_the_closed_event_loops_noise_and_then_puts_the_hook_back`).
pytestmark = pytest.mark.filterwarnings(
    "ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning"
)

CONFIG = {
    "dataset": "digits",
    "ipc": 2,
    "iterations": 10,
    "checkpoint_every": 1,
    "gm": {"lr_img": 0.1},
    "eval": {"num_nets": 5, "archs": "ConvNet"},
}


def make_state(step: int) -> DistillState:
    """A tiny DistillState whose every leaf depends on `step` (momentum trace non-zero)."""
    opt = optax.sgd(0.1, momentum=0.5)
    images = jnp.arange(2 * 3 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 3, 1) / 7 + step
    opt_state = opt.init(images)
    _, opt_state = opt.update(jnp.full_like(images, 0.3 * step + 0.1), opt_state)
    return DistillState(
        images=images,
        labels=jnp.array([0, 1], jnp.int32),
        opt_state=opt_state,
        key=jax.random.fold_in(jax.random.PRNGKey(42), step),
        step=jnp.asarray(step, jnp.int32),
    )


ABSTRACT = jax.eval_shape(lambda: make_state(0))


def assert_same(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def save_steps(directory, steps, *, config=CONFIG, max_to_keep=3):
    with Checkpointer(directory, max_to_keep=max_to_keep) as ckpt:
        for step in steps:
            ckpt.save(step, make_state(step), config)


def restore(directory, config=CONFIG, **kwargs):
    logs = []
    with Checkpointer(directory) as ckpt:
        result = ckpt.restore_latest(ABSTRACT, config, log=logs.append, **kwargs)
    return result, logs


def test_round_trip_is_exact_and_async_save_is_finished_by_close(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=3, async_save=True)
    ckpt.save(7, make_state(7), CONFIG)
    ckpt.close()
    assert (tmp_path / "7" / "commit_success.txt").is_file()
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]

    (state, step), logs = restore(tmp_path)
    assert step == 7 and logs == []
    assert_same(state, make_state(7))
    assert state.key.dtype == jnp.uint32 and state.step.dtype == jnp.int32 and int(state.step) == 7
    # A concrete init state works as the target too.
    with Checkpointer(tmp_path) as again:
        state, _ = again.restore_latest(make_state(0), CONFIG, log=logs.append)
    assert_same(state, make_state(7))


def test_no_checkpoint_gives_none(tmp_path):
    assert restore(tmp_path / "checkpoints") == (None, [])


def test_max_to_keep(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4, 5], max_to_keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["4", "5"]
    (state, step), _ = restore(tmp_path)
    assert step == 5
    assert_same(state, make_state(5))


def _delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


def _truncate_arrays(step_dir):
    for path in (step_dir / "state" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:10])


def _delete_arrays(step_dir):
    shutil.rmtree(step_dir / "state" / "d")


def _delete_config(step_dir):
    (step_dir / "config" / "metadata").unlink()


@pytest.mark.parametrize("corrupt", [_delete_metadata, _truncate_arrays, _delete_arrays, _delete_config])
def test_unreadable_latest_falls_back_to_previous(tmp_path, corrupt):
    save_steps(tmp_path, [1, 2, 3])
    corrupt(tmp_path / "3")
    (state, step), logs = restore(tmp_path)
    assert step == 2
    assert_same(state, make_state(2))
    assert any("iteration 3" in line and "cannot be read" in line for line in logs), logs
    # The unreadable step is kept aside, and the resumed run can save step 3 again.
    assert (tmp_path / "3.unreadable").is_dir()
    save_steps(tmp_path, [3])
    (state, step), logs = restore(tmp_path)
    assert step == 3 and logs == []
    assert_same(state, make_state(3))


def test_all_unreadable_raises_and_moves_nothing(tmp_path):
    save_steps(tmp_path, [1, 2])
    _delete_arrays(tmp_path / "1")
    _delete_arrays(tmp_path / "2")
    with pytest.raises(UserError, match="None of the checkpoints"):
        restore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["1", "2"]


def test_leftovers_of_interrupted_saves_are_ignored_and_cleaned(tmp_path):
    save_steps(tmp_path, [1])
    # What a save killed before its final rename leaves: `<step>.orbax-checkpoint-tmp` without
    # commit_success.txt (here for the next step and for a later one).
    leftovers = [tmp_path / "2.orbax-checkpoint-tmp", tmp_path / "9.orbax-checkpoint-tmp"]
    for leftover in leftovers:
        shutil.copytree(tmp_path / "1", leftover)
        (leftover / "commit_success.txt").unlink()
    (state, step), logs = restore(tmp_path)
    assert step == 1 and logs == []
    assert_same(state, make_state(1))
    save_steps(tmp_path, [2])  # a new manager removes unfinished saves before its first save
    assert not any(leftover.exists() for leftover in leftovers)
    (state, step), _ = restore(tmp_path)
    assert step == 2
    assert_same(state, make_state(2))


def test_result_changing_config_key_raises(tmp_path):
    save_steps(tmp_path, [1])
    changed = {**CONFIG, "ipc": 3, "gm": {"lr_img": 0.2}}
    with pytest.raises(UserError) as error:
        restore(tmp_path, changed)
    message = str(error.value)
    assert "ipc: 2 → 3" in message and "gm.lr_img: 0.1 → 0.2" in message
    assert "--workdir" in message and "resume_with_changed_config=True" in message


def test_ignored_config_keys_may_change(tmp_path):
    save_steps(tmp_path, [1])
    changed = {**CONFIG, "eval": {"num_nets": 1, "archs": ""}, "checkpoint_every": 5}
    (state, step), logs = restore(tmp_path, changed)
    assert step == 1 and logs == []
    assert_same(state, make_state(1))
    # The iteration count changes a schedule that depends on the total (SRe2L's cosine): only the run
    # driver, which knows the method, may ignore it.
    assert "iterations" not in IGNORED_CONFIG_KEYS
    with pytest.raises(UserError, match="iterations: 10 → 50"):
        restore(tmp_path, {**CONFIG, "iterations": 50})
    (_, step), _ = restore(
        tmp_path, {**CONFIG, "iterations": 50}, ignored_keys=(*IGNORED_CONFIG_KEYS, "iterations")
    )
    assert step == 1


def test_allow_config_change_resumes_and_logs(tmp_path):
    save_steps(tmp_path, [1])
    (state, step), logs = restore(tmp_path, {**CONFIG, "ipc": 3}, allow_config_change=True)
    assert step == 1
    assert_same(state, make_state(1))
    assert len(logs) == 1 and "ipc: 2 → 3" in logs[0]


def test_differently_shaped_state_raises(tmp_path):
    save_steps(tmp_path, [1])
    other = jax.eval_shape(
        lambda: make_state(0).replace(opt_state=optax.adam(0.1).init(jnp.zeros((2, 3, 3, 1))))
    )
    with Checkpointer(tmp_path) as ckpt, pytest.raises(UserError, match="differently shaped state"):
        ckpt.restore_latest(other, CONFIG, log=lambda _: None)
    assert (tmp_path / "1").is_dir()


def test_config_differences():
    old = {"a": 1, "eval": {"x": 1}, "evaluate": 1, "nested": {"b": [1, 2]}}
    new = {"a": 1, "eval": {"x": 2, "y": 3}, "evaluate": 2, "nested": {"b": (1, 3)}, "new": True}
    assert config_differences(old, new) == {
        "evaluate": (1, 2),  # 'eval' covers eval.* only, not keys that merely start with it
        "nested.b": ([1, 2], [1, 3]),
        "new": ("<absent>", True),
    }
    assert "checkpoint_every" in IGNORED_CONFIG_KEYS and "eval" in IGNORED_CONFIG_KEYS


def test_a_key_added_since_at_its_default_is_no_difference():
    # A run saved before jaxdd grew `new` ran as `new`'s default does; any other value is a difference,
    # and a key the new config lacks is one whatever the defaults say.
    old, defaults = {"a": 1, "gone": 5}, {"a": 1, "new": 0, "gone": 5}
    assert config_differences(old, {"a": 1, "new": 0, "gone": 5}, defaults=defaults) == {}
    assert config_differences(old, {"a": 1, "new": 2, "gone": 5}, defaults=defaults) == {
        "new": ("<absent>", 2)
    }
    assert config_differences(old, {"a": 1, "new": 0}, defaults=defaults) == {"gone": (5, "<absent>")}


def test_resume_accepts_a_key_added_since_at_its_default(tmp_path):
    save_steps(tmp_path, [1])
    grown = {**CONFIG, "added": {"per_class": 0}}
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(UserError, match=r"added\.per_class: '<absent>' → 0"):
            ckpt.restore_latest(make_state(0), grown, log=lambda _: None)
        _, step = ckpt.restore_latest(
            make_state(0), grown, defaults={"added.per_class": 0}, log=lambda _: None
        )
    assert step == 1


def test_an_older_configs_auto_is_read_as_this_backends_choice(tmp_path):
    """A run saved before runs recorded the backend's choices says 'auto'; read with `resolve_backend` it
    says what it meant on this backend, and resumes under a config that records the choice."""
    save_steps(tmp_path, [1], config={**CONFIG, "gm": {"lr_img": 0.1, "parallel": "auto"}})
    resolved = {**CONFIG, "gm": {"lr_img": 0.1, "parallel": "loop"}}
    with pytest.raises(UserError, match=r"gm\.parallel: 'auto' → 'loop'"):
        restore(tmp_path, config=resolved)
    on_cpu = functools.partial(resolve_backend, backend="cpu")
    with Checkpointer(tmp_path, read_config=on_cpu) as ckpt:
        assert ckpt.saved_config(1)["gm"] == resolved["gm"]
        _, step = ckpt.restore_latest(ABSTRACT, resolved, log=lambda _: None)
    assert step == 1


class _Unraisable:
    """An object whose finaliser raises `error`: dropped, it reaches `sys.unraisablehook`, as
    TensorStore's late callbacks do."""

    def __init__(self, error: Exception):
        self.error = error

    def __del__(self):
        raise self.error


def test_a_restore_drops_the_closed_event_loops_noise_and_then_puts_the_hook_back(tmp_path, monkeypatch):
    heard = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: heard.append(unraisable))
    hook = sys.unraisablehook
    save_steps(tmp_path, [1, 2, 3])
    assert restore(tmp_path)[0][1] == 3 and sys.unraisablehook is hook  # put back after a clean restore too
    _truncate_arrays(tmp_path / "3")

    def late_callbacks(state):  # step 2, read after step 3 failed
        _Unraisable(RuntimeError("Event loop is closed"))
        _Unraisable(RuntimeError("another error"))

    (_, step), _ = restore(tmp_path, check=late_callbacks)
    assert step == 2 and _ours(heard) == ["another error"]  # only the closed event loop's noise is dropped
    assert sys.unraisablehook is hook  # the process's hook is back
    _Unraisable(RuntimeError("Event loop is closed"))
    assert _ours(heard) == ["another error", "Event loop is closed"]


def _ours(heard) -> list[str]:
    """The messages of the `_Unraisable`s among `heard` (TensorStore's own may land here too)."""
    return [str(u.exc_value) for u in heard if getattr(u.object, "__qualname__", "") == "_Unraisable.__del__"]


def test_a_non_finite_state_is_never_saved(tmp_path):
    nan_state = make_state(2).replace(images=make_state(2).images.at[0, 0, 0, 0].set(jnp.nan))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(1), CONFIG)
        with pytest.raises(ValueError, match="non-finite state of step 2"):
            ckpt.save(2, nan_state, CONFIG)
    assert Checkpointer(tmp_path).steps() == [1]


def test_a_non_finite_restored_state_falls_back(tmp_path):
    # What a checkpoint written before the guard existed (no digest) may hold.
    save_steps(tmp_path, [1])
    inf_state = make_state(2).replace(images=jnp.full_like(make_state(2).images, jnp.inf))
    with Checkpointer(tmp_path) as ckpt:
        args = ocp.args.Composite(state=ocp.args.StandardSave(inf_state), config=ocp.args.JsonSave(CONFIG))
        ckpt._manager.save(2, args=args)
    (state, step), logs = restore(tmp_path)
    assert step == 1
    assert_same(state, make_state(1))
    assert "iteration 2" in logs[0] and "non-finite" in logs[0]


def test_state_files_that_do_not_match_their_digest_fall_back(tmp_path):
    save_steps(tmp_path, [1, 2])
    save_steps(tmp_path / "other", [3])
    # Step 2's state files replaced by a well-formed state with other values: only the digest can tell.
    shutil.rmtree(tmp_path / "2" / "state")
    shutil.copytree(tmp_path / "other" / "3" / "state", tmp_path / "2" / "state")
    (state, step), logs = restore(tmp_path)
    assert step == 1
    assert_same(state, make_state(1))
    assert "digest mismatch" in logs[0]


def test_flipped_bytes_in_the_data_files_never_restore_silently(tmp_path):
    save_steps(tmp_path, [1, 2])
    data_files = [p for p in (tmp_path / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for data_file in data_files:
        raw = bytearray(data_file.read_bytes())
        middle = len(raw) // 2
        raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
        data_file.write_bytes(bytes(raw))
    (state, step), logs = restore(tmp_path)
    assert step == 1 and "iteration 2" in logs[0]
    assert_same(state, make_state(1))


def test_max_step_and_check_choose_what_is_restored(tmp_path):
    save_steps(tmp_path, [1, 2, 3])
    (state, step), _ = restore(tmp_path, max_step=2)
    assert step == 2
    assert_same(state, make_state(2))
    assert restore(tmp_path, max_step=0)[0] is None

    def refuse_large(restored):
        if float(jnp.min(restored.images)) > 2.5:  # step 3 only
            raise ValueError("images too large")

    (_, step), logs = restore(tmp_path, check=refuse_large)
    assert step == 2 and "images too large" in logs[0]
