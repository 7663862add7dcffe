"""The run driver: validate, load, distil (resuming from the last checkpoint), export, evaluate.

No math here: the method's jitted step does the work; this loop decides when to fetch metrics, log,
checkpoint and evaluate. Files (DESIGN §1): config.json, platform.json (backend, devices, versions,
matmul precision), metrics.jsonl, checkpoints/, synset.npz, synset_nchw.npz, synset.png, loss.png,
eval.json, baselines.json, table.md. In a multi-process run every process computes and checkpoints
(Orbax coordinates them) but only process 0 writes the other files (`distributed.is_main_process`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdd import (
    checkpointing,
    distributed,
    metadd,
    methods,
    reporting,
    run_eval,
    run_folder,
    synthetic,
    teachers,
)
from jaxdd.config import default_values, prepare, read_saved, split_ints
from jaxdd.data import zca
from jaxdd.data.real import RealData
from jaxdd.errors import UserError
from jaxdd.export import NCHW_FILE, save_nchw
from jaxdd.methods.base import DistillState, Method
from jaxdd.seeding import purpose_key


def run(
    config: ml_collections.ConfigDict, workdir: str | Path, *, log: Callable[[str], None] = print
) -> dict:
    """Distils a synthetic set as `config` says (or resumes it from `workdir`), exports and evaluates it.

    Every check that needs no data (the config, the run folder, whether its checkpoints can be resumed
    with this config) runs before the data is loaded. Returns the evaluation results
    {arch: {'mean', 'std', 'accs', 'seconds'}} (empty without eval archs).
    """
    prepare(config)
    workdir = run_folder.prepare(workdir)
    writer = distributed.is_main_process()
    with run_folder.locked(workdir) if writer else contextlib.nullcontext():
        method = methods.get_method(config.method)
        if method.make_step is not None and config.iterations > 0:
            check_resumable(config, method, workdir / "checkpoints", log=log)
        real = run_eval.load_real(config, log)
        state = method.init(config, real, purpose_key(config.seed, "distill"))
        if method.make_step is not None and config.iterations > 0:
            state = distill(config, method, real, state, workdir, log=log)
        # on the host: the state may be laid out on the class mesh, evaluation uses every device
        synset, learned_lr = jax.device_get(state.synset), method.learned_lr(state)
        if writer:
            _record_teachers(config, method, real, workdir)
            reporting.write_json(workdir / "config.json", config.to_dict())
            reporting.write_json(workdir / "platform.json", reporting.platform())
            export(config, real, synset, workdir, learned_lr=learned_lr, log=log)
        return run_eval.evaluate_synset(config, real, synset, workdir, learned_lr=learned_lr, log=log)


def resume_ignored_keys(config: ml_collections.ConfigDict, method: Method) -> tuple[str, ...]:
    """The config keys that may differ from a checkpoint's for `method`: the common ones, `iterations`
    where the method's schedule does not depend on the total, and the pixel learning rate when
    `resume_with_new_lr` asks for it."""
    keys = checkpointing.IGNORED_CONFIG_KEYS
    if not method.schedule_uses_iterations:
        keys += ("iterations",)
    if config.get("resume_with_new_lr", False):
        keys += method.lr_keys
    return keys


def check_resumable(
    config: ml_collections.ConfigDict, method: Method, directory: Path, *, log: Callable[[str], None] = print
) -> None:
    """Raises UserError, before any data is loaded, when the checkpoints in `directory` cannot continue
    into this config: a result-changing key differs, or `iterations` is below the run's checkpoints and
    none was saved at exactly `iterations`. Says aloud what a permitted change means."""
    with _checkpointer(config, directory) as checkpointer:
        steps = checkpointer.steps()
        if not steps:
            return
        later = [step for step in steps if step > config.iterations]
        if later and config.iterations not in steps:
            raise UserError(
                f"iterations={config.iterations} is below this run's checkpoints (iterations "
                f"{', '.join(map(str, steps))} in {directory}) and none was saved at {config.iterations}: "
                f"export one of those by setting --config.iterations to it, or use a new --workdir."
            )
        newest = max(step for step in steps if step <= config.iterations)
        try:
            saved = checkpointer.saved_config(newest)
        except Exception:  # an unreadable step: `distill` falls back past it and checks that one
            return
    checkpointing.check_config(
        saved,
        read_saved(config.to_dict()),  # as `saved` is read: the same on a config not validated
        newest,
        directory,
        allow_change=config.resume_with_changed_config,
        ignored_keys=resume_ignored_keys(config, method),
        log=log,
        defaults=default_values(),
    )
    if later:
        log(
            f"iterations={config.iterations}: exporting the checkpoint of iteration {config.iterations}; "
            f"the run went on to {max(later)} and those checkpoints are kept."
        )
    elif saved.get("iterations") != config.iterations:
        log(
            f"Continuing the run of {saved.get('iterations')} iterations to {config.iterations}: "
            f"{config.method}'s steps do not depend on the total, so the {newest} done are unchanged."
        )
    changed_lr = {
        key: values
        for key, values in checkpointing.config_differences(saved, config.to_dict(), ignored_keys=()).items()
        if key in method.lr_keys
    }
    if changed_lr and config.get("resume_with_new_lr", False):
        listed = ", ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in changed_lr.items())
        log(f"Resuming iteration {newest} with a new learning rate ({listed}; resume_with_new_lr).")


def _checkpointer(config: ml_collections.ConfigDict, directory: Path) -> checkpointing.Checkpointer:
    """The run's checkpoints; their configs and this run's are compared with this backend's choices where
    they say 'auto', and older spellings are read as today's (`config.read_saved`)."""
    return checkpointing.Checkpointer(directory, max_to_keep=config.keep_checkpoints, read_config=read_saved)


def distill(
    config: ml_collections.ConfigDict,
    method: Method,
    real: RealData,
    state: DistillState,
    workdir: Path,
    *,
    log: Callable[[str], None] = print,
) -> DistillState:
    """Runs the method's outer step until `config.iterations`, resuming from workdir/checkpoints.

    Metrics stay on the device between fetches; every fetch checks them and the state itself (finite,
    images within `config.max_abs_pixel`) before anything is saved, so a diverged run stops naming the
    iteration and keeps its last good checkpoint.
    """
    metrics_path = workdir / "metrics.jsonl"
    bound = float(config.get("max_abs_pixel", DEFAULT_MAX_ABS_PIXEL))
    checkpointer = _checkpointer(config, workdir / "checkpoints")
    try:
        restored = checkpointer.restore_latest(
            state,
            config.to_dict(),
            allow_config_change=config.resume_with_changed_config,
            ignored_keys=resume_ignored_keys(config, method),
            defaults=default_values(),
            max_step=config.iterations,
            check=lambda restored_state: _require_bounded(restored_state, bound),
            log=log,
        )
        writer = distributed.is_main_process()
        first = 0
        if restored is not None:
            state, first = restored
            state = jax.device_get(state)  # restored onto one device; the step lays it out itself
            log(f"Resumed from the checkpoint of iteration {first} in {workdir / 'checkpoints'}")
        if writer:
            _tidy_metrics(metrics_path, first, restored_previous=restored is not None, log=log)
            reporting.write_json(workdir / "config.json", config.to_dict())
            if restored is not None:
                reporting.append_metrics(metrics_path, {"event": "resume", "from_iteration": first})
        step_fn = method.make_step(config, real, log=log)
        eval_at = set(split_ints(config.eval_at))
        progress = reporting.Progress(total=config.iterations)
        pending = []
        last_saved = first if restored is not None else None
        for done in range(first + 1, config.iterations + 1):
            state, metrics = step_fn(state, real)
            pending.append((done, metrics))
            save = done % config.checkpoint_every == 0 or done == config.iterations
            if save or done % config.log_every == 0 or done in eval_at:
                _flush(pending, metrics_path if writer else None, progress, log=log)
                pending = []
                digest = checkpointing.state_digest(state)  # checked here, saved with the state below
                _check_state(state, digest["finite"], done, bound, config, method, last_saved, workdir)
            if save:
                checkpointer.save(done, state, config.to_dict(), digest=digest)
                last_saved = done
            if done in eval_at and done != config.iterations:
                synset, learned_lr = jax.device_get(state.synset), method.learned_lr(state)
                run_eval.evaluate_during_run(
                    config, real, synset, workdir, iteration=done, learned_lr=learned_lr, log=log
                )
    finally:
        checkpointer.close()
    return state


def _flush(pending: list, metrics_path: Path | None, progress: reporting.Progress, *, log) -> None:
    """Fetches the pending steps' metrics, stops on the first non-finite one, logs and records them
    (in `metrics_path`; None: not recorded, on processes other than 0)."""
    fetched = jax.device_get(pending)
    for step, metrics in fetched:
        bad = [name for name, value in metrics.items() if not math.isfinite(float(np.asarray(value)))]
        if bad:
            raise UserError(
                f"Iteration {step}: {', '.join(bad)} became non-finite ({metrics}). The run stopped; its "
                "last good checkpoint is kept. To continue from it, rerun with a lower image learning rate "
                "and --config.resume_with_new_lr=True; or check the data normalisation."
            )
        if metrics_path is not None:
            record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            reporting.append_metrics(metrics_path, record)
    step, metrics = fetched[-1]
    log(progress.line(step, {k: float(v) for k, v in metrics.items()}))


# A state whose images leave ±this (normalised units: a real image lies within about ±3) has diverged.
DEFAULT_MAX_ABS_PIXEL = 1e3


@jax.jit
def _max_abs(images: jax.Array) -> jax.Array:
    """max |pixel| of [N, H, W, C] images; NaN when any is NaN."""
    return jnp.max(jnp.abs(images))


def _require_bounded(state: DistillState, bound: float) -> None:
    """ValueError (a restored step counts as unusable) when the images are non-finite or beyond `bound`."""
    extent = float(_max_abs(state.images))
    if not extent <= bound:
        raise ValueError(f"its images reach |pixel| {extent:.3g}, beyond max_abs_pixel={bound:g}")


def _check_state(state, finite: bool, step, bound, config, method, last_saved, workdir) -> None:
    """UserError naming the iteration and the recovery when the state has diverged (not `finite`, or its
    images beyond `bound`): nothing is saved."""
    extent = float(_max_abs(state.images))
    if extent <= bound and finite:
        return
    what = f"reached |pixel| {extent:.3g}, beyond max_abs_pixel={bound:g}" if extent == extent else "are NaN"
    kept = (
        f"its last good checkpoint, iteration {last_saved}, is kept and nothing after it was saved"
        if last_saved
        else "no checkpoint had been saved yet"
    )
    lr_key = method.lr_keys[0] if method.lr_keys else "the image learning rate"
    lr = config.get(lr_key.split(".")[0], {}).get(lr_key.split(".")[-1]) if method.lr_keys else None
    hint = f"e.g. --config.{lr_key}={lr / 10:g}" if isinstance(lr, float) and math.isfinite(lr) else ""
    raise UserError(
        f"Iteration {step}: the synthetic images {what} (diverged; the state, not only its metrics, is "
        f"checked before every save). The run stopped; {kept}. To continue from it with a lower learning "
        f"rate, rerun the same command with a lower --config.{lr_key} {hint} and "
        f"--config.resume_with_new_lr=True; or use a new --workdir ({workdir}) to start afresh."
    )


def _tidy_metrics(path: Path, step: int, *, restored_previous: bool, log: Callable[[str], None]) -> None:
    """Makes metrics.jsonl hold each iteration up to `step` once, saying aloud what it dropped or lacks."""
    report = reporting.truncate_metrics(path, after_step=step)
    if report["unreadable"]:
        log(f"Warning: dropped {report['unreadable']} unreadable line(s) of {path} (a write cut short).")
    if report["dropped_steps"]:
        since = f"iteration {step}" if restored_previous else "the start (no checkpoint was saved)"
        log(f"Dropped {report['dropped_steps']} line(s) of {path} written after {since}; recomputing them.")
    missing = report["missing"]
    if missing:
        log(
            f"Warning: {path} has no line for {len(missing)} of the {step} iterations done (first "
            f"{missing[0]}, last {missing[-1]}; the file was edited or deleted): they are not recomputed."
        )


def _record_teachers(
    config: ml_collections.ConfigDict, method: Method, real: RealData, workdir: Path
) -> None:
    """Writes teachers.json: how each network the run used that was trained on the real data (SRe2L's
    teacher, MetaDD's auxiliaries) was trained, where it is cached and its test accuracy."""
    archs = list(method.teacher_archs(config))
    if metadd.enabled(config):
        archs += list(metadd.arch_list(config.metadd))
    if not archs:
        return
    options = teachers.options_from_section(config.teachers, config.dataset)
    reporting.write_json(workdir / "teachers.json", teachers.records(options, real, archs))


def export(
    config: ml_collections.ConfigDict,
    real: RealData,
    synset: synthetic.SyntheticSet,
    workdir: Path,
    *,
    learned_lr: float | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Writes synset.npz, its PyTorch layout synset_nchw.npz (`jaxdd.export`), synset.png and, when
    metrics exist, the loss curve loss.png. `learned_lr` (the student step size the method learned with
    the set) goes into both files' meta as 'learned_lr'; whitened images (`real.whitening`) are saved as
    they are, with meta 'zca_eps', and pictured un-whitened."""
    meta = {"dataset": config.dataset, "ipc": config.ipc, "method": config.method, "seed": config.seed}
    if learned_lr is not None:
        meta["learned_lr"] = learned_lr
    if real.whitening is not None:
        meta["zca_eps"] = real.whitening.eps
    synthetic.save_npz(workdir / "synset.npz", synset, mean=real.mean, std=real.std, meta=meta)
    save_nchw(
        workdir / NCHW_FILE,
        synset.images,
        synset.labels,
        mean=real.mean,
        std=real.std,
        class_names=real.class_names,
        meta=meta,
    )
    title = f"{config.method} on {config.dataset}, IPC {config.ipc}, seed {config.seed}"
    shown, mean, std = synset.images, real.mean, real.std
    if real.whitening is not None:  # back to pixels in [0, 1] to look at, as the reference shows them
        shown, mean, std = zca.unwhiten(real.whitening, shown), (0.0,) * len(mean), (1.0,) * len(std)
    picture = reporting.synset_picture(shown, class_names=real.class_names, mean=mean, std=std, title=title)
    reporting.save_png(workdir / "synset.png", picture)
    curve = reporting.save_loss_curve(workdir / "metrics.jsonl", workdir / "loss.png")
    extra = ", loss.png" if curve else ""
    log(
        f"Wrote {workdir / 'synset.npz'} ({synset.images.shape[0]} images), {NCHW_FILE} (for "
        f"PyTorch: docs/export.md), synset.png{extra}"
    )
