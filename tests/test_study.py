"""Studies: cells are ordinary run folders, a rerun never recomputes a finished cell, a changed one is
refused (or recomputed when asked), parts of a study run alone, seen architectures are computed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from jaxdd import selection
from jaxdd import study as studies
from jaxdd.config import base_config
from jaxdd.errors import UserError
from jaxdd.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "studies" / "tiny_digits.py"


def tiny_study(**values) -> ml_collections.ConfigDict:
    study = load_recipe(str(TINY))
    study.unlock()
    study.recipe = str(ROOT / "configs" / "dm.py") + ":dataset=digits,ipc=1"
    study.overrides.eval.epochs = 2
    study.update(values)
    return study


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    logs = []
    result = studies.run_study(tiny_study(), workdir, log=logs.append)
    return workdir, result, logs


def test_a_study_runs_its_cells_as_ordinary_runs_and_reports(finished_study):
    workdir, result, _ = finished_study
    for variant in ("dm", "dm+pool"):
        for seed in (0, 1):
            cell = studies.cell_dir(workdir, variant, seed)
            config = json.loads((cell / "config.json").read_text())
            assert (
                config["seed"] == seed and (cell / "checkpoints").is_dir() and (cell / "synset.npz").is_file()
            )
            assert json.loads((cell / "eval.json").read_text())["MLP"]["accs"]
    assert result["seeds"] == [0, 1] and result["reference"] == "dm"
    assert result["results"]["dm+pool"]["groups"]["unseen"]["archs"] == ["ConvNetD1"]
    assert {"study.json", "study.md", "study.png"} <= {p.name for p in workdir.iterdir()}
    assert "reduced" in (workdir / "study.md").read_text()


def test_the_same_seed_trains_the_same_networks_in_every_variant(finished_study):
    # the evaluation's network seeds come from the cell's seed alone: the random init of network i of a
    # seed is shared, so two variants' sets are compared on the same networks (paired)
    workdir, _, _ = finished_study
    a = json.loads((studies.cell_dir(workdir, "dm", 0) / "config.json").read_text())
    b = json.loads((studies.cell_dir(workdir, "dm+pool", 0) / "config.json").read_text())
    assert a["seed"] == b["seed"] and a["eval"] == b["eval"]


def test_a_rerun_never_recomputes_a_finished_cell(finished_study, monkeypatch):
    workdir, _, _ = finished_study
    import jaxdd.run

    monkeypatch.setattr(jaxdd.run, "run", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    logs = []
    studies.run_study(tiny_study(), workdir, log=logs.append)
    assert sum("finished, kept" in line for line in logs) == 4


def test_a_finished_cell_with_another_config_is_refused_naming_the_key(finished_study):
    workdir, _, _ = finished_study
    changed = tiny_study()
    changed.overrides.eval.epochs = 3
    with pytest.raises(UserError, match=r"eval\.epochs: 2 → 3.*recompute_changed=True"):
        studies.run_study(changed, workdir, log=lambda _: None)


def test_cells_and_shards_run_alone_and_report_only_aggregates_what_finished(tmp_path, monkeypatch):
    ran = []
    import jaxdd.run

    monkeypatch.setattr(
        jaxdd.run, "run", lambda config, folder, log: ran.append((config.seed, folder.parent.name))
    )
    studies.run_study(tiny_study(cell="dm+pool/1"), tmp_path, log=lambda _: None)
    assert ran == [(1, "dm+pool")]
    ran.clear()
    studies.run_study(tiny_study(shard="1/3"), tmp_path, log=lambda _: None)
    assert ran == [(0, "dm+pool")]  # seed-major cells dm/0, dm+pool/0, dm/1, dm+pool/1: index 1
    ran.clear()
    logs = []
    assert studies.run_study(tiny_study(report_only=True), tmp_path, log=logs.append) is None
    assert ran == [] and any("4 cell(s) not finished" in line for line in logs)
    with pytest.raises(UserError, match=r"study\.cell='dm/7' is not a cell"):
        studies.run_study(tiny_study(cell="dm/7"), tmp_path, log=lambda _: None)
    with pytest.raises(UserError, match=r"study\.shard='3/3'"):
        studies.run_study(tiny_study(shard="3/3"), tmp_path, log=lambda _: None)


def test_variant_seeds_give_a_variant_its_own_cells_and_pair_each_set_with_the_references(
    finished_study, tmp_path
):
    study = tiny_study(variant_seeds={"dm": "0,1,2", "dm+pool": "0"})
    assert list(studies.validate_study(study)) == [("dm", 0), ("dm+pool", 0), ("dm", 1), ("dm", 2)]
    # finished: dm/0 and dm+pool/0, dm+pool/1; dm/1 is not, so dm+pool's seed 1 has no pair to report
    workdir, _, _ = finished_study
    for variant, seed in (("dm", 0), ("dm+pool", 0), ("dm+pool", 1)):
        shutil.copytree(studies.cell_dir(workdir, variant, seed), studies.cell_dir(tmp_path, variant, seed))
    configs = studies.validate_study(tiny_study())
    accs, missing = studies.collect(configs, lambda v, s: studies.cell_dir(tmp_path, v, s), "dm")
    assert {v: sorted(by_seed) for v, by_seed in accs.items()} == {"dm": [0], "dm+pool": [0]}
    assert missing == ["dm/1"]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"reference": "nope"}, "study.reference='nope' is not a variant"),
        ({"seeds": "0,0"}, "must be distinct"),
        ({"num_nets": 0}, "study.num_nets=0"),
        ({"interval": "z"}, "study.interval='z'"),
        ({"variant_seeds": {"nope": "0"}}, r"study.variant_seeds names \['nope'\], which are not variants"),
        ({"variant_seeds": {"dm+pool": "0,1,2"}}, r"variant 'dm\+pool' has seeds \[2\] that the reference"),
        ({"variant_seeds": {"dm": "1,1"}}, r"study.variant_seeds\['dm'\]='1,1' must be distinct"),
    ],
)
def test_bad_study_values_are_named_before_any_work(tmp_path, values, match):
    with pytest.raises(UserError, match=match):
        studies.run_study(tiny_study(**values), tmp_path, log=lambda _: None)
    assert not (tmp_path / "cells").exists()


def test_an_override_of_an_unknown_key_names_it(tmp_path):
    study = tiny_study()
    study.variants["dm+pool"].pool.unlock()
    study.variants["dm+pool"].pool.presett = "x"
    with pytest.raises(UserError, match=r"study.variants\['dm\+pool'\] sets 'pool.presett'"):
        studies.run_study(study, tmp_path, log=lambda _: None)


def test_seen_architectures_are_what_influenced_the_set():
    archs = ("ConvNet", "ConvNetBN", "MLP", "LeNet", "AlexNet", "VGG11", "ResNet18")
    config = base_config()
    config.dataset, config.model = "fashion_mnist", "ConvNet"
    assert studies.seen_archs(config, archs) == {"ConvNet"}
    config.pool.preset = "main_others"
    assert studies.seen_archs(config, archs) == {"ConvNet", "LeNet", "AlexNet", "VGG11"}
    config.pool.preset = "main_similar"  # its relu / batchnorm / avgpool ConvNet is ConvNetBN
    assert studies.seen_archs(config, archs) == {"ConvNet", "ConvNetBN"}
    config.pool.preset = ""
    config.metadd.enabled, config.metadd.archs = True, "ConvNet,AlexNet,VGG11"
    config.kd.enabled, config.kd.teacher = True, "ConvNet"
    assert studies.seen_archs(config, archs) == {"ConvNet", "AlexNet", "VGG11"}


def test_the_cli_tells_a_study_file_from_a_recipe(tmp_path):
    def cli(*args):
        done = subprocess.run(
            [sys.executable, "-m", "jaxdd.main", *args, f"--workdir={tmp_path}"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        return done.returncode, done.stderr

    rc, err = cli(f"--config={TINY}")
    assert rc == 2 and "is a study file" in err and "--mode=study" in err
    rc, err = cli("--mode=study", "--config=configs/default.py")
    assert rc == 2 and "needs a study file" in err


def test_a_key_added_to_jaxdd_later_at_its_default_keeps_a_finished_cell(finished_study, monkeypatch):
    workdir, _, _ = finished_study
    cell = studies.cell_dir(workdir, "dm", 0)
    config = studies.cell_config(tiny_study(), "dm", 0)
    saved = json.loads((cell / "config.json").read_text())
    older = json.loads(json.dumps(saved))
    del older["teachers"]["seed"]  # as if the cell ran before teachers.seed (default 0) existed
    (cell / "config.json").write_text(json.dumps(older))
    try:
        assert studies.finished(config, cell)
        del older["eval"]["test_size"]  # the study sets it to 100, not the default 0: another cell
        (cell / "config.json").write_text(json.dumps(older))
        with pytest.raises(UserError, match=r"eval\.test_size: '<absent>' → 100"):
            studies.finished(config, cell)
    finally:
        (cell / "config.json").write_text(json.dumps(saved))


def test_a_setting_is_chosen_on_the_validation_split_then_reported_on_fresh_seeds(tmp_path):
    study = tiny_study(seeds="0")
    study.select.variant = "dm+pool"
    study.select.grid = ml_collections.ConfigDict(
        {
            "mlp25": {"pool": {"custom": "main:0.75,MLP:0.25"}},
            "mlp50": {"pool": {"custom": "main:0.5,MLP:0.5"}},
        }
    )
    study.select.seeds, study.select.val_per_class = "7", 20
    logs = []
    result = studies.run_study(study, tmp_path, log=logs.append)
    for name in ("mlp25", "mlp50"):
        grid_cell = tmp_path / "select" / "cells" / name / "seed7"
        config = json.loads((grid_cell / "config.json").read_text())
        assert config["eval"]["split"] == "validation" and config["holdout"]["per_class"] == 20
        assert config["eval"]["archs"] == "ConvNetD1"  # only what scores the grid is evaluated
    # the grid loaded 10 classes x 20 held-out images as its evaluation set, never the test set
    grid_loads = [line for line in logs if line.startswith("Loaded digits") and "validation images" in line]
    assert len(grid_loads) == 2 and all("/ 200 validation images" in line for line in grid_loads)
    assert all("train-minus-val20-seed0" in line for line in grid_loads)
    chosen = json.loads((tmp_path / "selection.json").read_text())
    assert chosen["name"] in ("mlp25", "mlp50") and chosen["archs"] == ["ConvNetD1"]  # unseen by both
    final = json.loads((studies.cell_dir(tmp_path, "dm+pool", 0) / "config.json").read_text())
    assert final["pool"]["custom"] == study.select.grid[chosen["name"]].pool.custom
    assert final["eval"]["split"] == "test" and final["holdout"]["per_class"] == 0
    assert result["selection"] == chosen["text"] and "never computed a test accuracy" in chosen["text"]
    assert chosen["text"] in (tmp_path / "study.md").read_text()


def test_the_choice_goes_over_the_selected_variant_and_beneath_the_ablations_own_overrides():
    study = tiny_study(seeds="0")
    study.variants["dm+pool:mlp"] = {"pool": {"preset": "custom", "custom": "main:0.5,MLP:0.5"}}
    study.variants["dm+pool:scale"] = {"pool": {"preset": "custom", "scale": "main"}}
    study.select.variant, study.select.also = "dm+pool", "dm+pool:mlp,dm+pool:scale"
    chosen = {"name": "mlp25", "overrides": {"pool": {"custom": "main:0.75,MLP:0.25"}, "ipc": 2}}
    assert selection.takers(study) == {"dm+pool", "dm+pool:mlp", "dm+pool:scale"}
    selected = selection.with_choice(study, "dm+pool", 0, chosen)
    assert (selected.pool.custom, selected.ipc) == ("main:0.75,MLP:0.25", 2)
    mlp = selection.with_choice(study, "dm+pool:mlp", 0, chosen)
    assert (mlp.pool.custom, mlp.ipc) == ("main:0.5,MLP:0.5", 2)  # its own key wins, the rest is chosen
    scale = selection.with_choice(study, "dm+pool:scale", 0, chosen)
    assert (scale.pool.custom, scale.pool.scale, scale.ipc) == ("main:0.75,MLP:0.25", "main", 2)
    study.select.also = "dm+pool,nope"
    study.select.grid = ml_collections.ConfigDict({"a": {}, "b": {"ipc": 2}})
    study.select.seeds = "7"
    with pytest.raises(UserError, match=r"study\.select\.also has 'dm\+pool': name other variants"):
        selection.validate(study, list(study.variants))


def test_selection_seeds_must_be_fresh(tmp_path):
    study = tiny_study()
    study.select.variant = "dm+pool"
    study.select.grid = ml_collections.ConfigDict({"a": {}, "b": {"pool": {"custom": "main:0.5,MLP:0.5"}}})
    study.select.seeds = "1,5"
    with pytest.raises(UserError, match=r"overlaps study\.seeds"):
        studies.run_study(study, tmp_path, log=lambda _: None)


def test_a_variant_with_its_own_recipe_distils_with_that_method_and_says_so():
    study = tiny_study()
    dc_recipe = str(ROOT / "configs" / "dc.py") + ":dataset=digits,ipc=1"
    study.variants["dc"] = {"recipe": dc_recipe, "iterations": 2}
    configs = studies.validate_study(study)  # every cell validates, the `recipe` key is not a config key
    dc, dm = configs[("dc", 0)], configs[("dm", 0)]
    expected = load_recipe(dc_recipe)
    assert (dc.method, dc.init, dc.iterations, dm.method) == ("dc", expected.init, 2, "dm")
    assert dc.gm.to_dict() == expected.gm.to_dict() and dc.model == dm.model == "ConvNetW32"  # + overrides
    assert studies.variant_overrides(study, "dc") == {"iterations": 2}
    what, reasons = studies._other_variants(study, configs, dm)
    assert what == ["dc: dc, 2 iterations"]
    assert reasons == [f"dc 2 iterations (recipe {expected.iterations})"]


def test_one_named_cell_of_a_study_with_a_selection_runs_alone(tmp_path):
    # the reference variant waits for no choice: its cell runs without the grid, a grid cell without
    # the study's cells, and a name that is neither is refused naming both lists
    study = tiny_study(seeds="0", cell="dm/0")
    study.select.variant = "dm+pool"
    study.select.grid = ml_collections.ConfigDict(
        {
            "mlp25": {"pool": {"custom": "main:0.75,MLP:0.25"}},
            "mlp50": {"pool": {"custom": "main:0.5,MLP:0.5"}},
        }
    )
    study.select.seeds, study.select.val_per_class = "7", 20
    studies.run_study(study, tmp_path, log=lambda _: None)
    assert (studies.cell_dir(tmp_path, "dm", 0) / "eval.json").is_file()
    assert not (tmp_path / "select").exists() and not studies.cell_dir(tmp_path, "dm+pool", 0).exists()
    study.cell = "mlp25/7"
    studies.run_study(study, tmp_path, log=lambda _: None)
    assert (tmp_path / "select" / "cells" / "mlp25" / "seed7" / "eval.json").is_file()
    assert not (tmp_path / "select" / "cells" / "mlp50").exists()
    study.cell = "dm/9"
    with pytest.raises(UserError, match=r"study.cell='dm/9' is not a cell.*mlp25/7"):
        studies.validate_study(study)
