"""Settings read once (jaxdd.settings): a section's defaults come from its dataclass, the dataclass is
built from the section, and values an older jaxdd spelled differently are read as today's."""

import dataclasses

import pytest

from jaxdd import augment, checkpointing, config, settings
from jaxdd.errors import UserError, require
from jaxdd.methods import distribution_matching as dm
from jaxdd.methods import gradient_matching as gm


@dataclasses.dataclass(frozen=True)
class Toy:
    rate: float = 0.5
    steps: int = 3
    names: tuple[str, ...] = ("a", "b")
    resolved: int = settings.derived(7)

    def __post_init__(self):
        require(self.steps >= 1, f"toy.steps={self.steps!r} must be ≥ 1.")


def test_section_config_holds_the_extra_keys_then_the_field_defaults_but_no_derived_field():
    section = settings.section_config(Toy, enabled=False)
    assert section.to_dict() == {"enabled": False, "rate": 0.5, "steps": 3, "names": ["a", "b"]}


def test_from_section_reads_fields_makes_ints_floats_and_lists_tuples_and_lets_derived_values_win():
    built = settings.from_section(Toy, {"rate": 2, "names": ["x"], "enabled": True, "other": 1}, resolved=9)
    assert built == Toy(rate=2.0, steps=3, names=("x",), resolved=9)
    assert isinstance(built.rate, float)
    assert hash(built) == hash(Toy(rate=2.0, names=("x",), resolved=9))  # a usable jit static argument


def test_from_section_runs_the_checks_of_the_dataclass():
    with pytest.raises(UserError, match=r"toy\.steps=0"):
        settings.from_section(Toy, {"steps": 0})


@pytest.mark.parametrize("cls", [gm.Settings, dm.Settings])
def test_method_settings_round_trip_through_their_config_section(cls):
    assert settings.from_section(cls, settings.section_config(cls)) == cls()


def test_the_base_config_sections_are_the_dataclasses_defaults():
    base = config.base_config()
    assert base.gm.to_dict() == settings.section_config(gm.Settings).to_dict()
    assert base.dm.to_dict() == settings.section_config(dm.Settings).to_dict()
    assert "strategy" not in base.gm and "devices" not in base.dm  # derived at the edge, not keys


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("gm", "lr_net", -1.0, r"gm\.lr_net=-1\.0 must be > 0"),
        ("gm", "metric", "l1", r"gm\.metric='l1' must be one of"),
        ("gm", "dsa_strategy", "", r"gm\.dsa_strategy='' is ambiguous.*gm\.dsa_strategy=dsa"),
        ("dm", "momentum_img", 1.0, r"dm\.momentum_img=1\.0 must lie in \[0, 1\)"),
        ("dm", "dsa_strategy", "colour", r"unknown op"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(section, key, value, message):
    cls = {"gm": gm.Settings, "dm": dm.Settings}[section]
    with pytest.raises(UserError, match=message):
        settings.from_section(cls, {key: value})


def test_the_one_strategy_spelling_resolves_dsa_to_the_datasets_strategy():
    assert augment.resolve_strategy("dsa", "mnist") == augment.default_strategy("mnist")
    assert augment.resolve_strategy("dsa", "cifar10") == augment.STRATEGY_RGB
    assert augment.resolve_strategy("none", "cifar10") == "none"
    assert augment.resolve_strategy("crop_flip", "cifar10") == "crop_flip"


def test_a_saved_config_with_the_older_empty_strategy_compares_equal_to_todays():
    today = config.base_config().to_dict()
    saved = config.base_config().to_dict()
    saved["gm"]["dsa_strategy"] = saved["dm"]["dsa_strategy"] = ""  # how jaxdd wrote them before
    differences = checkpointing.config_differences(
        config.read_saved(saved), config.read_saved(today), ignored_keys=()
    )
    assert differences == {}
    assert saved["gm"]["dsa_strategy"] == "dsa" and saved["dm"]["dsa_strategy"] == "dsa"
    saved["dm"]["dsa_strategy"] = "none"  # a real choice is never rewritten
    assert config.read_saved(saved)["dm"]["dsa_strategy"] == "none"
