"""Orbax save/restore of the run state: the whole state pytree plus the config it was made with.

A checkpoint directory (`<workdir>/checkpoints`) holds one sub-directory per saved step, `<step>/`, with
two items: `state` (the pytree, e.g. a `DistillState`: images, labels, optimiser state, PRNG key, step)
and `config` (the run config as JSON). Saves are asynchronous: `save` returns once the arrays are copied
off the device and the files are written in the background; `wait`/`close` block until they are done.

What an interrupted save leaves behind, and how it is handled (orbax-checkpoint 0.12, local disk):
Orbax writes a step into `<step>.orbax-checkpoint-tmp/` and, once every file is written, adds
`commit_success.txt` and renames the folder to `<step>/`. A process killed mid-save leaves only the tmp
folder: step discovery never lists it (a step is a folder named by digits alone), the manager deletes such
folders when it is created (`cleanup_tmp_directories`) and a new save of the same step replaces it. A
finalised step can still be unreadable (a disk filled up, a file truncated or deleted by hand, an old step
half-deleted when its deletion was interrupted): `restore_latest` then warns, naming the step and the error,
and falls back to the step before. Unreadable steps newer than the one restored are moved aside to
`<step>.unreadable` (kept, never deleted; Orbax ignores the name) so that the resumed run can save those
step numbers again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdd import distributed
from jaxdd.errors import UserError

# Config keys (dotted paths; an entry also covers every key below it) that do not change the distilled
# result, so a run may resume although they differ from the checkpointed config:
IGNORED_CONFIG_KEYS: tuple[str, ...] = (
    "eval",  # evaluation of the finished (or intermediate) synthetic set, not the distillation
    "eval_at",  # when intermediate evaluations happen
    "checkpoint_every",  # checkpoint cadence
    "keep_checkpoints",  # how many checkpoints are kept
    "log_every",  # logging cadence
    "resume_with_changed_config",  # the override itself
    "resume_with_new_lr",  # the recovery's override (the learning rate keys it frees are the method's)
    "max_abs_pixel",  # the divergence guard's bound: it stops a run, it never changes a saved state
    "data_dir",  # where the same named dataset is read from
    "devices",  # results do not depend on the device count (jaxdd.sharding)
    "distributed",  # how the processes of a multi-host run find each other
    "kd",  # knowledge-distillation evaluation of the finished set
    "compilation_cache_dir",  # where compiled programs are cached
    "teachers.dir",  # where cached teachers are read from
    "teachers.train",  # whether a missing teacher may be trained
    "mtt.experts_dir",  # where cached expert trajectories are read from
    "mtt.train_experts",  # whether missing experts may be trained
    "sre2l.relabel",  # soft-label evaluation of the finished set
)

_UNREADABLE_SUFFIX = ".unreadable"
ABSENT = "<absent>"  # config_differences' value of a key one side lacks


class Checkpointer:
    """Saves and restores a state pytree and its config under `directory` with Orbax.

    Args:
      directory: the checkpoint folder (created if missing), e.g. `<workdir>/checkpoints`.
      max_to_keep: how many of the latest steps are kept; older ones are deleted after each save.
      async_save: write files in a background thread (`save` returns after the device-to-host copy).
      read_config: applied to every config read back (`saved_config`, `restore_latest`) and to the
        current one before they are compared, e.g. `jaxdd.config.resolve_backend`, so that an older
        run's 'auto' means this backend's choice; None: as they are.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        read_config: Callable[[dict], dict] | None = None,
    ):
        if max_to_keep < 1:
            raise UserError(f"max_to_keep (keep_checkpoints) = {max_to_keep!r} must be ≥ 1, e.g. 3.")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "digest": ocp.JsonCheckpointHandler(),
            },
            options=options,
        )
        self._read_config = read_config or (lambda config: config)
        self._closed = False

    def steps(self) -> list[int]:
        """The finalised steps on disk, ascending (unfinished saves are not listed)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, config: Mapping, *, digest: dict | None = None) -> None:
        """Saves `state` (a pytree of arrays) and `config` (a dict or ConfigDict, stored as JSON) at `step`.

        Asynchronous where enabled: returns once the arrays are copied to host memory. A step that already
        exists raises (Orbax's StepAlreadyExistsError). A state with a non-finite leaf is never saved:
        ValueError (callers check the state first and say why). `digest`: `state_digest(state)` where the
        caller has it already (one pass over the state instead of two).
        """
        digest = state_digest(state) if digest is None else digest
        if not digest["finite"]:
            raise ValueError(f"refusing to save the non-finite state of step {step}")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(_jsonable(config)),
            digest=ocp.args.JsonSave(digest),
        )
        self._manager.save(int(step), args=args, force=True)

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk; raises if one of them failed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases Orbax's threads; call it in a `finally`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def restore_latest(
        self,
        abstract_state: Any,
        config: Mapping,
        *,
        allow_config_change: bool = False,
        ignored_keys: Sequence[str] = IGNORED_CONFIG_KEYS,
        defaults: Mapping[str, Any] | None = None,
        max_step: int | None = None,
        check: Callable[[Any], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint (≤ `max_step`) into the structure of `abstract_state`.

        Args:
          abstract_state: a pytree of arrays or `jax.ShapeDtypeStruct`s (e.g. `jax.eval_shape` of the
            method's init, or the init state itself) giving structure, shapes, dtypes (and shardings).
          config: the current run config (dict or ConfigDict), compared with the checkpointed one.
          allow_config_change: resume although keys outside `ignored_keys` differ (they are logged).
          ignored_keys: dotted config paths (and everything below them) that may differ.
          defaults: {dotted key: default} of the base config; a key the checkpoint's config lacks is
            no difference when the current config holds its default (it was added to jaxdd since).
          max_step: restore the newest step ≤ this (None: the newest step); newer steps are left alone.
          check: called on the restored state; a ValueError it raises (e.g. exploded images) makes the step
            count as unreadable, like a digest mismatch or a non-finite leaf.
          log: receives the one-line warnings (unreadable steps skipped, config changes allowed).

        Returns:
          (state, step), the state with exactly the saved values, or None when no checkpoint exists.

        Raises:
          UserError: the checkpointed config differs in a result-changing key; the checkpoint holds a
            differently shaped state; or checkpoints exist but none of them can be read.
        """
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if max_step is not None:
            steps = [step for step in steps if step <= max_step]
        if not steps:
            return None
        current = self._read_config(_jsonable(config))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        compare = lambda saved, step: check_config(
            saved, current, step, self.directory, allow_change=allow_config_change,
            ignored_keys=ignored_keys, log=log, defaults=defaults,
        )  # fmt: skip
        unreadable: list[tuple[int, str]] = []
        with _QuietClosedLoop() as quiet:  # until shortly after the last failed read
            for index, step in enumerate(steps):
                try:
                    state = self._restore_step(step, abstract, compare, check)
                except (UserError, MemoryError):
                    raise
                except Exception as error:  # a corrupt or half-deleted step: anything Orbax raises
                    quiet.read_failed()
                    reason = _short(error)
                    unreadable.append((step, reason))
                    following = (
                        f"trying iteration {steps[index + 1]}" if index < len(steps) - 1 else "none older"
                    )
                    log(
                        f"Warning: the checkpoint of iteration {step} in {self.directory} cannot be read "
                        f"({reason}); {following}."
                    )
                    continue
                self._set_aside([s for s, _ in unreadable], log)
                return state, int(step)
        details = "; ".join(f"iteration {s}: {reason}" for s, reason in unreadable)
        raise UserError(
            f"None of the checkpoints in {self.directory} can be read ({details}). Nothing was changed. "
            f"Use a new --workdir to start afresh, or move {self.directory} away."
        )

    def _restore_step(self, step: int, abstract: Any, compare: Callable, check: Callable | None) -> Any:
        """The state saved at `step` into `abstract`'s structure, after `compare(its config, step)`;
        raises for an unreadable step (and `compare`'s UserError)."""
        saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        compare(self._read_config(saved.config), step)
        _check_structure(self._manager.item_metadata(step).state, abstract, step, self.directory)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        self._verify(step, restored.state)
        if check is not None:
            check(restored.state)
        return restored.state

    def saved_config(self, step: int) -> dict:
        """The config (a JSON dict) saved with `step`; raises what Orbax raises for an unreadable step."""
        saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        if not isinstance(saved, Mapping):
            raise ValueError(f"the stored config is {type(saved).__name__}, not a JSON object")
        return self._read_config(dict(saved))

    def _verify(self, step: int, state: Any) -> None:
        """ValueError when the restored state is non-finite or differs from the digest saved with it.

        Steps saved before digests existed have none; they are checked for finiteness only.
        """
        digest = state_digest(state)
        if not digest["finite"]:
            raise ValueError("the restored state holds non-finite values")
        if "digest" not in (self._manager.item_metadata(step) or {}):
            return
        saved = self._manager.restore(step, args=ocp.args.Composite(digest=ocp.args.JsonRestore())).digest
        if saved.get("sums") != digest["sums"]:
            raise ValueError("the state's files do not hold the bits that were saved (digest mismatch)")

    def _set_aside(self, steps: list[int], log: Callable[[str], None]) -> None:
        """Renames unreadable step folders to `<step>.unreadable[-n]` so the resumed run can reuse them.

        In a multi-process run process 0 renames (every process found the same steps unreadable) and the
        others wait for it before reloading the step list.
        """
        if not steps:
            return
        if distributed.is_main_process():
            self._rename_unreadable(steps, log)
        ocp.multihost.sync_global_processes(f"jaxdd_set_aside_{'_'.join(map(str, steps))}")
        self._manager.reload()

    def _rename_unreadable(self, steps: list[int], log: Callable[[str], None]) -> None:
        for step in steps:
            source = self.directory / str(step)
            target = self.directory / f"{step}{_UNREADABLE_SUFFIX}"
            n = 1
            while target.exists():
                n += 1
                target = self.directory / f"{step}{_UNREADABLE_SUFFIX}-{n}"
            source.rename(target)
            log(f"Moved the unreadable checkpoint of iteration {step} to {target} (safe to delete).")


class _QuietClosedLoop:
    """Drops the 'Event loop is closed' tracebacks that a failed restore otherwise prints, for the `with`
    block of a restore and, when a read failed (`read_failed`), until `GRACE_S` after the last failure.

    When TensorStore fails one read of a restore, Orbax's event loop ends while TensorStore's other reads
    are still completing; their callbacks then raise in TensorStore's threads, up to a few milliseconds
    after `restore` raised (0.1-2 ms, orbax-checkpoint 0.12), and Python prints each as an ignored
    exception. They are harmless (the failure itself was raised and handled). The filter replaces
    `sys.unraisablehook` only meanwhile (from before the first read: a callback may beat the `except`
    clause), drops only that message and passes every other unraisable exception on; the previous hook
    is back afterwards (a hook installed over it meanwhile keeps working: the filter then passes
    everything on).
    """

    GRACE_S = 0.2  # after the last failed read: 100x the latest callback seen

    def __init__(self):
        self._previous: Callable = sys.unraisablehook
        self._active = False
        self._last_failure: float | None = None

    def read_failed(self) -> None:
        self._last_failure = time.monotonic()

    def _hook(self, unraisable) -> None:
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (self._active and closed_loop):
            self._previous(unraisable)

    def __enter__(self) -> _QuietClosedLoop:
        self._previous, self._active = sys.unraisablehook, True
        sys.unraisablehook = self._hook
        return self

    def __exit__(self, *exc_info) -> None:
        if self._last_failure is not None:
            time.sleep(max(0.0, self._last_failure + self.GRACE_S - time.monotonic()))
        self._active = False
        if sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous


def state_digest(tree: Any) -> dict:
    """{'sums': [[a, b] per leaf], 'finite': bool} of a pytree of arrays, computed on its devices.

    Each leaf's bits, as uint32 words x_i, give a = Σ x_i and b = Σ (2i + 1)·x_i (mod 2^32). The weights
    are odd, so any change of a single word changes b; PRNG keys are digested through their key data.
    `finite`: every floating leaf is finite.
    """
    sums, finite = _digest(tree)
    sums, finite = jax.device_get((sums, finite))
    return {"sums": [[int(a), int(b)] for a, b in sums], "finite": bool(finite)}


@jax.jit
def _digest(tree):
    sums, finite = [], jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        leaf = jnp.asarray(leaf)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            finite &= jnp.all(jnp.isfinite(leaf))
        words = _as_words(leaf).ravel()
        weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        sums.append(jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * weights, dtype=jnp.uint32)]))
    return sums, finite


def _as_words(leaf: jax.Array) -> jax.Array:
    """The leaf's bits as uint32 words (8-byte elements give two words, narrower ones one each)."""
    size = np.dtype(leaf.dtype).itemsize
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def config_differences(
    old: Mapping,
    new: Mapping,
    *,
    ignored_keys: Sequence[str] = IGNORED_CONFIG_KEYS,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for keys that differ and are not under `ignored_keys`.

    A key present on one side only shows '<absent>' on the other, except that a key `old` lacks whose
    new value is its default in `defaults` ({dotted key: value}, `flatten_config` of the base config) is
    no difference: it was added to jaxdd after `old` was written, and its default is how `old` ran.
    """
    defaults = defaults or {}
    old_flat, new_flat = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    differences = {}
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if any(key == ignored or key.startswith(ignored + ".") for ignored in ignored_keys):
            continue
        before, after = old_flat.get(key, ABSENT), new_flat.get(key, ABSENT)
        added_at_default = before == ABSENT and key in defaults and defaults[key] == after
        if before != after and not added_at_default:
            differences[key] = (before, after)
    return differences


def check_config(
    saved: Mapping,
    current: Mapping,
    step: int,
    directory: Path,
    *,
    allow_change: bool,
    ignored_keys: Sequence[str],
    log: Callable[[str], None],
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """UserError when `saved` (a checkpoint's config) and `current` differ outside `ignored_keys` (keys
    added since, at their `defaults`, do not differ: see `config_differences`); with `allow_change` the
    differences are logged instead."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"the stored config is {type(saved).__name__}, not a JSON object")
    differences = config_differences(saved, current, ignored_keys=ignored_keys, defaults=defaults)
    if not differences:
        return
    listed = ", ".join(f"{key}: {old!r} → {new!r}" for key, (old, new) in differences.items())
    if allow_change:
        log(f"Warning: resuming iteration {step} from {directory} with a changed config ({listed}).")
        return
    why = (
        " (the method's schedule is spread over the total, so a longer or shorter run is another run)"
        if "iterations" in differences
        else ""
    )
    raise UserError(
        f"The checkpoint of iteration {step} in {directory} was made with a different config "
        f"({listed}); these keys change the result{why}, so resuming would mix two runs. Use a new "
        "--workdir for the new config, or pass --config.resume_with_changed_config=True to resume anyway."
    )


def _check_structure(metadata, abstract, step, directory) -> None:
    """Raises UserError when the stored tree's paths, shapes or dtypes differ from `abstract`'s."""
    if metadata is None or getattr(metadata, "tree", None) is None:
        raise ValueError("the state's metadata is missing")
    stored, expected = _leaf_specs(metadata.tree), _leaf_specs(abstract)
    if stored == expected:
        return
    keys = sorted(stored.keys() | expected.keys())
    diffs = [
        f"{key}: stored {_spec_str(stored.get(key))}, expected {_spec_str(expected.get(key))}"
        for key in keys
        if stored.get(key) != expected.get(key)
    ]
    raise UserError(
        f"The checkpoint of iteration {step} in {directory} holds a differently shaped state than this run "
        f"builds ({'; '.join(diffs[:5])}{'; ...' if len(diffs) > 5 else ''}), e.g. after a code change. "
        "Use a new --workdir to start afresh."
    )


def _leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'opt_state/0/trace': (shape, dtype name)} for every array leaf of `tree`."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(_key_name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        for path, leaf in leaves
    }


def _key_name(key) -> str:
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _spec_str(spec) -> str:
    return "nothing" if spec is None else f"{spec[1]}{list(spec[0])}"


def flatten_config(config) -> dict[str, Any]:
    """{dotted key: JSON value} of a config (ConfigDict or dict): what `config_differences` compares."""
    return _flatten(_jsonable(config))


def _jsonable(config) -> dict:
    """A plain JSON-compatible dict (ConfigDicts via `to_dict`, tuples as lists, other objects as str)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=str))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _short(error: Exception) -> str:
    """The error's type and first line, without TensorStore's long spec dumps."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.split(" [tensorstore_spec=")[0]
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
