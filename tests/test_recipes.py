"""The recipe files: one per method family (configs/dc.py:dataset=cifar10,ipc=10), and the rules that
depend on the IPC, applied however the IPC is given.

The expectation is independent of the new files: tests/data/recipe_configs_before.json holds
`flatten_config` of every per-dataset recipe (configs/dc_cifar10.py, ...) with the arguments their
docstrings and README used (as the keys that differ from that tree's base_config()), written from the
tree before the family files replaced them, and of the studies' cell configs.
"""

import json
import re
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from jaxdd import checkpointing, recipe, study
from jaxdd.config import AUTO, base_config, prepare, resolve, validate
from jaxdd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests" / "data" / "recipe_configs_before.json").read_text())
OLD_NAME = re.compile(r"^configs/(pool_dc|dsa|dc|dm|sre2l)_([a-z0-9_]+?)\.py(?::(.*))?$")
FAMILIES = ("dc", "dsa", "dm", "sre2l", "pool_dc")
# The one difference before resolution: DM on CIFAR-10 leaves lr_img at AUTO, so that an IPC given after
# the recipe (--config.ipc, a study's overrides) still picks the DM readme's value.
UNRESOLVED = {"dm_cifar10": {"dm.lr_img": float(AUTO)}}


def new_form(old: str) -> str:
    """configs/dc_cifar10.py:ipc=10 -> configs/dc.py:dataset=cifar10,ipc=10 (others: unchanged)."""
    match = OLD_NAME.match(old)
    if not match:
        return old
    family, dataset, arg = match.groups()
    return f"configs/{family}.py:dataset={dataset}" + (f",{arg}" if arg else "")


def expected(old_own: dict) -> dict:
    """The old config (the fixture's `base` with the recipe's own values `old_own`) on today's defaults: a
    key the recipe left at its default follows the default now (another change may add or change one);
    a key it set keeps the value it had. While base_config() is the fixture's, this is the old config
    exactly."""
    return {**checkpointing.flatten_config(base_config()), **old_own}


def flat(spec: str, *, resolved: bool = True) -> dict:
    config = recipe.load_recipe(spec)
    return checkpointing.flatten_config(resolve(config) if resolved else config)


def _differences(a: dict, b: dict) -> dict:
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


@pytest.mark.parametrize("old", sorted(BEFORE["recipes"]))
def test_every_old_recipe_and_argument_gives_the_same_config_in_its_family_form(old):
    want = expected(BEFORE["recipes"][old])
    assert _differences(want, flat(new_form(old))) == {}
    match = OLD_NAME.match(old)
    unresolved = UNRESOLVED.get(f"{match[1]}_{match[2]}", {}) if match else {}
    left_at_auto = {key: (want[key], value) for key, value in unresolved.items()}
    explicit = any(f"{key}=" in old for key in unresolved)  # an argument that sets the key itself
    assert _differences(want, flat(new_form(old), resolved=False)) == ({} if explicit else left_at_auto)


def test_the_fixture_covers_every_family_and_the_running_study_recipe():
    families = {OLD_NAME.match(old)[1] for old in BEFORE["recipes"] if OLD_NAME.match(old)}
    assert families == set(FAMILIES)
    assert (
        sum(1 for old in BEFORE["recipes"] if OLD_NAME.match(old)) == 116
    )  # 23 files, 4 to 9 arguments each


@pytest.mark.parametrize("arg", ["", ":ipc=1", ":ipc=10", ":ipc=50", ":ipc=100"])
def test_dm_fashion_mnist_still_loads_exactly_its_old_config_unresolved(arg):
    # configs/studies/dm_pool_fashion_mnist.py reloads it for every cell of a running study
    old = f"configs/dm_fashion_mnist.py{arg}"
    assert _differences(expected(BEFORE["recipes"][old]), flat(old, resolved=False)) == {}


@pytest.mark.parametrize("cell", sorted(BEFORE["study_cells"]))
def test_the_study_cells_keep_their_recorded_configs(cell):
    path, variant, seed = cell.split("|")
    config = study.cell_config(recipe.load_recipe(path), variant, int(seed))
    assert _differences(expected(BEFORE["study_cells"][cell]), checkpointing.flatten_config(config)) == {}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("configs/dc_cifar10.py:ipc=10", "--config=configs/dc.py:dataset=cifar10,ipc=10"),
        (
            "configs/pool_dc_cifar10.py:main_similar,ipc=1",
            "--config=configs/pool_dc.py:dataset=cifar10,main_similar,ipc=1",
        ),
        ("configs/sre2l_tiny_imagenet.py", "--config=configs/sre2l.py:dataset=tiny_imagenet"),
        ("configs/dsa_fashion_mnist.py", "--config=configs/dsa.py:dataset=fashion_mnist"),
    ],
)
def test_an_old_recipe_name_is_answered_with_its_one_line_replacement(old, new):
    with pytest.raises(
        UserError,
        match=re.escape(f"one file per method family now, with the dataset in the argument: {new}."),
    ):
        recipe.load_recipe(old)
    assert new_form(old) == new.removeprefix("--config=")


def test_a_family_needs_a_dataset_of_its_table():
    with pytest.raises(UserError, match=r"names no dataset: add dataset=NAME .*one of mnist, fashion_mnist"):
        recipe.load_recipe("configs/dc.py:ipc=10")
    with pytest.raises(UserError, match=r"dataset='svhn' is not in this recipe's table; its datasets are"):
        recipe.load_recipe("configs/dm.py:dataset=svhn")
    with pytest.raises(UserError, match=r"names no dataset"):
        recipe.load_recipe("configs/pool_dc.py:main_others")


def test_every_family_table_names_registered_datasets_and_their_published_numbers():
    from jaxdd.data import DATASETS

    def family(name):
        return recipe.sibling_module(str(ROOT / "configs" / "default.py"), f"{name}.py")

    for name in ("dc", "dsa", "dm", "sre2l"):
        table = family(name).DATASETS
        assert set(table) <= set(DATASETS), name
        assert all(isinstance(keys, dict) and isinstance(number, str) for keys, number in table.values())
    pool_dc = family("pool_dc")
    assert pool_dc.DC.DATASETS == family("dc").DATASETS  # the DC rows, not a copy
    assert set(pool_dc.PUBLISHED) <= set(pool_dc.DC.DATASETS)


class _LauncherParser(flags.ArgumentParser):
    """The --config parser as jaxdd.main installs it: `load_recipe`; ml_collections applies overrides."""

    def parse(self, argument):
        return recipe.load_recipe(argument)


@pytest.mark.parametrize(
    ("dataset", "ipc", "lr_img"),
    [
        ("cifar10", 1, 1.0),
        ("cifar10", 50, 1.0),
        ("cifar10", 100, 10.0),
        ("cifar10", 200, 10.0),
        ("cifar100", 100, 1.0),
    ],
)
def test_the_dm_lr_rule_applies_however_the_ipc_is_given(dataset, ipc, lr_img):
    # in the recipe argument
    config = recipe.load_recipe(f"configs/dm.py:dataset={dataset},ipc={ipc}")
    prepare(config)
    assert config.dm.lr_img == lr_img
    # as --config.ipc after the recipe, applied by ml_collections as the launcher's flag does
    argv = ["jaxdd", f"--config={ROOT / 'configs' / 'dm.py'}:dataset={dataset}", f"--config.ipc={ipc}"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values["config"].parser = _LauncherParser()
    values(argv)
    prepare(values.config)
    assert values.config.ipc == ipc and values.config.dm.lr_img == lr_img
    assert values.config.to_dict()["dm"]["lr_img"] == lr_img  # what config.json records
    # as a study's override
    plan = study.default_config()
    plan.recipe = f"{ROOT / 'configs' / 'dm.py'}:dataset={dataset}"
    plan.overrides = {"ipc": ipc}
    plan.variants = {"dm": {}}
    assert study.cell_config(plan, "dm", 0).dm.lr_img == lr_img


def test_an_explicit_dm_lr_img_wins_over_the_rule():
    for spec in (
        "configs/dm.py:dataset=cifar10,ipc=100,dm.lr_img=5",
        "configs/dm.py:dataset=cifar10,dm.lr_img=5",
    ):
        config = recipe.load_recipe(spec)
        config.ipc = 100
        validate(config)
        assert config.dm.lr_img == 5.0
    config = recipe.load_recipe("configs/dm.py:dataset=cifar10")
    config.ipc, config.dm.lr_img = 100, 3.0
    validate(config)
    assert config.dm.lr_img == 3.0


def test_resolve_is_idempotent_and_leaves_set_values_alone():
    config = recipe.load_recipe("configs/dm.py:dataset=cifar10,ipc=100")
    assert config.dm.lr_img == AUTO
    assert resolve(config).dm.lr_img == 10.0
    config.ipc = 1
    assert resolve(config).dm.lr_img == 10.0  # resolved once, after the last override
    partial = base_config()
    del partial["dm"]
    assert resolve(partial) is partial  # tools build partial configs


def _commands(text: str) -> list[str]:
    return re.findall(r"--config=(configs/[^\s'\"`]+)", text)


def test_every_command_in_the_readme_docs_and_recipe_docstrings_loads_and_validates():
    texts = [(ROOT / "README.md").read_text()]
    texts += [path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))]
    texts += [path.read_text() for path in sorted((ROOT / "configs").glob("**/*.py"))]
    specs = sorted({spec for text in texts for spec in _commands(text)})
    assert {"configs/dc.py:dataset=cifar10,ipc=10", "configs/dsa.py:dataset=cifar10"} <= set(specs)
    assert "configs/studies/metadd_dm_fashion_mnist.py" in specs
    for spec in specs:
        config = recipe.load_recipe(str(ROOT / spec))
        if "studies/" in spec:
            study.validate_study(config)  # every cell's config, and the selection grid's
        else:
            validate(config)


def test_a_run_records_the_resolved_value_in_config_json(tmp_path):
    from jaxdd.run import run

    config = recipe.load_recipe("configs/dm.py:dataset=digits,ipc=1,iterations=0,dm.lr_img=0")
    config.eval.archs, config.eval.baselines, config.compilation_cache_dir = "", "", ""
    assert config.dm.lr_img == AUTO
    run(config, tmp_path, log=lambda line: None)
    assert json.loads((tmp_path / "config.json").read_text())["dm"]["lr_img"] == 1.0
