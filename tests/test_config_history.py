"""What a key missing from an older run's saved config means (`config.default_values`): the default of a
key added since that reproduces the old behaviour, or the value `ABSENT_MEANS` records where the new
default behaves differently, so that resuming such a run is refused naming the key."""

from jaxdd import checkpointing
from jaxdd.config import ABSENT_MEANS, base_config, default_values


def _older(config) -> dict:
    """The config as a run saved before `metadd.min_map_size` existed."""
    saved = config.to_dict()
    del saved["metadd"]["min_map_size"]
    return saved


def test_a_key_whose_new_default_behaves_differently_is_a_named_difference():
    current = base_config()
    assert current.metadd.min_map_size != ABSENT_MEANS["metadd.min_map_size"]
    differences = checkpointing.config_differences(
        _older(current), current.to_dict(), defaults=default_values()
    )
    assert differences == {"metadd.min_map_size": ("<absent>", current.metadd.min_map_size)}


def test_the_old_behaviour_asked_for_explicitly_is_no_difference():
    current = base_config()
    current.metadd.min_map_size = ABSENT_MEANS["metadd.min_map_size"]
    assert (
        checkpointing.config_differences(_older(current), current.to_dict(), defaults=default_values()) == {}
    )


def test_every_absent_meaning_names_a_real_key():
    flat = checkpointing.flatten_config(base_config())
    assert set(ABSENT_MEANS) <= set(flat)
