"""Studies (DESIGN §5.1): distillation variants compared over paired distillation seeds, seen vs unseen.

A study file, `configs/studies/<name>.py`, returns `default_config()` filled in: a base `recipe`
('FILE[:ARG]'), `overrides` for every cell, `variants` (name → overrides, nested like the config:
`{'pool': {'preset': 'main_similar'}}`), the distillation `seeds` (the same for every variant, so the
variants are paired; `variant_seeds` gives a variant other seeds, e.g. the reference and the headline
variant more than the ablations; a variant's `recipe` key replaces the base recipe for it, e.g. DC
against DM against MTT), the evaluation `archs`, `num_nets` networks per (set, arch) and the
`reference` variant. Each (variant, seed) is a cell: an ordinary run folder
`<workdir>/cells/<variant>/seed<s>/`, distilled and evaluated by `jaxdd.run.run`, so resume, checkpoints
and metrics apply and the evaluation's network seeds come from the cell's seed alone (shared across
variants). A rerun continues where it stopped and never recomputes a finished cell; one whose recorded
config differs is refused naming the key (or, with `recompute_changed`, set aside and recomputed).

`seen_archs` computes which evaluated architectures influenced a variant's set (the distillation model,
pool members, MetaDD auxiliaries, the KD teacher); the rest are unseen, and the report
(`jaxdd.study_report`) leads with the unseen mean and paired 95% intervals against the reference.
`cell` / `shard` run part of the cells (one job of a SLURM array each); `report_only` aggregates what
has finished.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_collections

from jaxdd import checkpointing, pool, recipe, reporting, selection, study_report
from jaxdd.augment import resolve_strategy
from jaxdd.config import default_values, read_saved, resolve, validate
from jaxdd.config_lists import split_ints, split_names
from jaxdd.errors import UserError, is_int, require
from jaxdd.models.registry import CONVNETS
from jaxdd.stats import INTERVAL_METHODS

# Keys of a finished cell's config.json that may differ without making it another cell: where files go
# and how often they are written, never what is computed.
CELL_IGNORED_KEYS = (
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "compilation_cache_dir",
    "data_dir",
    "devices",
    "distributed",
    "teachers.dir",
    "teachers.train",
    "mtt.experts_dir",
    "mtt.train_experts",
    "resume_with_changed_config",
    "resume_with_new_lr",
    "max_abs_pixel",
)
REFERENCE_EPOCHS = {False: 300, True: 1000}  # DESIGN §5: without / with training augmentation


def default_config() -> ml_collections.ConfigDict:
    """The keys of a study file (`get_config()` returns this, filled in)."""
    study = ml_collections.ConfigDict()
    study.recipe = "configs/dm.py:dataset=digits,ipc=1"  # the base recipe, FILE[:ARG]
    study.overrides = ml_collections.ConfigDict()  # applied to every cell, nested like the config
    study.variants = ml_collections.ConfigDict()  # name -> overrides (nested); {} = the recipe as it is
    study.reference = ""  # the variant differences are taken against
    study.seeds = "0,1,2"  # distillation seeds, the same for every variant
    # variant -> its own seeds instead (e.g. more for the reference and the headline variant, to narrow the
    # interval that matters, than for ablations); they must be among the reference's, as every set is
    # paired with the reference's set of its seed
    study.variant_seeds = ml_collections.ConfigDict()
    study.archs = "ConvNet,MLP"  # evaluation architectures
    study.num_nets = 3  # networks per (set, arch); network i of a seed is the same in every variant
    study.interval = "t"  # 't': paired t-interval; 'bootstrap': paired bootstrap over seeds
    study.cell = ""  # run only this cell, 'VARIANT/SEED' (e.g. one job of an array)
    study.shard = ""  # run only cells i, i+n, i+2n, ... of the list: 'i/n' (0-based i)
    study.report_only = False  # aggregate the finished cells; compute nothing
    study.recompute_changed = False  # set aside and recompute a finished cell whose config differs
    # Choosing a hyperparameter without the test set (jaxdd.selection): '' = no choice to make.
    study.select = selection.default_config()
    return study


def cell_name(variant: str, seed: int) -> str:
    return f"{variant}/{seed}"


def cell_dir(workdir: Path, variant: str, seed: int) -> Path:
    """`<workdir>/cells/<variant, file-system safe>/seed<seed>`."""
    return Path(workdir) / "cells" / re.sub(r"[^A-Za-z0-9._+=-]", "_", variant) / f"seed{seed}"


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items() if hasattr(tree, "items") else ():
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def apply_overrides(config: ml_collections.ConfigDict, overrides, where: str) -> None:
    for dotted, value in _flatten(overrides).items():
        node = config
        *parents, last = dotted.split(".")
        try:
            for part in parents:
                node = node[part]
            if last not in node:
                raise KeyError(last)
            node[last] = value
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{where} sets {dotted!r}, which is not a config key of the recipe.") from None


VARIANT_RECIPE = "recipe"  # the one variant key that is not a config key: the variant's own base recipe


def variant_recipe(study: ml_collections.ConfigDict, variant: str) -> str:
    """The recipe `variant`'s cells start from: its own `recipe` key, else the study's."""
    return study.variants[variant].get(VARIANT_RECIPE, None) or study.recipe


def variant_overrides(study: ml_collections.ConfigDict, variant: str) -> dict:
    """`variant`'s config overrides (its entry without the `recipe` key)."""
    return {k: v for k, v in study.variants[variant].items() if k != VARIANT_RECIPE}


def cell_config(
    study: ml_collections.ConfigDict, variant: str, seed: int, extra=(), where: str = "", *, beneath=()
) -> ml_collections.ConfigDict:
    """The run config of one cell: recipe, study overrides, `beneath` (a selection's choice that the
    variant's own overrides refine: an ablation of the chosen setting), variant overrides, `extra`
    overrides (a grid candidate's, the chosen one's), then the seed and the study's evaluation (archs,
    networks, no baselines: the study compares its variants); the keys left at AUTO resolved last."""
    config = ml_collections.ConfigDict(recipe.load_recipe(variant_recipe(study, variant)).to_dict())
    apply_overrides(config, study.overrides, "study.overrides")
    if beneath:
        apply_overrides(config, beneath, "study.select's choice")
    apply_overrides(config, variant_overrides(study, variant), f"study.variants[{variant!r}]")
    if extra:
        apply_overrides(config, extra, where)
    config.seed = seed
    config.eval.archs = ",".join(split_names(study.archs, key="study.archs"))
    config.eval.num_nets = study.num_nets
    config.eval.baselines = ""
    return resolve(config)  # keys left at AUTO, as config.json records them (compared by `finished`)


def seen_archs(config: ml_collections.ConfigDict, archs) -> set[str]:
    """The evaluated architectures (of `archs`) that influenced the set `config` distils: the model, the
    pool's members, MetaDD's auxiliaries and, with KD, the teacher's architecture (ConvNet names and
    their specs are the same network)."""
    influences = [pool.main_arch(config)]
    drawn = pool.pool_from_config(config)
    if drawn is not None:
        influences += list(drawn.archs)
    if config.metadd.enabled:
        influences += list(split_names(config.metadd.archs, key="metadd.archs"))
    if config.kd.enabled:
        influences.append(config.kd.teacher)
    canonical = {_canonical(arch) for arch in influences}
    return {arch for arch in archs if _canonical(arch) in canonical}


def _canonical(arch):
    return CONVNETS.get(arch, arch) if isinstance(arch, str) else arch


def _seed_list(text, key: str) -> list[int]:
    seeds = split_ints(text, key=key)
    require(seeds and len(set(seeds)) == len(seeds), f"{key}={text!r} must be distinct integers.")
    require(all(s >= 0 for s in seeds), f"{key}={text!r} must be non-negative.")
    return seeds


def variant_seeds(study: ml_collections.ConfigDict) -> dict[str, list[int]]:
    """Each variant's distillation seeds: `study.variant_seeds[v]` where given, else `study.seeds`; every
    variant's among the reference's. UserError naming a bad value."""
    default = _seed_list(study.seeds, "study.seeds")
    given = dict(study.get("variant_seeds", {}))
    unknown = [v for v in given if v not in study.variants]
    require(
        not unknown,
        f"study.variant_seeds names {unknown}, which are not variants; name some of "
        f"{', '.join(study.variants)}.",
    )
    seeds = {
        v: _seed_list(given[v], f"study.variant_seeds[{v!r}]") if v in given else default
        for v in study.variants
    }
    reference = seeds.get(study.reference, default)
    for v, own in seeds.items():
        lacking = [s for s in own if s not in reference]
        require(
            not lacking,
            f"variant {v!r} has seeds {lacking} that the reference {study.reference!r} lacks "
            f"(seeds {reference}): a set is paired with the reference's of its seed, so give the reference "
            "every seed of every variant.",
        )
    return seeds


def validate_study(study: ml_collections.ConfigDict) -> dict[tuple[str, int], ml_collections.ConfigDict]:
    """Every cell's config, validated; UserError naming the first bad study value (nothing computed)."""
    variants = list(study.variants.keys())
    require(
        variants, "study.variants is empty: name at least two variants, e.g. {'dm': {}, 'dm+pool': {...}}."
    )
    require(
        study.reference in variants,
        f"study.reference={study.reference!r} is not a variant; choose one of {', '.join(variants)}.",
    )
    seeds_of = variant_seeds(study)
    require(split_names(study.archs, key="study.archs"), "study.archs is empty: name the evaluation archs.")
    require(is_int(study.num_nets) and study.num_nets >= 1, f"study.num_nets={study.num_nets!r} must be ≥ 1.")
    require(
        study.interval in INTERVAL_METHODS,
        f"study.interval={study.interval!r} is not one of {', '.join(INTERVAL_METHODS)}.",
    )
    configs = {}
    every_seed = dict.fromkeys(s for v in variants for s in seeds_of[v])
    for seed in every_seed:  # seed-major: a study stopped part-way already holds paired seeds to report
        for variant in (v for v in variants if seed in seeds_of[v]):
            config = cell_config(study, variant, seed)
            try:
                validate(config)
            except UserError as error:
                raise UserError(f"study cell {cell_name(variant, seed)}: {error}") from None
            configs[(variant, seed)] = config
    grid = list(selection.grid_configs(study)) if study.select.variant else []
    _select(study, list(configs), grid)  # a bad cell / shard is named before any work
    if study.select.variant:
        selection.validate(study, variants)
    return configs


def _select(study, cells: list[tuple[str, int]], others: list[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    """The cells of `cells` this process computes: all, the one `study.cell` names, or shard i of n.
    `others`: the study's other cells (the selection grid's, or the study's beside the grid): a
    `study.cell` among them selects none of `cells`."""
    if study.cell:
        chosen = [c for c in cells if cell_name(*c) == study.cell]
        every = [*cells, *others]
        require(
            chosen or any(cell_name(*c) == study.cell for c in others),
            f"study.cell={study.cell!r} is not a cell; cells are VARIANT/SEED, e.g. "
            f"{cell_name(*every[0])} (all: {', '.join(cell_name(*c) for c in every)}).",
        )
        return chosen
    if study.shard:
        index, sep, count = str(study.shard).partition("/")
        ok = sep and index.isdigit() and count.isdigit() and int(index) < int(count)
        require(ok, f"study.shard={study.shard!r} must be 'i/n' with 0 ≤ i < n, e.g. 0/{len(cells)}.")
        return cells[int(index) :: int(count)]
    return cells


def finished(config: ml_collections.ConfigDict, folder: Path) -> bool:
    """Whether the cell in `folder` is done with exactly `config` (eval.json written). UserError when it
    is done with a config that differs in a key that changes its numbers."""
    if not (folder / "eval.json").is_file() or not (folder / "config.json").is_file():
        return False
    # both with this backend's choices for 'auto': a cell's config.json of before runs recorded them, and
    # a grid cell's config, not validated yet
    saved = read_saved(json.loads((folder / "config.json").read_text()))
    differences = checkpointing.config_differences(
        saved, read_saved(config.to_dict()), ignored_keys=CELL_IGNORED_KEYS, defaults=default_values()
    )
    if not differences:
        return True
    listed = ", ".join(f"{key}: {old!r} → {new!r}" for key, (old, new) in differences.items())
    raise UserError(
        f"The finished cell {folder} was computed with a different config ({listed}). Use a new study "
        "--workdir for the changed study, or pass --config.recompute_changed=True to set it aside and "
        "recompute it."
    )


def run_study(study: ml_collections.ConfigDict, workdir: str | Path, *, log: Callable[[str], None] = print):
    """Computes the study's missing cells (those this process is given) and writes study.json, .md, .png
    from every finished cell. Returns the report dict (None while a variant has no set paired with the
    reference's).

    With `study.select.variant`, the grid cells come first (scored on the validation split); the chosen
    candidate's overrides then complete that variant's cells (and, beneath their own overrides, those of
    `select.also`), which wait until the choice is made.
    """
    configs = validate_study(study)
    workdir = Path(workdir)
    chosen = None
    grid = selection.grid_configs(study) if study.select.variant else {}
    if study.select.variant:
        grid_todo = _select(study, list(grid), list(configs)) if not study.report_only else []
        run_cells(
            study, grid, grid_todo, lambda g, s: selection.grid_dir(workdir, g, s), log=log, what="grid"
        )
        chosen = selection.choose(study, grid, workdir, log=log)
        takers = selection.takers(study)
        configs = {
            (v, s): (selection.with_choice(study, v, s, chosen) if v in takers else config)
            for (v, s), config in configs.items()
            if v not in takers or chosen is not None
        }
    todo = _select(study, list(configs), list(grid)) if not study.report_only else []
    run_cells(study, configs, todo, lambda v, s: cell_dir(workdir, v, s), log=log, what="cell")
    return report(study, configs, workdir, selection=chosen, log=log)


def run_cells(study, configs: Mapping, todo, folder_of, *, log: Callable[[str], None], what: str) -> None:
    """Runs each cell of `todo` (keys of `configs`) in `folder_of(name, seed)` unless it is finished."""
    from jaxdd.run import run  # the run driver imports the library; a study only drives it

    for index, (name, seed) in enumerate(todo):
        folder, config = folder_of(name, seed), configs[(name, seed)]
        try:
            if finished(config, folder):
                log(f"Study {what} {cell_name(name, seed)}: finished, kept ({folder}).")
                continue
        except UserError:
            if not study.recompute_changed:
                raise
            aside = folder.with_name(f"{folder.name}.replaced")
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
            log(f"Study {what} {cell_name(name, seed)}: config changed; old one moved to {aside}.")
        log(f"Study {what} {cell_name(name, seed)} ({index + 1}/{len(todo)} here): {folder}")
        run(config, folder, log=log)


def collect(
    configs: Mapping, folder_of: Callable[[str, int], Path], reference: str | None = None
) -> tuple[dict, list[str]]:
    """accs[variant][seed][arch] = [accuracies] of the finished cells (in `folder_of(variant, seed)`),
    for each variant over its finished seeds that the `reference` (default: the first variant) has
    finished too, so every set is paired; and the cells still missing."""
    done, missing = {}, []
    for (variant, seed), config in configs.items():
        folder = folder_of(variant, seed)
        try:
            ok = finished(config, folder)
        except UserError:
            ok = False
        if ok:
            results = json.loads((folder / "eval.json").read_text())
            done[(variant, seed)] = {arch: results[arch]["accs"] for arch in split_names(config.eval.archs)}
        else:
            missing.append(cell_name(variant, seed))
    variants = list(dict.fromkeys(v for v, _ in configs))
    reference = reference or variants[0]
    accs = {
        v: {s: done[(v, s)] for (w, s) in configs if w == v and (v, s) in done and (reference, s) in done}
        for v in variants
    }
    return accs, missing


def protocol_text(config: ml_collections.ConfigDict, recipe_iterations: int) -> tuple[str, list[str]]:
    """The distillation and evaluation protocol of a cell, and why it is reduced against the reference
    (fewer evaluation epochs, a test subset, fewer iterations than the recipe; empty: not reduced)."""
    e = config.eval
    augmented = resolve_strategy(e.augment, config.dataset) not in ("none", "")
    reasons = []
    if e.epochs != REFERENCE_EPOCHS[augmented]:
        reasons.append(f"{e.epochs} evaluation epochs (reference {REFERENCE_EPOCHS[augmented]})")
    if e.get("test_size", 0):
        reasons.append(f"a stratified test subset of {e.test_size} images")
    if config.iterations < recipe_iterations:
        reasons.append(f"{config.iterations} iterations (recipe {recipe_iterations})")
    text = (
        f"{config.dataset}, IPC {config.ipc}, {config.iterations} distillation iterations; each set "
        f"evaluated on {e.num_nets} networks per architecture: SGD lr {e.lr} momentum {e.momentum} wd "
        f"{e.weight_decay}, batch {e.batch_size}, {e.epochs} epochs, augmentation {e.augment!r}, "
        + (f"test subset of {e.test_size}" if e.get("test_size", 0) else "full test set")
    )
    return text, reasons


def _other_variants(study, configs: Mapping, first: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(what, reasons) for the variants that distil with another method or iteration count than the
    first cell (a study across methods): 'VARIANT: METHOD, N iterations' each, and the reduced ones
    against their own recipe."""
    what, reasons = [], []
    for variant in dict.fromkeys(v for v, _ in configs):
        config = next(c for (v, _), c in configs.items() if v == variant)
        if (config.method, config.iterations) == (first.method, first.iterations):
            continue
        what.append(f"{variant}: {config.method}, {config.iterations} iterations")
        planned = recipe.load_recipe(variant_recipe(study, variant)).iterations
        if config.iterations < planned:
            reasons.append(f"{variant} {config.iterations} iterations (recipe {planned})")
    return what, reasons


def report(
    study,
    configs: Mapping,
    workdir: Path,
    *,
    selection: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Writes study.json, study.md and study.png from the finished cells; logs what is still missing."""
    accs, missing = collect(configs, lambda v, s: cell_dir(workdir, v, s), study.reference)
    if missing:
        log(f"Study: {len(missing)} cell(s) not finished yet: {', '.join(missing)}.")
    if not any(accs.values()) or not all(accs.values()):
        log("Study: a variant has no set finished beside the reference's of its seed yet; no report written.")
        return None
    archs = list(split_names(study.archs, key="study.archs"))
    first_cell = next(iter(configs))
    first = configs[first_cell]
    seen = {v: seen_archs(configs[(v, s)], archs) for (v, s) in configs}
    planned = recipe.load_recipe(variant_recipe(study, first_cell[0])).iterations
    protocol, reasons = protocol_text(first, planned)
    others, other_reasons = _other_variants(study, configs, first)
    if others:
        protocol += f" ({first_cell[0]}; " + "; ".join(others) + ")"
    reasons += other_reasons
    if reasons:
        protocol += "; reduced: " + ", ".join(reasons)
    if missing:
        protocol += f"; {len(missing)} cell(s) not finished and left out"
    result = study_report.compute_study(
        accs,
        archs=archs,
        seen=seen,
        reference=study.reference,
        protocol=protocol,
        reduced=bool(reasons),
        selection=selection["text"] if selection else None,
        method=study.interval,
    )
    study_report.write_study(result, workdir)
    reporting.write_json(workdir / "study_config.json", study.to_dict())
    log(study_report.headline(result))
    log(f"Wrote {workdir / 'study.md'}, study.json, study.png")
    return result
