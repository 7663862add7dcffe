"""Statistics of a study: distillation variants compared over S paired distillation seeds (DESIGN.md §5.1).

Input shape, shared by every function here: `accs[variant][seed][arch]` is the list of N per-network test
accuracies in [0, 1] of the set distilled with `seed`, evaluated on `arch`. The study is paired: a variant
and the reference are compared seed by seed over the variant's seeds (the differences d_s), with the same
network seeds for a seed, never as two independent samples.

The unit of replication is the distilled set: a network's accuracy is averaged into its set's mean first,
and spreads and intervals are over the S per-set means (the published "mean ± std over sets").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from jaxdd.errors import require

INTERVAL_METHODS = ("t", "bootstrap")
GROUP_RULE = (
    "Differences of group means compare like with like: 'unseen' = archs unseen by both the variant and "
    "the reference, 'seen' = archs seen by either, 'all' = every arch."
)


def paired_seeds(accs: Mapping, *, archs: Sequence[str] | None = None) -> list:
    """The sorted seeds shared by every variant, after checking the study is paired.

    Every variant must hold the same seeds, every (seed, arch) at least one accuracy, and the same number
    N of networks as the other variants for that (seed, arch) (the same network seeds).
    `archs` defaults to the first variant's architectures for its first seed.
    """
    require(len(accs) > 0, "the study holds no variant: pass accs[variant][seed][arch] = [accuracies]")
    first = next(iter(accs))
    seeds = sorted(accs[first])
    require(len(seeds) > 0, f"variant {first!r} holds no seed: add at least one distilled set")
    archs = list(accs[first][seeds[0]]) if archs is None else list(archs)
    for variant, by_seed in accs.items():
        require(
            sorted(by_seed) == seeds,
            f"variant {variant!r} has seeds {sorted(by_seed)}, {first!r} has {seeds}: a paired study "
            "needs the same distillation seeds for every variant",
        )
        for seed in seeds:
            for arch in archs:
                values = by_seed[seed].get(arch, [])
                require(len(values) > 0, f"no accuracy for variant {variant!r}, seed {seed!r}, arch {arch!r}")
                expected = len(accs[first][seed].get(arch, []))
                require(
                    len(values) == expected,
                    f"variant {variant!r}, seed {seed!r}, arch {arch!r} has {len(values)} networks, "
                    f"{first!r} has {expected}: evaluate every variant with the same network seeds",
                )
    return seeds


def set_means(accs: Mapping, *, archs: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per-set means: `out[variant][arch]` is an array [S] of mean accuracy over the N networks, by seed.

    Seeds are in `paired_seeds` order, so index s is the same distilled seed for every variant.
    """
    seeds = paired_seeds(accs, archs=archs)
    archs = list(accs[next(iter(accs))][seeds[0]]) if archs is None else list(archs)
    return {
        variant: {arch: np.array([np.mean(by_seed[s][arch]) for s in seeds], np.float64) for arch in archs}
        for variant, by_seed in accs.items()
    }


def summary(values: Sequence[float]) -> dict:
    """{mean, std, n} of the S per-set means [S]; std with ddof=1 (the published DD statistic).

    For S = 1 the std is NaN (undefined: one set shows no spread between sets), not 0.
    """
    values = np.asarray(values, np.float64)
    require(values.ndim == 1 and values.size > 0, f"summary needs a non-empty [S] array, got {values.shape}")
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return {"mean": float(np.mean(values)), "std": std, "n": int(values.size)}


def group_means(means: Mapping[str, np.ndarray], group: Sequence[str]) -> np.ndarray:
    """Per seed, the mean over the archs in `group` of their per-set means: {arch: [S]} -> [S].

    Every arch weighs the same (not every network), so a group mean does not depend on N.
    """
    require(len(group) > 0, "a group mean needs at least one architecture; got an empty group")
    return np.mean(np.stack([np.asarray(means[arch], np.float64) for arch in group]), axis=0)


def own_groups(archs: Sequence[str], seen: set[str]) -> dict[str, list[str]]:
    """A variant's own split of `archs` (order kept): {'seen', 'unseen', 'all'} -> arch lists."""
    return {
        "seen": [a for a in archs if a in seen],
        "unseen": [a for a in archs if a not in seen],
        "all": list(archs),
    }


def comparable_groups(archs: Sequence[str], seen: set[str], seen_reference: set[str]) -> dict[str, list[str]]:
    """Groups for a paired difference vs the reference (order kept): unseen by both, seen by either, all.

    A variant's pool that covers LeNet makes LeNet seen for it; its 'unseen' difference then leaves LeNet
    out on both sides, so the two group means average the same architectures (see GROUP_RULE).
    """
    return {
        "unseen": [a for a in archs if a not in seen and a not in seen_reference],
        "seen": [a for a in archs if a in seen or a in seen_reference],
        "all": list(archs),
    }


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of [S] values: mean ± t_{(1+c)/2, S-1} · std/√S; (nan, nan) for S < 2."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return math.nan, math.nan
    half = (
        scipy.stats.t.ppf((1 + confidence) / 2, values.size - 1)
        * np.std(values, ddof=1)
        / math.sqrt(values.size)
    )
    return float(np.mean(values) - half), float(np.mean(values) + half)


def interval_name(method: str, *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> str:
    """The text naming an interval method, written beside every interval it produced."""
    require(
        method in INTERVAL_METHODS, f"unknown interval method {method!r}; choose one of {INTERVAL_METHODS}"
    )
    if method == "t":
        return f"paired t (scipy.stats.ttest_rel), {confidence:.0%}"
    return (
        f"paired bootstrap over seeds, percentile (scipy.stats.bootstrap, paired=True, "
        f"{n_resamples} resamples, rng seed {seed}), {confidence:.0%}"
    )


def verdict(low: float, high: float) -> str:
    """'better' if the whole interval is > 0, 'worse' if < 0, 'no difference' if it holds 0 (or touches it),
    'n/a' if it is undefined (NaN: fewer than two seeds)."""
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return "better" if low > 0 else "worse" if high < 0 else "no difference"


def paired_difference(
    values: Sequence[float],
    reference: Sequence[float],
    *,
    method: str = "t",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict:
    """The paired difference values − reference over seeds: [S], [S] -> {differences, mean, low, high, ...}.

    method 't': the interval of mean(d) from `scipy.stats.ttest_rel(values, reference).confidence_interval`,
    mean(d) ± t_{(1+c)/2, S-1} · std(d, ddof=1)/√S. Constant differences (std 0) give scipy's zero-width
    interval [d, d]. method 'bootstrap': the percentile interval of `scipy.stats.bootstrap` with
    `paired=True` (seeds resampled together), a fixed `seed`, so it is deterministic; constant differences
    give [d, d] too. The percentile interval never leaves [min d_s, max d_s] (d = [1, 2, 3] gives [1, 3]),
    so for the few seeds of a DD study it is narrower than the t-interval; 't' is the default for that
    reason. For S < 2 the interval is (nan, nan) and the verdict 'n/a'.
    """
    a, b = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    require(
        a.shape == b.shape and a.ndim == 1, f"paired values need equal [S] shapes, got {a.shape}, {b.shape}"
    )
    name = interval_name(method, confidence=confidence, n_resamples=n_resamples, seed=seed)
    diffs = a - b
    low = high = math.nan
    if a.size >= 2 and method == "t":
        with warnings.catch_warnings():
            # Zero spread makes scipy warn about precision loss before it returns the exact [d, d].
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = scipy.stats.ttest_rel(a, b).confidence_interval(confidence_level=confidence)
        low, high = float(ci.low), float(ci.high)
    elif a.size >= 2:
        ci = scipy.stats.bootstrap(
            (a, b),
            lambda x, y, axis=-1: np.mean(x - y, axis=axis),
            paired=True,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {
        "differences": diffs.tolist(),
        "mean": float(np.mean(diffs)),
        "low": low,
        "high": high,
        "n": int(a.size),
        "interval": name,
        "verdict": verdict(low, high),
    }
