"""A run's evaluation: the distilled set's plain, KD and soft-label students and the configured baselines,
keys from `config.seed`, on the real data the config names; `jaxdd.results` writes them beside the run.

In a multi-process run every process evaluates and holds the same accuracies; process 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections

from jaxdd import (
    data,
    distributed,
    eval_cache,
    eval_settings,
    evaluation,
    kd,
    relabel,
    results,
    run_folder,
    synthetic,
)
from jaxdd.config import prepare
from jaxdd.data import zca
from jaxdd.errors import UserError
from jaxdd.methods import sre2l
from jaxdd.models import conv
from jaxdd.seeding import purpose_key
from jaxdd.settings import from_section

EVAL_CACHE_DIR = "eval_cache"  # the run folder's `jaxdd.eval_cache` of plain students


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every evaluation of one run shares."""

    config: ml_collections.ConfigDict
    real: data.RealData
    workdir: Path
    log: Callable[[str], None]
    learned_lr: float | None = None  # the set's learned student step size (`Method.learned_lr`)

    @functools.cached_property
    def settings(self) -> eval_settings.EvalSettings:
        """`config.eval`, read once."""
        return eval_settings.settings_from_section(self.config.eval, self.config.dataset)

    @property
    def archs(self) -> tuple[str, ...]:
        return self.settings.arch_names

    @property
    def protocol(self) -> eval_settings.EvalProtocol:
        """How the baselines' students train (`config.eval`)."""
        return self.settings.protocol

    @functools.cached_property
    def set_protocol(self) -> eval_settings.EvalProtocol:
        """How the set's students train: `protocol`, its lr the set's learned one under eval.learned_lr."""
        return self.settings.set_protocol(self.learned_lr)

    @property
    def key(self) -> jax.Array:
        return purpose_key(self.config.seed, "eval")

    @functools.cached_property
    def networks(self) -> evaluation.Networks:
        """How many networks per architecture, where they train (`evaluation.train_students`) and how
        their convolutions are computed: the same for plain, KD and soft-label students."""
        e = self.settings
        return evaluation.Networks(
            num_nets=e.num_nets,
            parallel=e.parallel,
            devices=self.config.devices,
            conv=conv.options_from_config(self.config),
        )

    def record(self, name: str, column: str, summary: dict, *, keys, step=None) -> None:
        if distributed.is_main_process():
            results.record_eval(self.workdir, name, column, summary, keys=keys, step=step)


def evaluate_synset(
    config: ml_collections.ConfigDict,
    real: data.RealData,
    synset: synthetic.SyntheticSet,
    workdir: Path,
    *,
    learned_lr: float | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates `synset` and the configured baselines on `config.eval.archs`; writes eval.json,
    baselines.json and table.md in `workdir` and prints the table. Returns {column: summary}.
    `learned_lr`: the student step size the method learned with the set (`Method.learned_lr`), which its
    students train with under eval.learned_lr (the baselines keep eval.lr)."""
    run = _Run(config, real, Path(workdir), log, learned_lr)
    if not run.archs:
        log("eval.archs is empty: no evaluation.")
        return {}
    name = f"{config.method} (IPC {config.ipc})"
    plain = _plain(run, name, synset.images, synset.labels, protocol=run.set_protocol)
    kd_results = _kd(run, name, synset.images, synset.labels) if kd_enabled(config) else {}
    soft = _soft(run, name, synset.images) if sre2l.soft_labels_enabled(config) else {}
    evaluated = results.merge_columns(run.archs, plain=plain, kd_results=kd_results, soft=soft)
    writer = distributed.is_main_process()
    if writer:  # before the baselines: a study counts a cell with eval.json as done
        results.write_eval(run.workdir, evaluated)
    baselines = _baselines(run)
    rows = {f"{config.method}, IPC {config.ipc}": evaluated, **baselines}
    protocol_line = describe_protocol(config, run.set_protocol)
    table = results.markdown_table(rows, list(evaluated)) + "\n" + protocol_line
    if writer:
        results.write_table(run.workdir, table, baselines)
    log("\n" + table)
    return evaluated


def _baselines(run: _Run) -> dict[str, dict]:
    """{row: {arch: summary}} of the configured baselines (`eval.baselines`), plain students."""
    config, real = run.config, run.real
    baselines = {}
    for baseline in run.settings.baseline_names:
        if baseline == "random" and config.method != "random":
            subset = synthetic.init_real(real, config.ipc, purpose_key(config.seed, "baseline"))
            baselines[f"random real, IPC {config.ipc}"] = _plain(
                run, "random real", subset.images, subset.labels
            )
        elif baseline == "whole":
            baselines["whole training set"] = _plain(run, "whole set", real.train_images, real.train_labels)
    return baselines


def evaluate_during_run(
    config: ml_collections.ConfigDict,
    real: data.RealData,
    synset: synthetic.SyntheticSet,
    workdir: Path,
    *,
    iteration: int,
    learned_lr: float | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates the set at an intermediate iteration (config.eval_at); records it in metrics.jsonl only.
    `learned_lr`: as `evaluate_synset`'s, at that iteration."""
    run = _Run(config, real, Path(workdir), log, learned_lr)
    if not run.archs:
        return {}
    name = f"{config.method} at iteration {iteration}"
    return _plain(run, name, synset.images, synset.labels, protocol=run.set_protocol, step=iteration)


def _plain(run: _Run, name: str, images, labels, *, protocol=None, step=None) -> dict:
    """Plain students of `protocol` (default: the baselines', eval.*) on every architecture."""
    protocol = protocol or run.protocol
    lr_note = f", lr {protocol.lr:g} learned with the set" if protocol.lr != run.protocol.lr else ""
    run.log(f"Evaluating {name} ({images.shape[0]} images{lr_note}) on {', '.join(run.archs)}:")
    tag = _cache_tag("plain", images, labels, run.config, protocol)
    summaries = evaluation.evaluate_archs(
        run.archs, run.real, images, labels, run.key, protocol=protocol, networks=run.networks,
        cache=(run.workdir / EVAL_CACHE_DIR, tag, distributed.is_main_process()), log=run.log,
    )  # fmt: skip
    for arch, summary in summaries.items():
        run.record(name, arch, summary, keys=("mean", "std", "seconds"), step=step)
    return summaries


def _zca_tag(config) -> dict:
    """The whitening's part of a cache tag: nothing when off, so the tags of earlier runs still match."""
    settings = zca.settings_from_config(config)
    return {"zca_eps": settings.eps} if settings.enabled else {}


def _cache_tag(kind: str, images, labels, config, protocol) -> dict:
    """What an architecture's accuracies depend on besides the architecture and its networks' key."""
    return {
        "kind": kind,
        "set": eval_cache.set_digest(images, labels),
        "split": {"eval": config.eval.split, "holdout": config.holdout.to_dict(), **_zca_tag(config)},
        "protocol": dataclasses.asdict(protocol),
        "num_nets": config.eval.num_nets,
        "test": {"dataset": config.dataset, "test_size": config.eval.get("test_size", 0)},
    }


def _kd(run: _Run, name: str, images, labels) -> dict:
    run.log(f"Evaluating {name} with knowledge distillation (teacher {run.config.kd.teacher}):")
    summaries = kd.evaluate_archs_kd(
        run.archs, run.real, images, labels, run.key, protocol=run.set_protocol,
        options=from_section(kd.KDOptions, run.config.kd), networks=run.networks, log=run.log,
    )  # fmt: skip
    for arch, summary in summaries.items():
        run.record(name, kd.column(arch), summary, keys=("mean", "std", "seconds", "temperature"))
    return summaries


def _soft(run: _Run, name: str, images) -> dict:
    run.log(f"Evaluating {name} with the teacher's soft labels (SRe2L relabel, teacher {run.config.model}):")
    summaries = sre2l.evaluate_soft_labels(
        run.config, run.real, images, run.archs, run.key, networks=run.networks, log=run.log
    )
    for arch, summary in summaries.items():
        run.record(name, relabel.column(arch), summary, keys=("mean", "std", "seconds", "temperature"))
    return summaries


def describe_protocol(
    config: ml_collections.ConfigDict, set_protocol: eval_settings.EvalProtocol | None = None
) -> str:
    """One line stating everything the evaluation used (and one for KD), written beside the result;
    `set_protocol`: the set's students' protocol where its lr is the set's learned one."""
    e, decay = config.eval, config.eval.get("lr_decay_at", eval_settings.EvalProtocol.lr_decay_at)
    decay_at = "half" if decay == 0.5 else f"{decay:g} of the epochs"
    learned = set_protocol is not None and set_protocol.lr != e.lr
    lr = f"{set_protocol.lr:.4g} (learned with the set; baselines {e.lr})" if learned else f"{e.lr}"
    text = (
        f"Protocol: {config.dataset}, test accuracy (%) mean ± std over {e.num_nets} networks per "
        f"architecture; "
        f"SGD lr {lr} momentum {e.momentum} weight decay {e.weight_decay}, batch {e.batch_size}, "
        f"{e.epochs} epochs, lr ×0.1 at {decay_at}, augmentation {e.augment!r}, seed {config.seed}"
        + (
            f"; on the validation split ({config.holdout.per_class} training images per class held out, "
            f"seed {config.holdout.seed}), not the test set"
            if e.split == "validation"
            else ""
        )
        + (
            f"; reduced: a fixed stratified subset of {e.test_size} test images.\n"
            if e.get("test_size", 0)
            else ", full test set.\n"
        )
    )
    if kd_enabled(config):
        k = config.kd
        tau = (
            f"τ chosen from {k.temperatures} on {k.val_per_class} real training images per class"
            if k.temperatures
            else f"τ {k.temperature}"
        )
        text += (
            f"{kd.COLUMN_SUFFIX}: students trained with the same protocol on α·τ²·KL(teacher ‖ student) + "
            f"(1−α)·CE, α {k.alpha}, {tau}, τ ×{k.temperature_decay} per epoch (floor {k.min_temperature}); "
            f"teacher {k.teacher} trained on the same set.\n"
        )
    if sre2l.soft_labels_enabled(config):
        r = config.sre2l.relabel
        text += (
            f"{relabel.COLUMN_SUFFIX}: students trained on the set with KL(teacher ‖ student) at T "
            f"{r.temperature} on random-resized-crop/flip views (no T² factor, hard labels unused), AdamW lr "
            f"{r.lr} weight decay {r.weight_decay}, cosine, batch {r.batch_size}, {r.epochs} epochs; teacher "
            f"{config.model} trained on the real data (SRe2L relabel).\n"
        )
    return text


def kd_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether the config asks for knowledge-distillation columns."""
    return "kd" in config and bool(config.kd.enabled)


def load_real(config: ml_collections.ConfigDict, log: Callable[[str], None]) -> data.RealData:
    """The real dataset the config names, with a one-line report of its size and load time."""
    start = time.perf_counter()
    real = data.load(config.dataset, data_dir=config.data_dir or None)
    if config.holdout.per_class:
        real, val_images, val_labels = data.hold_out(real, config.holdout.per_class, config.holdout.seed)
        if config.eval.split == "validation":  # the test set is never looked at
            real = real.replace(test_images=val_images, test_labels=val_labels)
    real = zca.whiten_real(real, zca.settings_from_config(config))  # fitted on the training images only
    if config.eval.get("test_size", 0):
        real = data.test_subset(real, config.eval.test_size)
    log(
        f"Loaded {config.dataset}: {real.train_images.shape[0]} train ({real.split}) / "
        f"{real.test_images.shape[0]} {config.eval.split} images of {real.image_shape} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return real


def _describe_preprocessing(eps: float | None) -> str:
    return "mean/std-normalised" if eps is None else f"ZCA-whitened (eps {eps:g})"


def _check_whitening(meta: dict, settings: zca.ZCASettings, path) -> None:
    """UserError unless the saved set's images and the config's real images are preprocessed alike (a
    whitened set trains on whitened data; meta 'zca_eps', absent for mean/std images)."""
    saved = meta.get("zca_eps")
    wanted = settings.eps if settings.enabled else None
    if saved == wanted:
        return
    if saved is None:
        fix = "--config.zca.enabled=False"
    else:
        fix = f"--config.zca.enabled=True --config.zca.eps={saved:g}"
    raise UserError(
        f"{path} holds {_describe_preprocessing(saved)} images but the config's real images are "
        f"{_describe_preprocessing(wanted)}: evaluate it with {fix}."
    )


def evaluate_existing(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    synset_path: str | Path | None = None,
    log=print,
) -> dict:
    """Evaluates a saved synthetic set (default: `workdir`/synset.npz) with `config.eval`; the config and
    the file are checked (`synthetic.load_npz` against the dataset and `config.ipc`) before any work."""
    prepare(config)
    workdir = Path(workdir)
    info = data.dataset_info(config.dataset)
    synset_path = Path(synset_path) if synset_path else workdir / "synset.npz"
    # checked against the dataset (shape, labels, classes, finiteness) before any data load or compile
    synset, extra = synthetic.load_npz(synset_path, info=info, ipc=config.ipc)
    learned_lr = extra["meta"].get("learned_lr")
    eval_settings.settings_from_section(config.eval, config.dataset).set_protocol(learned_lr)  # its check
    _check_whitening(extra["meta"], zca.settings_from_config(config), synset_path)
    workdir = run_folder.prepare(workdir)  # writable, before the evaluation that writes its results
    with run_folder.locked(workdir) if distributed.is_main_process() else contextlib.nullcontext():
        real = load_real(config, log)
        return evaluate_synset(config, real, synset, workdir, learned_lr=learned_lr, log=log)
