"""Config validation and recipes: list-valued keys in every form, finite numbers, iterations=0 for every
method, recipe arguments, recipe files and command-line overrides, each mistake one UserError."""

import math

import jax
import ml_collections
import numpy as np
import pytest

from jaxdd import checkpointing, recipe
from jaxdd.config import apply_arg, base_config, default_values, prepare, resolve_backend, validate
from jaxdd.config_lists import split_floats, split_ints, split_list, split_names
from jaxdd.errors import UserError, is_finite_number

# ---- list-valued keys ----


@pytest.mark.parametrize(
    "value",
    [
        "ConvNet,MLP",
        " ConvNet , MLP ,",
        "('ConvNet','MLP')",
        "('ConvNet', 'MLP',)",
        '["ConvNet", "MLP"]',
        "(ConvNet, MLP)",
        "'ConvNet','MLP'",
        ("ConvNet", "MLP"),
        ["ConvNet", "MLP"],
    ],
)
def test_split_names_reads_a_comma_string_a_tuple_or_list_literal_and_a_real_sequence(value):
    assert split_names(value, key="eval.archs") == ("ConvNet", "MLP")


def test_split_names_of_empty_lists_and_one_name():
    for empty in ("", " ", "()", "[]", (), []):
        assert split_names(empty) == ()
    assert split_names("('ConvNet')") == ("ConvNet",) == split_names("ConvNet")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("('ConvNet',", "eval.archs=\"('ConvNet',\" opens '('"),
        ("[ConvNet", "opens '['"),
        ((1, 2), "holds 1, which is not a name"),
        (5, "eval.archs=5 must be a comma-separated string"),
    ],
)
def test_split_names_names_the_key_and_the_fix(value, expected):
    with pytest.raises(UserError) as error:
        split_names(value, key="eval.archs")
    assert expected in str(error.value)


def test_split_ints_and_floats_read_the_same_forms():
    assert (
        split_ints("500, 1000")
        == split_ints("(500, 1000)")
        == split_ints([500, np.int64(1000)])
        == (500, 1000)
    )
    assert split_floats("1, 1.5") == split_floats("[1, 1.5]") == split_floats((1, 1.5)) == (1.0, 1.5)
    assert split_list(("ConvNet", {"width": 64})) == ("ConvNet", {"width": 64})  # specs kept as they are
    for bad in ("1,x", "(1.5,)", (1.5,), (True,)):
        with pytest.raises(UserError, match=r"eval_at=.* must be comma-separated integers"):
            split_ints(bad, key="eval_at")
    with pytest.raises(UserError, match=r"kd.temperatures='1,x' must be comma-separated numbers"):
        split_floats("1,x", key="kd.temperatures")


def _digits(method="dsa", **top) -> ml_collections.ConfigDict:
    config = base_config()
    config.update({"dataset": "digits", "method": method, "ipc": 1, "iterations": 2, **top})
    config.eval.archs = "ConvNet"
    if method == "sre2l":
        config.model = "ConvNetBN"
        config.init = "noise"
    return config


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("eval", "archs", "('ConvNet','Imaginary')"),
        ("eval", "archs", "['ConvNet', 'Imaginary']"),
        ("metadd", "archs", "('ConvNet','Imaginary')"),
        ("pool", "custom", "('ConvNet:0.5','Imaginary:0.5')"),
    ],
)
def test_every_list_valued_key_names_the_bad_item_of_a_tuple_literal(section, key, value):
    config = _digits()
    config[section][key] = value
    if section == "metadd":
        config.metadd.enabled = True
    if section == "pool":
        config.pool.preset = "custom"
    with pytest.raises(UserError) as error:
        validate(config)
    message = str(error.value)
    assert "Imaginary" in message and "('ConvNet'" not in message and "['ConvNet'" not in message


def test_tuple_literals_pass_validation_for_every_list_valued_key():
    config = _digits(iterations=10, eval_at="(5, 10)")
    config.eval.archs, config.eval.baselines = "('ConvNet', 'MLP')", "['random', 'whole']"
    config.kd.update({"enabled": True, "temperatures": "(1, 1.5)", "val_per_class": 5})
    config.metadd.update({"enabled": True, "archs": "('ConvNet', 'AlexNet')"})
    validate(config)
    config.pool.update({"preset": "custom", "custom": "('ConvNet:0.5', 'AlexNet:0.5')"})
    config.metadd.enabled = False
    validate(config)
    config.eval.baselines = "('random', 'nope')"
    with pytest.raises(UserError, match=r"eval.baselines has 'nope'"):
        validate(config)


def test_a_replaced_section_or_an_unknown_key_is_refused():
    config = _digits()
    config.eval = ml_collections.ConfigDict({"archs": ""})  # what --config.eval="{'archs': ''}" does
    with pytest.raises(UserError, match=r"config.eval lacks augment, .* replaces the whole section"):
        validate(config)
    config = _digits()
    config.eval.arch = "MLP"  # a recipe's typo: ignored without the check
    with pytest.raises(UserError, match=r"config.eval has an unknown key 'arch' \(did you mean 'archs'\?\)"):
        validate(config)
    config = _digits()
    config.iteration = 5
    with pytest.raises(UserError, match=r"config has an unknown key 'iteration' \(did you mean 'iterations'"):
        validate(config)


# ---- finite numbers ----


def test_is_finite_number():
    assert all(is_finite_number(v) for v in (0, 1, -2.5, np.float32(0.1), np.int64(3), 1e300))
    bad = (math.inf, -math.inf, math.nan, np.float32("inf"), True, np.bool_(True), "1", None, 1j)
    assert not any(is_finite_number(v) for v in bad)


@pytest.mark.parametrize("value", [math.inf, math.nan])
@pytest.mark.parametrize(
    ("method", "key"),
    [
        ("dsa", "gm.lr_img"),
        ("dsa", "gm.lr_net"),
        ("dsa", "gm.momentum_img"),
        ("dsa", "eval.lr"),
        ("dsa", "eval.momentum"),
        ("dsa", "eval.weight_decay"),
        ("dm", "dm.lr_img"),
        ("dm", "dm.momentum_img"),
        ("sre2l", "sre2l.lr_img"),
        ("sre2l", "teachers.lr"),
        ("sre2l", "teachers.weight_decay"),
        ("sre2l", "sre2l.beta1"),
        ("sre2l", "sre2l.r_bn"),
        ("sre2l", "sre2l.min_crop_scale"),
        ("sre2l", "sre2l.relabel.temperature"),
        ("sre2l", "sre2l.relabel.lr"),
        ("sre2l", "sre2l.relabel.weight_decay"),
        ("dsa", "kd.alpha"),
        ("dsa", "kd.temperature"),
        ("dsa", "kd.temperature_decay"),
        ("dsa", "kd.min_temperature"),
        ("dsa", "metadd.lambda_var"),
        ("dsa", "metadd.lambda_ai"),
        ("dsa", "metadd.cam_epsilon"),
        ("dsa", "max_abs_pixel"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(method, key, value):
    config = _digits(method)
    config.kd.enabled = key.startswith("kd.")
    config.metadd.enabled = key.startswith("metadd.")
    section, _, name = key.rpartition(".")
    node = config
    for part in filter(None, section.split(".")):
        node = node[part]
    node[name] = value
    with pytest.raises(UserError) as error:
        validate(config)
    assert f"{key}={value!r}" in str(error.value)


def test_non_finite_list_items_and_pool_probabilities_are_refused():
    config = _digits()
    config.kd.update({"enabled": True, "temperatures": "1,inf", "val_per_class": 5})
    with pytest.raises(UserError, match=r"kd.temperatures='1,inf' has inf"):
        validate(config)
    config = _digits()
    config.pool.update({"preset": "custom", "custom": "ConvNet:inf"})
    with pytest.raises(UserError, match="probability inf; every probability must be > 0 and finite"):
        validate(config)


# ---- iterations=0: every method exports its initialisation ----


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "sre2l"])
def test_iterations_0_is_valid_for_every_distillation_method(method):
    validate(_digits(method, iterations=0))


@pytest.mark.parametrize("method", ["dm", "sre2l"])
def test_iterations_0_exports_the_initialisation(tmp_path, method):
    from jaxdd import methods, synthetic
    from jaxdd.data import load
    from jaxdd.run import run
    from jaxdd.seeding import purpose_key

    config = _digits(method, iterations=0)
    config.eval.archs = ""  # nothing to evaluate: no teacher, no compile beyond the initialisation
    config.compilation_cache_dir = ""
    run(config, tmp_path, log=lambda line: None)
    exported, _ = synthetic.load_npz(tmp_path / "synset.npz")
    expected = methods.get_method(method).init(config, load("digits"), purpose_key(config.seed, "distill"))
    np.testing.assert_array_equal(exported.images, expected.images)


# ---- recipe arguments ----


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("bogus=1", "Recipe argument 'bogus=1' names an unknown key 'bogus'"),
        ("eval.nope=1", "unknown key 'eval.nope'"),
        ("ipc=abc", "Recipe argument ipc='abc': ipc takes an integer (default 10), e.g. ipc=10."),
        ("ipc=1.5", "ipc takes an integer"),
        ("gm.lr_img=fast", "gm.lr_img takes a float"),
        ("eval=1", "'eval' is a section"),
        ("resume_with_changed_config=maybe", "resume_with_changed_config is true or false"),
        ("ipc", "Recipe argument 'ipc' is not key=value"),
    ],
)
def test_a_bad_recipe_argument_is_one_user_error(arg, expected):
    with pytest.raises(UserError) as error:
        apply_arg(base_config(), arg)
    assert expected in str(error.value)


def test_recipe_arguments_convert_to_the_type_of_the_default():
    config = apply_arg(base_config(), "ipc=3,gm.lr_img=0.5,resume_with_changed_config=yes,eval.archs=MLP")
    assert (config.ipc, config.gm.lr_img, config.resume_with_changed_config) == (3, 0.5, True)
    assert config.eval.archs == "MLP"
    assert apply_arg(base_config(), "kd.enabled=off").kd.enabled is False


# ---- recipe files ----


def _write(tmp_path, text, name="recipe.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "arg", "expected"),
    [
        ("def get_config(:\n    pass\n", "", "syntax error at line 1"),
        ("X = 1\n", "", "defines no get_config()"),
        ("def get_config(arg=''):\n    pass\n", "", "get_config returned NoneType"),
        ("def get_config(arg=''):\n    return {'ipc': 1}\n", "", "get_config returned dict"),
        ("def get_config(arg=''):\n    raise RuntimeError('boom')\n", "", "RuntimeError: boom (line 2 of"),
        (
            "import no_such_module_xyz\n",
            "",
            "ModuleNotFoundError: No module named 'no_such_module_xyz' (line 1",
        ),
        ("def get_config():\n    pass\n", ":ipc=1", "takes no argument, so ':ipc=1' cannot be passed"),
        ("def get_config(arg):\n    pass\n", "", "needs an argument"),
        (
            "from jaxdd.config import apply_arg, base_config\n"
            "def get_config(arg=''):\n    return apply_arg(base_config(), arg)\n",
            ":bogus=1",
            "names an unknown key 'bogus'",
        ),
    ],
)
def test_a_broken_recipe_file_is_one_user_error_naming_it(tmp_path, text, arg, expected):
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as error:
        recipe.load_recipe(path + arg)
    assert str(error.value).startswith(f"--config={path}{arg}: ")
    assert expected in str(error.value)


def test_a_missing_recipe_or_a_folder_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match=r"there is no file .*e.g. --config=configs/default.py"):
        recipe.load_recipe(str(tmp_path / "nope.py"))
    with pytest.raises(UserError, match=r"closest name there: configs/default.py"):
        recipe.load_recipe("configs/defualt.py")
    with pytest.raises(UserError, match="is a folder; name a recipe file"):
        recipe.load_recipe(str(tmp_path))
    with pytest.raises(UserError, match="--config is empty"):
        recipe.load_recipe("")


def test_a_recipe_loads_locked_with_its_argument():
    config = recipe.load_recipe("configs/default.py:ipc=2")
    assert config.ipc == 2 and config.method == "dsa"
    with pytest.raises(AttributeError):
        config.new_key = 1  # locked, as ml_collections locks it: an override cannot add a key


# ---- command-line overrides ----


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (
            "--config.nonexistent=1",
            "--config.nonexistent=1: the config has no key 'nonexistent'; its keys are",
        ),
        ("--config.eval.arch=MLP", "config.eval has no key 'arch'; .* Did you mean --config.eval.archs\\?"),
        ("--noconfig.kd.enabeld", "Did you mean --config.kd.enabled\\?"),
        ("--config.eval=1", "config.eval is a section, not a value"),
        ("--config.ipc.x=1", "config.ipc is a value \\(10\\), not a section"),
    ],
)
def test_an_unknown_or_misplaced_override_key_is_one_user_error(arg, expected):
    with pytest.raises(UserError, match=expected):
        recipe.check_overrides(base_config(), ["jaxdd", "--config=configs/default.py", "--workdir=x", arg])


def test_valid_overrides_pass_the_key_check():
    argv = ["jaxdd", "--config.ipc=1", "--config.eval.archs=MLP", "--config.eval={'archs': ''}", "--mode=x"]
    recipe.check_overrides(base_config(), argv)


def test_absl_value_errors_gain_the_type_and_an_example():
    config = base_config()
    assert recipe.explain_value_error(config, "flag --config.ipc=1.5: invalid literal") == (
        "--config.ipc='1.5' is not an integer: config.ipc takes an integer (default 10), e.g. "
        "--config.ipc=10."
    )
    assert "takes a number (default 0.1)" in recipe.explain_value_error(
        config, "flag --config.gm.lr_img=x: y"
    )
    assert "takes true or false" in recipe.explain_value_error(config, "flag --config.kd.enabled=maybe: y")
    assert recipe.explain_value_error(config, "flag --mode=x: not one of") is None


def test_a_data_dir_that_is_not_a_folder_is_refused(tmp_path):
    config = base_config()
    config.eval.archs = ""
    config.data_dir = str(tmp_path / "missing")
    with pytest.raises(UserError, match=r"data_dir='.*missing' is not a folder"):
        validate(config)
    config.data_dir = str(tmp_path)
    validate(config)


# ---- the backend's choices, resolved once at the edge ----

BACKEND_KEYS = ("conv.implementation", "eval.parallel", "gm.parallel", "gm.class_chunk", "gm.class_loop")


def _values(config, keys=BACKEND_KEYS):
    flat = checkpointing.flatten_config(config)
    return tuple(flat[key] for key in keys)


def test_prepare_records_the_backends_choices_in_the_config_and_validate_changes_nothing():
    config = base_config()
    config.dataset, config.eval.archs = "digits", "ConvNet"
    assert _values(config) == ("auto", "auto", "auto", -1, "auto")
    before = config.to_dict()
    validate(config)
    assert config.to_dict() == before
    assert prepare(config) is config
    assert _values(config) == _values(resolve_backend(base_config(), jax.default_backend()))
    assert "auto" not in _values(config) and -1 not in _values(config)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("cpu", ("canonical", "loop", "loop", 1, "map")), ("gpu", ("lax", "vmap", "vmap", 10, "map"))],
)
def test_resolve_backend_fills_only_the_keys_left_at_their_marker(backend, expected):
    assert _values(resolve_backend(base_config(), backend)) == expected
    config = base_config()
    config.gm.class_chunk, config.eval.parallel = 0, "vmap"  # chosen: kept
    resolve_backend(config, backend)
    assert (config.gm.class_chunk, config.eval.parallel) == (0, "vmap")
    assert resolve_backend(resolve_backend(base_config(), backend), "tpu") == resolve_backend(
        base_config(), backend
    )
    partial = ml_collections.ConfigDict({"gm": {"parallel": "auto"}})  # tools build partial configs
    assert resolve_backend(partial, backend).to_dict() == {"gm": {"parallel": expected[2]}}


def test_an_older_runs_saved_auto_and_missing_conv_section_are_no_difference():
    """config.json of a run before the choices were recorded: 'auto' / -1, and no `conv` section."""
    old = base_config().to_dict()
    del old["conv"]
    recorded = resolve_backend(base_config()).to_dict()  # what validate records now
    differences = checkpointing.config_differences(old, recorded, ignored_keys=(), defaults=default_values())
    assert set(differences) == {"eval.parallel", "gm.parallel", "gm.class_chunk", "gm.class_loop"}
    read = resolve_backend(old)  # as run.py and study.py read a saved config
    assert checkpointing.config_differences(read, recorded, ignored_keys=(), defaults=default_values()) == {}
