"""The run driver: validate, load, distil (resuming from the last checkpoint), export, evaluate.

No math here: the method's jitted step does the work; this loop decides when to fetch metrics, log,
checkpoint and evaluate. Files (DESIGN §1): config.json, metrics.jsonl, checkpoints/, synset.npz,
synset.png, loss.png, eval.json, baselines.json, table.md. In a multi-process run every process computes
and checkpoints (Orbax coordinates them) but only process 0 writes the other files
(`distributed.is_main_process`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxdd import checkpointing, distributed, methods, reporting, results, synthetic
from jaxdd.config import split_ints, validate
from jaxdd.data.real import RealData
from jaxdd.errors import UserError
from jaxdd.methods.base import DistillState, Method
from jaxdd.seeding import purpose_key


def run(
    config: ml_collections.ConfigDict, workdir: str | Path, *, log: Callable[[str], None] = print
) -> dict:
    """Distils a synthetic set as `config` says (or resumes it from `workdir`), exports and evaluates it.

    Returns the evaluation results {arch: {'mean', 'std', 'accs', 'seconds'}} (empty without eval archs).
    """
    validate(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    real = results.load_real(config, log)
    method = methods.get_method(config.method)
    state = method.init(config, real, purpose_key(config.seed, "distill"))
    if method.make_step is not None and config.iterations > 0:
        state = distill(config, method, real, state, workdir, log=log)
    if distributed.is_main_process():
        reporting.write_json(workdir / "config.json", config.to_dict())
        export(config, real, state.synset, workdir, log=log)
    return results.evaluate_synset(config, real, state.synset, workdir, log=log)


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

    Metrics stay on the device between fetches; every fetch checks them for non-finite values before
    anything is saved, so a diverged run stops naming the iteration and keeps its last good checkpoint.
    """
    metrics_path = workdir / "metrics.jsonl"
    checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(
            state, config.to_dict(), allow_config_change=config.resume_with_changed_config, log=log
        )
        writer = distributed.is_main_process()
        if restored is not None:
            state, step = restored
            if writer:
                reporting.truncate_metrics(metrics_path, after_step=step)
            log(f"Resumed from the checkpoint of iteration {step} in {workdir / 'checkpoints'}")
        if writer:
            reporting.write_json(workdir / "config.json", config.to_dict())
        step_fn = method.make_step(config, real)
        first = int(state.step)
        eval_at = set(split_ints(config.eval_at))
        progress = reporting.Progress(total=config.iterations)
        pending = []
        for done in range(first + 1, config.iterations + 1):
            state, metrics = step_fn(state, real)
            pending.append((done, metrics))
            save = done % config.checkpoint_every == 0 or done == config.iterations
            if save or done % config.log_every == 0 or done in eval_at:
                _flush(pending, metrics_path if writer else None, progress, log=log)
                pending = []
            if save:
                checkpointer.save(done, state, config.to_dict())
            if done in eval_at and done != config.iterations:
                results.evaluate_during_run(config, real, state.synset, workdir, iteration=done, log=log)
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
                "last good checkpoint is kept and a rerun resumes from it. Lower the image learning rate "
                "or check the data normalisation."
            )
        if metrics_path is not None:
            record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            reporting.append_metrics(metrics_path, record)
    step, metrics = fetched[-1]
    log(progress.line(step, {k: float(v) for k, v in metrics.items()}))


def export(
    config: ml_collections.ConfigDict,
    real: RealData,
    synset: synthetic.SyntheticSet,
    workdir: Path,
    *,
    log: Callable[[str], None] = print,
) -> None:
    """Writes synset.npz, synset.png and, when metrics exist, the loss curve loss.png."""
    meta = {"dataset": config.dataset, "ipc": config.ipc, "method": config.method, "seed": config.seed}
    synthetic.save_npz(workdir / "synset.npz", synset, mean=real.mean, std=real.std, meta=meta)
    reporting.save_image_grid(
        workdir / "synset.png", synset.images, num_rows=real.num_classes, mean=real.mean, std=real.std
    )
    curve = reporting.save_loss_curve(workdir / "metrics.jsonl", workdir / "loss.png")
    extra = ", loss.png" if curve else ""
    log(f"Wrote {workdir / 'synset.npz'} ({synset.images.shape[0]} images), synset.png{extra}")
