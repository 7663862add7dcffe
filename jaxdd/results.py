"""A run's evaluation and its files: eval.json, baselines.json and table.md, and one table from many runs.

The protocol itself is `jaxdd.evaluation`; this module decides what is evaluated (the distilled set and
the configured baselines, with keys from `config.seed`) and writes it beside the run (process 0 only in a
multi-process run, where every process evaluates and holds the same accuracies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections

from jaxdd import data, distributed, eval_cache, evaluation, kd, relabel, reporting, run_folder, synthetic
from jaxdd.config import eval_protocol, split_names, validate
from jaxdd.errors import UserError
from jaxdd.methods import sre2l
from jaxdd.seeding import purpose_key


def evaluate_synset(
    config: ml_collections.ConfigDict,
    real: data.RealData,
    synset: synthetic.SyntheticSet,
    workdir: Path,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates `synset` and the configured baselines on `config.eval.archs`; writes eval.json,
    baselines.json and table.md in `workdir` and prints the table."""
    archs = split_names(config.eval.archs, key="eval.archs")
    if not archs:
        log("eval.archs is empty: no evaluation.")
        return {}
    protocol = eval_protocol(config.eval, config.dataset)
    eval_key = purpose_key(config.seed, "eval")
    evaluate = lambda name, images, labels: _evaluate_set(
        name, images, labels, archs, real, eval_key, config, protocol, workdir, log
    )

    results = evaluate(f"{config.method} (IPC {config.ipc})", synset.images, synset.labels)
    columns = list(archs)
    if kd_enabled(config):
        kd_results = _evaluate_kd(
            f"{config.method} (IPC {config.ipc})", synset.images, synset.labels, archs, real, eval_key,
            config, protocol, workdir, log,
        )  # fmt: skip
        results, columns = side_by_side(results, kd_results, archs)
    if sre2l.soft_labels_enabled(config):
        soft = _evaluate_soft(
            f"{config.method} (IPC {config.ipc})", synset.images, archs, real, eval_key, config, workdir, log
        )
        results, columns = with_soft_columns(results, soft, archs)
    writer = distributed.is_main_process()
    if writer:
        reporting.write_json(workdir / "eval.json", results)
    rows = {f"{config.method}, IPC {config.ipc}": results}
    baselines = {}
    for baseline in split_names(config.eval.baselines, key="eval.baselines"):
        if baseline == "random" and config.method != "random":
            subset = synthetic.init_real(real, config.ipc, purpose_key(config.seed, "baseline"))
            baselines[f"random real, IPC {config.ipc}"] = evaluate(
                "random real", subset.images, subset.labels
            )
        elif baseline == "whole":
            baselines["whole training set"] = evaluate("whole set", real.train_images, real.train_labels)
    rows.update(baselines)
    table = evaluation.markdown_table(rows, columns) + "\n" + describe_protocol(config)
    if writer and baselines:
        reporting.write_json(workdir / "baselines.json", baselines)
    if writer:
        (workdir / "table.md").write_text(table)
    log("\n" + table)
    return results


def evaluate_during_run(
    config: ml_collections.ConfigDict,
    real: data.RealData,
    synset: synthetic.SyntheticSet,
    workdir: Path,
    *,
    iteration: int,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates the set at an intermediate iteration (config.eval_at); records it in metrics.jsonl only."""
    archs = split_names(config.eval.archs, key="eval.archs")
    if not archs:
        return {}
    name = f"{config.method} at iteration {iteration}"
    return _evaluate_set(
        name,
        synset.images,
        synset.labels,
        archs,
        real,
        purpose_key(config.seed, "eval"),
        config,
        eval_protocol(config.eval, config.dataset),
        workdir,
        log,
        step=iteration,
    )


def describe_protocol(config: ml_collections.ConfigDict) -> str:
    """One line stating everything the evaluation used (and one for KD), written beside the result."""
    e = config.eval
    text = (
        f"Protocol: {config.dataset}, test accuracy (%) mean ± std over {e.num_nets} networks per "
        f"architecture; "
        f"SGD lr {e.lr} momentum {e.momentum} weight decay {e.weight_decay}, batch {e.batch_size}, "
        f"{e.epochs} epochs, lr ×0.1 at half, augmentation {e.augment!r}, seed {config.seed}"
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


def side_by_side(plain: dict, kd_results: dict, archs) -> tuple[dict, list[str]]:
    """Plain and KD summaries in one dict, each arch followed by its KD column ('arch+KD'), and the
    column order."""
    merged, columns = {}, []
    for arch in archs:
        for column, results in ((arch, plain), (kd.column(arch), kd_results)):
            if arch in results:
                merged[column] = results[arch]
                columns.append(column)
    return merged, columns


def with_soft_columns(results: dict, soft: dict, archs) -> tuple[dict, list[str]]:
    """`results` plus each arch's soft-label column ('arch+soft') after its other columns, and the
    column order (arch, arch+KD, arch+soft where present)."""
    merged = {**results, **{relabel.column(arch): summary for arch, summary in soft.items()}}
    columns = [c for arch in archs for c in (arch, kd.column(arch), relabel.column(arch)) if c in merged]
    return merged, columns


def _evaluate_soft(name, images, archs, real, key, config, workdir, log) -> dict:
    log(f"Evaluating {name} with the teacher's soft labels (SRe2L relabel, teacher {config.model}):")
    results = sre2l.evaluate_soft_labels(config, real, images, archs, key, log=log)
    for arch, summary in results.items():
        record = {"event": "eval", "set": name, "arch": relabel.column(arch)}
        record.update({k: summary[k] for k in ("mean", "std", "seconds", "temperature")})
        _record(workdir, record)
    return results


def _evaluate_set(name, images, labels, archs, real, key, config, protocol, workdir, log, step=None) -> dict:
    log(f"Evaluating {name} ({images.shape[0]} images) on {', '.join(archs)}:")
    results = evaluation.evaluate_archs(
        archs,
        real,
        images,
        labels,
        key,
        protocol=protocol,
        num_nets=config.eval.num_nets,
        parallel=config.eval.parallel,
        devices=config.get("devices", 1),
        cache=(workdir / EVAL_CACHE_DIR, _cache_tag("plain", images, labels, config, protocol), _writer()),
        log=log,
    )
    for arch, summary in results.items():
        record = {"event": "eval", "set": name, "arch": arch, **({"step": step} if step else {})}
        record.update({k: summary[k] for k in ("mean", "std", "seconds")})
        _record(workdir, record)
    return results


EVAL_CACHE_DIR = "eval_cache"


def _writer() -> bool:
    return distributed.is_main_process()


def _cache_tag(kind: str, images, labels, config, protocol) -> dict:
    """What an architecture's accuracies depend on besides the architecture and its networks' key."""
    return {
        "kind": kind,
        "set": eval_cache.set_digest(images, labels),
        "split": {"eval": config.eval.split, "holdout": config.holdout.to_dict()},
        "protocol": dataclasses.asdict(protocol),
        "num_nets": config.eval.num_nets,
        "test": {"dataset": config.dataset, "test_size": config.eval.get("test_size", 0)},
    }


def _evaluate_kd(name, images, labels, archs, real, key, config, protocol, workdir, log) -> dict:
    log(f"Evaluating {name} with knowledge distillation (teacher {config.kd.teacher}):")
    results = kd.evaluate_archs_kd(
        archs,
        real,
        images,
        labels,
        key,
        protocol=protocol,
        options=kd.options_from_config(config.kd),
        num_nets=config.eval.num_nets,
        parallel=config.eval.parallel,
        devices=config.get("devices", 1),
        log=log,
    )
    for arch, summary in results.items():
        record = {"event": "eval", "set": name, "arch": kd.column(arch)}
        record.update({k: summary[k] for k in ("mean", "std", "seconds", "temperature")})
        _record(workdir, record)
    return results


def _record(workdir: Path, record: dict) -> None:
    """Appends `record` to workdir/metrics.jsonl on process 0."""
    if distributed.is_main_process():
        reporting.append_metrics(workdir / "metrics.jsonl", record)


def load_real(config: ml_collections.ConfigDict, log: Callable[[str], None]) -> data.RealData:
    """The real dataset the config names, with a one-line report of its size and load time."""
    start = time.perf_counter()
    real = data.load(config.dataset, data_dir=config.data_dir or None)
    if config.holdout.per_class:
        real, val_images, val_labels = data.hold_out(real, config.holdout.per_class, config.holdout.seed)
        if config.eval.split == "validation":  # the test set is never looked at
            real = real.replace(test_images=val_images, test_labels=val_labels)
    if config.eval.get("test_size", 0):
        real = data.test_subset(real, config.eval.test_size)
    log(
        f"Loaded {config.dataset}: {real.train_images.shape[0]} train ({real.split}) / "
        f"{real.test_images.shape[0]} {config.eval.split} images of {real.image_shape} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return real


def evaluate_existing(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    synset_path: str | Path | None = None,
    log=print,
) -> dict:
    """Evaluates a saved synthetic set (default: `workdir`/synset.npz) with `config.eval`; the config and
    the file are checked (`synthetic.load_npz` against the dataset and `config.ipc`) before any work."""
    validate(config)
    workdir = Path(workdir)
    info = data.dataset_info(config.dataset)
    # checked against the dataset (shape, labels, classes, finiteness) before any data load or compile
    synset, _ = synthetic.load_npz(synset_path or workdir / "synset.npz", info=info, ipc=config.ipc)
    workdir = run_folder.prepare(workdir)  # writable, before the evaluation that writes its results
    with run_folder.locked(workdir) if distributed.is_main_process() else contextlib.nullcontext():
        real = load_real(config, log)
        return evaluate_synset(config, real, synset, workdir, log=log)


def collect_table(run_dirs: list[str | Path]) -> str:
    """One cross-architecture markdown table from the eval.json (and baselines.json) of several runs."""
    rows, archs = {}, []
    for run_dir in map(Path, run_dirs):
        eval_path = run_dir / "eval.json"
        if not eval_path.is_file():
            raise UserError(f"{str(run_dir)!r} has no eval.json: evaluate it first (--mode=evaluate).")
        rows[run_dir.name] = _read_results(eval_path)
        baselines_path = run_dir / "baselines.json"
        if baselines_path.is_file():
            for name, results in _read_results(baselines_path).items():
                rows.setdefault(name, results)
        archs += [a for a in rows[run_dir.name] if a not in archs]
    return evaluation.markdown_table(rows, archs)


def _read_results(path: Path) -> dict:
    """A results file's JSON object; UserError naming the file when it is cut short or not an object."""
    try:
        results = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(
            f"{str(path)!r} is not valid JSON ({error}): evaluate the run again (--mode=evaluate) to "
            "rewrite it."
        ) from None
    if not isinstance(results, dict):
        kind = type(results).__name__
        raise UserError(f"{str(path)!r} holds a {kind}, not {{arch: summary}}: evaluate the run again.")
    return results
