"""Choosing a study's hyperparameter without the test set (DESIGN §5.1).

`study.select` names a variant and a grid of candidates (name → overrides on top of that variant). Each
candidate is distilled on `select.seeds` (seeds of its own, not the study's) from the training set minus
a validation split (`val_per_class` images per class, stratified, fixed by `holdout_seed`, also kept from
its teachers) and evaluated on that split only: no grid cell ever computes a test accuracy. The candidate
with the best mean accuracy over the architectures unseen by every candidate wins; the variant's study
cells then run with its overrides on the study's own seeds and full training set, and are reported on
the test set with a line saying what was chosen, on which split, among which candidates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_collections
import numpy as np

from jaxdd import reporting
from jaxdd.config import validate as validate_config
from jaxdd.config_lists import split_ints, split_names
from jaxdd.errors import UserError, is_int, require


def default_config() -> ml_collections.ConfigDict:
    """`study.select`: off ('' variant)."""
    return ml_collections.ConfigDict(
        {
            "variant": "",  # the variant whose setting is chosen; '' = no selection
            # variants that take the choice beneath their own overrides (ablations of the chosen setting)
            "also": "",
            "grid": ml_collections.ConfigDict(),  # candidate name -> overrides on top of the variant
            "seeds": "1000,1001",  # distillation seeds of the grid cells (distinct from the study's)
            "val_per_class": 50,  # training images per class held out as the validation split
            "holdout_seed": 0,  # which images are held out
        }
    )


def validate(study: ml_collections.ConfigDict, variants: list[str]) -> None:
    """UserError naming a bad `study.select` value; every grid cell's config is validated too."""
    s = study.select
    require(
        s.variant in variants,
        f"study.select.variant={s.variant!r} is not a variant; choose one of {', '.join(variants)}.",
    )
    require(len(s.grid) >= 2, f"study.select.grid has {len(s.grid)} candidate(s): give at least two.")
    for name in split_names(s.also, key="study.select.also"):
        require(
            name in variants and name != s.variant,
            f"study.select.also has {name!r}: name other variants ({', '.join(variants)}) that take the "
            f"choice made for {s.variant!r}.",
        )
    seeds = split_ints(s.seeds, key="study.select.seeds")
    from jaxdd.study import variant_seeds  # study builds on this module

    study_seeds = {seed for own in variant_seeds(study).values() for seed in own}
    require(seeds and len(set(seeds)) == len(seeds), f"study.select.seeds={s.seeds!r} must be distinct.")
    overlap = sorted(set(seeds) & study_seeds)
    require(
        not overlap,
        f"study.select.seeds={s.seeds!r} overlaps study.seeds or study.variant_seeds (seeds {overlap}): "
        "the chosen setting must be reported on fresh seeds.",
    )
    require(
        is_int(s.val_per_class) and s.val_per_class >= 1,
        f"study.select.val_per_class={s.val_per_class!r} must be an integer ≥ 1.",
    )
    for (name, seed), config in grid_configs(study).items():
        try:
            validate_config(config)
        except UserError as error:
            raise UserError(f"study.select.grid[{name!r}] (seed {seed}): {error}") from None


def grid_configs(study: ml_collections.ConfigDict) -> dict[tuple[str, int], ml_collections.ConfigDict]:
    """{(candidate, seed): config}: the variant with the candidate's overrides, the validation split
    held out of its training data and evaluated on (never on the test set), on the architectures that
    score it only (`scored_archs`: the others would cost evaluations that choose nothing)."""
    from jaxdd.study import cell_config  # study builds on this module

    s = study.select
    configs = {}
    for name, overrides in s.grid.items():
        for seed in split_ints(s.seeds, key="study.select.seeds"):
            config = cell_config(study, s.variant, seed, overrides, f"study.select.grid[{name!r}]")
            config.holdout.per_class, config.holdout.seed = s.val_per_class, s.holdout_seed
            config.eval.split = "validation"
            config.eval.test_size = 0
            configs[(name, seed)] = config
    scored = ",".join(scored_archs(study, configs))
    for config in configs.values():
        config.eval.archs = scored
    return configs


def scored_archs(study, grid: Mapping) -> list[str]:
    """The study's architectures unseen by every candidate of `grid` (all of them when none is)."""
    from jaxdd.study import seen_archs

    archs = list(split_names(study.archs, key="study.archs"))
    seen = set().union(*(seen_archs(config, archs) for config in grid.values()))
    return [a for a in archs if a not in seen] or archs


def grid_dir(workdir: Path, name: str, seed: int) -> Path:
    from jaxdd.study import cell_dir

    return cell_dir(Path(workdir) / "select", name, seed)


def choose(study, grid: Mapping, workdir: Path, *, log: Callable[[str], None] = print) -> dict | None:
    """The winning candidate, {'name', 'overrides', 'scores', 'archs', 'text'} (also written to
    selection.json), or None while grid cells are missing. Score: the mean over the grid seeds of the
    validation accuracy averaged over the archs unseen by every candidate (all archs when none is)."""
    from jaxdd.study import collect

    accs, missing = collect(grid, lambda g, s: grid_dir(workdir, g, s))
    if missing:
        log(
            f"Selection: {len(missing)} grid cell(s) not finished ({', '.join(missing)}); nothing chosen yet."
        )
        return None
    archs = list(split_names(study.archs, key="study.archs"))
    scored = scored_archs(study, grid)
    scores = {
        name: float(np.mean([np.mean([np.mean(by_arch[a]) for a in scored]) for by_arch in by_seed.values()]))
        for name, by_seed in accs.items()
    }
    best = max(scores, key=scores.get)
    s = study.select
    listed = ", ".join(f"{name} {100 * score:.1f}%" for name, score in scores.items())
    text = (
        f"{s.variant}: {best} chosen among {listed} (mean validation accuracy over {', '.join(scored)}, "
        f"{'unseen by every candidate' if len(scored) < len(archs) else 'all archs: none is unseen by all'}) "
        f"on a validation split of {s.val_per_class} training images per class held out of the training "
        f"set (seed {s.holdout_seed}), grid seeds {s.seeds}; the grid never computed a test accuracy."
    )
    also = split_names(s.also, key="study.select.also")
    if also:
        text += f" {', '.join(also)} take the same choice beneath their own overrides."
    chosen = {"name": best, "overrides": s.grid[best].to_dict(), "scores": scores, "archs": scored}
    chosen["text"] = text
    reporting.write_json(Path(workdir) / "selection.json", json.loads(json.dumps(chosen)))
    log(f"Selection: {text}")
    return chosen


def takers(study) -> set[str]:
    """The variants whose cells wait for the choice: `select.variant` and `select.also`."""
    return {study.select.variant, *split_names(study.select.also, key="study.select.also")}


def with_choice(study, variant: str, seed: int, chosen: dict) -> ml_collections.ConfigDict:
    """The cell (`variant`, `seed`) with the chosen candidate's overrides: over the variant's own for the
    selected variant, beneath them for one of `select.also` (whose overrides refine the choice), before
    the keys left at AUTO are resolved."""
    from jaxdd.study import cell_config

    if variant == study.select.variant:
        where = f"study.select.grid[{chosen['name']!r}]"
        return cell_config(study, variant, seed, chosen["overrides"], where)
    return cell_config(study, variant, seed, beneath=chosen["overrides"])
