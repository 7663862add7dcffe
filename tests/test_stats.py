"""Study statistics against hand-computed values: per-set means, summaries, group means, paired intervals."""

import math

import numpy as np
import pytest
import scipy.stats

from jaxdd import stats
from jaxdd.errors import UserError

# t_{0.975, 2} in closed form: for 2 degrees of freedom the t quantile is (2p - 1) / sqrt(2 p (1 - p)).
T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.302652729749464


def test_t_quantile_closed_form_is_the_table_value():
    assert abs(T_975_2 - 4.30265273) < 1e-8  # tables print 4.303


def test_set_means_average_networks_and_follow_seed_keys():
    # The reference lists its seeds in the opposite order: pairing must follow the seed, not insertion.
    accs = {
        "a": {0: {"ConvNet": [0.5, 0.7]}, 1: {"ConvNet": [0.2, 0.4]}},
        "b": {1: {"ConvNet": [0.1, 0.1]}, 0: {"ConvNet": [0.25, 0.75]}},
    }
    means = stats.set_means(accs)
    np.testing.assert_allclose(means["a"]["ConvNet"], [0.6, 0.3])
    np.testing.assert_allclose(means["b"]["ConvNet"], [0.5, 0.1])
    assert stats.paired_seeds(accs) == [0, 1]


def test_summary_uses_ddof_1_and_nan_for_one_set():
    result = stats.summary([0.1, 0.2, 0.3])
    assert result["mean"] == pytest.approx(0.2)
    assert result["std"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert result["n"] == 3
    single = stats.summary([0.4])
    assert single["mean"] == 0.4 and math.isnan(single["std"]) and single["n"] == 1


def test_group_means_are_the_per_seed_average_over_archs():
    means = {"A": np.array([0.1, 0.2]), "B": np.array([0.3, 0.6]), "C": np.array([0.5, 1.0])}
    np.testing.assert_allclose(stats.group_means(means, ["A", "B"]), [0.2, 0.4])
    np.testing.assert_allclose(stats.group_means(means, ["A", "B", "C"]), [0.3, 0.6])
    result = stats.summary(stats.group_means(means, ["A", "B"]))
    assert result["mean"] == pytest.approx(0.3)
    assert result["std"] == pytest.approx(math.sqrt(0.02))


def test_t_interval_of_differences_1_2_3():
    result = stats.paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = T_975_2 * 1.0 / math.sqrt(3)  # std of [1, 2, 3] with ddof=1 is 1
    assert result["mean"] == 2.0
    assert result["differences"] == [1.0, 2.0, 3.0]
    assert result["low"] == pytest.approx(2 - half, rel=1e-12)
    assert result["high"] == pytest.approx(2 + half, rel=1e-12)
    assert result["interval"] == "paired t (scipy.stats.ttest_rel), 95%"
    assert result["verdict"] == "no difference"  # [-0.484, 4.484] holds 0


def test_mean_interval_is_the_one_sample_t_interval():
    low, high = stats.mean_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - T_975_2 / math.sqrt(3), 2 + T_975_2 / math.sqrt(3)))
    assert all(math.isnan(x) for x in stats.mean_interval([0.5]))


def test_constant_shift_gives_a_zero_width_interval():
    # Dyadic values, so every difference is exactly 0.125; scipy then returns [0.125, 0.125] (t = inf).
    base = np.array([0.5, 0.75, 0.625])
    for method in ("t", "bootstrap"):
        result = stats.paired_difference(base + 0.125, base, method=method)
        assert (result["low"], result["high"]) == (0.125, 0.125)
        assert result["verdict"] == "better"


def test_verdict_better_worse_no_difference():
    reference = np.zeros(3)
    better = stats.paired_difference(np.array([1.0, 1.1, 0.9]), reference)
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert (better["low"], better["high"]) == pytest.approx((1 - half, 1 + half))
    assert better["verdict"] == "better"
    assert stats.paired_difference(-np.array([1.0, 1.1, 0.9]), reference)["verdict"] == "worse"
    assert stats.paired_difference(np.array([-1.0, 0.0, 1.0]), reference)["verdict"] == "no difference"


def test_verdict_rule_on_interval_ends():
    assert stats.verdict(0.1, 0.2) == "better"
    assert stats.verdict(-0.2, -0.1) == "worse"
    assert stats.verdict(0.0, 1.0) == "no difference"  # an interval that touches 0 does not exclude it
    assert stats.verdict(math.nan, math.nan) == "n/a"


def test_one_seed_gives_n_a():
    for method in ("t", "bootstrap"):
        result = stats.paired_difference([0.5], [0.4], method=method)
        assert result["mean"] == pytest.approx(0.1)
        assert math.isnan(result["low"]) and math.isnan(result["high"])
        assert result["verdict"] == "n/a"


def test_pairing_removes_between_seed_variation():
    # Set means swing by 50 points between seeds, but the variant beats the reference by 1/64 on each seed.
    reference = np.array([0.25, 0.5, 0.75])
    variant = reference + 1 / 64
    assert stats.paired_difference(variant, reference)["verdict"] == "better"
    # The same numbers treated as two independent samples cannot tell them apart.
    unpaired = scipy.stats.ttest_ind(variant, reference).confidence_interval(confidence_level=0.95)
    assert unpaired.low < 0 < unpaired.high


def test_bootstrap_is_deterministic_and_bounded_by_the_differences():
    # Resampled means of [1, 2, 3] lie in [1, 3]; each end has probability 1/27 > 2.5%, so [1, 3] exactly.
    first = stats.paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], method="bootstrap")
    again = stats.paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], method="bootstrap")
    assert first == again
    assert (first["low"], first["high"]) == (1.0, 3.0)
    assert "scipy.stats.bootstrap" in first["interval"] and "paired=True" in first["interval"]


def test_comparable_groups_and_own_groups():
    archs = ["ConvNet", "MLP", "LeNet", "AlexNet"]
    assert stats.own_groups(archs, {"ConvNet", "LeNet"}) == {
        "seen": ["ConvNet", "LeNet"],
        "unseen": ["MLP", "AlexNet"],
        "all": archs,
    }
    assert stats.comparable_groups(archs, {"ConvNet", "LeNet"}, {"ConvNet", "VGG11"}) == {
        "unseen": ["MLP", "AlexNet"],
        "seen": ["ConvNet", "LeNet"],
        "all": archs,
    }


def test_unpaired_studies_are_refused():
    with pytest.raises(UserError, match="same distillation seeds"):
        stats.paired_seeds({"a": {0: {"M": [0.1]}, 1: {"M": [0.1]}}, "b": {0: {"M": [0.1]}}})
    with pytest.raises(UserError, match="same network seeds"):
        stats.paired_seeds({"a": {0: {"M": [0.1, 0.2]}}, "b": {0: {"M": [0.1]}}})
    with pytest.raises(UserError, match="no accuracy"):
        stats.paired_seeds({"a": {0: {"M": [0.1]}}}, archs=["M", "LeNet"])


def test_unknown_interval_method_lists_the_choices():
    with pytest.raises(UserError, match="'t', 'bootstrap'"):
        stats.paired_difference([1.0, 2.0], [0.0, 0.0], method="welch")
