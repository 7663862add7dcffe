"""The study report (DESIGN.md §5.1): study.json, study.md and study.png from paired per-network accuracies.

Input: `accs[variant][seed][arch]` = N test accuracies in [0, 1] (see `jaxdd.stats`), `archs` (evaluation
order), `seen[variant]` = the archs that influenced that variant's set; the rest of `archs` is unseen by it.
A variant may hold fewer seeds than the reference (e.g. ablations beside a headline comparison given more
seeds); its row and its differences then use its own seeds, each paired with the reference's same seed.
A variant's own group means use its own split; a difference vs the reference uses `stats.comparable_groups`
(unseen by both, seen by either, all), so both sides average the same architectures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxdd import stats
from jaxdd.errors import require

SEEN_MARK = "†"
BAR_STYLE = {"capsize": 2, "edgecolor": "black", "linewidth": 0.5}
SEEN_LEGEND = "seen (it influenced the set: distillation model, pool member, MetaDD auxiliary, KD teacher)"


def _group_entry(means: Mapping[str, np.ndarray], group: list[str]) -> dict:
    """Summary of a group mean [S]; an empty group (e.g. every arch seen) has NaN mean and std."""
    values = stats.group_means(means, group) if group else np.array([])
    empty = {"mean": math.nan, "std": math.nan, "n": 0}
    return {"archs": group, **(stats.summary(values) if group else empty), "set_means": values.tolist()}


def _difference(means, ref_means, group: list[str], *, method: str) -> dict:
    """Paired difference of the group means [S] vs the reference; 'n/a' for an empty group."""
    if not group:
        return {"archs": [], "mean": math.nan, "low": math.nan, "high": math.nan, "verdict": "n/a"}
    pair = stats.group_means(means, group), stats.group_means(ref_means, group)
    return {"archs": group, **stats.paired_difference(*pair, method=method)}


def _variant_results(by_seed: Mapping, means: Mapping, seeds: list, archs: list[str], seen: set[str]) -> dict:
    """One variant's per-arch summaries (with the per-set means and network stds [S]) and own groups."""
    groups = stats.own_groups(archs, seen)
    entries = {
        a: {
            **stats.summary(means[a]),
            "set_means": means[a].tolist(),
            "network_std": [stats.summary(by_seed[s][a])["std"] for s in seeds],
            "networks": len(by_seed[seeds[0]][a]),
        }
        for a in archs
    }
    summaries = {g: _group_entry(means, group) for g, group in groups.items()}
    return {"seen": groups["seen"], "unseen": groups["unseen"], "archs": entries, "groups": summaries}


def compute_study(
    accs: Mapping,
    *,
    archs: Sequence[str],
    seen: Mapping[str, set[str]],
    reference: str,
    protocol: str,
    reduced: bool = False,
    selection: str | None = None,
    method: str = "t",
) -> dict:
    """Everything the report shows, as a dict of lists and scalars (NaN where undefined).

    seeds: the reference's; variant_seeds[variant]: that variant's S seeds (its row and differences);
    results[variant]['archs'][arch] = {mean, std (ddof=1 over the S sets), n, set_means [S], network_std [S]};
    results[variant]['groups'][g] for g in seen/unseen/all (the variant's own split); differences[variant]
    for every variant ≠ reference: per arch and per comparable group, the paired difference of per-set
    means with its 95% interval (`method` 't' or 'bootstrap', see `stats.paired_difference`) and verdict.
    """
    archs = list(archs)
    require(reference in accs, f"reference {reference!r} is not a variant; choose one of {list(accs)}")
    missing = [v for v in accs if v not in seen]
    require(not missing, f"seen has no entry for {missing}: give every variant its set (empty if none)")
    variant_seeds = {v: stats.paired_seeds({v: accs[v]}, archs=archs) for v in accs}
    for v, seeds in variant_seeds.items():
        paired_reference = {s: accs[reference].get(s, {}) for s in seeds}
        missing = [s for s in seeds if s not in accs[reference]]
        require(
            not missing,
            f"variant {v!r} has seeds {missing} that the reference {reference!r} lacks: every variant's "
            "seeds must be among the reference's, so each set is paired with the reference's of its seed",
        )
        stats.paired_seeds({reference: paired_reference, v: accs[v]}, archs=archs)  # same networks
    means = {v: stats.set_means({v: accs[v]}, archs=archs)[v] for v in accs}
    results = {
        v: _variant_results(by_seed, means[v], variant_seeds[v], archs, set(seen[v]))
        for v, by_seed in accs.items()
    }

    def reference_means(seeds: list) -> dict[str, np.ndarray]:
        """The reference's per-set means [S] over `seeds` (a variant's own), in that order."""
        return stats.set_means({reference: {s: accs[reference][s] for s in seeds}}, archs=archs)[reference]

    differences = {}
    for v in accs:
        if v == reference:
            continue
        ref_means = reference_means(variant_seeds[v])
        differences[v] = {
            "archs": {a: stats.paired_difference(means[v][a], ref_means[a], method=method) for a in archs},
            "groups": {
                g: _difference(means[v], ref_means, group, method=method)
                for g, group in stats.comparable_groups(archs, set(seen[v]), set(seen[reference])).items()
            },
        }
    return {
        "protocol": protocol,
        "reduced": bool(reduced),
        "selection": selection,
        "interval": stats.interval_name(method),
        "group_rule": stats.GROUP_RULE,
        "reference": reference,
        "variants": list(accs),
        "seeds": list(variant_seeds[reference]),
        "variant_seeds": {v: list(seeds) for v, seeds in variant_seeds.items()},
        "archs": archs,
        "results": results,
        "differences": differences,
    }


def _protocol_label(study: dict) -> str:
    return f"protocol{' (reduced)' if study['reduced'] else ''}: {study['protocol']}"


def _pct(mean: float, std: float = math.nan) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")


def _delta(d: dict) -> list[str]:
    """[Δ, interval, verdict] cells, in points."""
    interval = "n/a" if math.isnan(d["low"]) else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
    return ["n/a" if math.isnan(d["mean"]) else f"{100 * d['mean']:+.2f}", interval, d["verdict"]]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def headline(study: dict) -> str:
    """The first line of study.md: every variant's unseen mean and its paired Δ vs the reference (with
    each variant's number of seeds S where they differ, as each row averages its own sets)."""
    parts = []
    counts = {v: len(seeds) for v, seeds in study["variant_seeds"].items()}
    for v in study["variants"]:
        mean = study["results"][v]["groups"]["unseen"]["mean"]
        text = f"{v} {_pct(mean)}" + ("" if math.isnan(mean) else " %")
        text += f" (S = {counts[v]})" if len(set(counts.values())) > 1 else ""
        if v == study["reference"]:
            parts.append(text + " (reference)")
            continue
        d = study["differences"][v]["groups"]["unseen"]
        delta, interval, verdict = _delta(d)
        if d["archs"]:
            text += f", Δ {delta} pts {interval} over archs unseen by both ({', '.join(d['archs'])})"
        parts.append(f"{text}{'' if d['archs'] else ', no arch unseen by both'}: **{verdict}**")
    reduced = ", reduced protocol" if study["reduced"] else ""
    lead = f"**Headline: the unseen mean** (the headline of a cross-architecture claim{reduced}): "
    return lead + "; ".join(parts) + "."


def _fewest_seeds(study: dict) -> int:
    return min(len(seeds) for seeds in study["variant_seeds"].values())


def _seeds_text(study: dict) -> str:
    """'S = 3 paired seeds [0, 1, 2]', or per group of variants when some hold fewer seeds."""
    by_seeds: dict[tuple, list[str]] = {}
    for v, seeds in study["variant_seeds"].items():
        by_seeds.setdefault(tuple(seeds), []).append(v)
    if len(by_seeds) == 1:
        return f"S = {len(study['seeds'])} paired seeds {study['seeds']}"
    groups = "; ".join(f"S = {len(s)} {list(s)} for {', '.join(vs)}" for s, vs in by_seeds.items())
    return f"paired seeds ({groups}): each variant's row and differences use its own seeds"


def study_markdown(study: dict) -> str:
    """study.md: headline, protocol, interval, selection, then accuracies (variant × arch) and differences."""
    archs, res, ref, label = study["archs"], study["results"], study["reference"], _protocol_label(study)
    lines = [headline(study), "", f"- {label[0].upper()}{label[1:]}"]
    lines.append(f"- Interval: {study['interval']}, over {_seeds_text(study)}")
    lines += [f"- Selection: {study['selection']}"] if study["selection"] else []
    several = _fewest_seeds(study) > 1
    spread = "mean ± std (ddof=1) over sets" if several else "mean of one set (S = 1: no std)"
    lines += [
        f"- {study['group_rule']}",
        "",
        f"Test accuracy (%), {spread}; {SEEN_MARK} = {SEEN_LEGEND}; {label}.",
        "",
    ]
    lines += [
        _row(["variant", *archs, "seen mean", "unseen mean", "all mean"]),
        "|---" * (len(archs) + 4) + "|",
    ]
    for v in study["variants"]:
        cells = [
            _pct(res[v]["archs"][a]["mean"], res[v]["archs"][a]["std"])
            + (f" {SEEN_MARK}" if a in res[v]["seen"] else "")
            for a in archs
        ]
        groups = res[v]["groups"]
        lines.append(_row([v, *cells, *(_pct(groups[g]["mean"], groups[g]["std"]) for g in groups)]))
    lines += ["", f"Paired differences vs {ref} (points), {study['interval']}; {label}.", ""]
    lines += [_row(["variant", "over", "Δ (pts)", "95% interval", "verdict"]), "|---" * 5 + "|"]
    names = {"unseen": "unseen by both", "seen": "seen by either", "all": "all"}
    for v, diff in study["differences"].items():
        for a in archs:
            who = [n for n in (v, ref) if a in res[n]["seen"]]
            status = "seen by " + " and ".join(who) if who else "unseen by both"
            lines.append(_row([v, f"{a} ({status})", *_delta(diff["archs"][a])]))
        for g, d in diff["groups"].items():
            lines.append(_row([v, f"**{names[g]}: {', '.join(d['archs']) or 'none'}**", *_delta(d)]))
    return "\n".join(lines) + "\n"


def _whisker(entry: dict, single: bool) -> list[list[float]] | None:
    """[[below], [above]] in points: the 95% t-interval of the mean over sets, or ± network std for S = 1."""
    if single:
        half = entry.get("network_std", [math.nan])[0]
        return None if math.isnan(half) else [[100 * half], [100 * half]]
    low, high = stats.mean_interval(entry["set_means"])
    return [[100 * (entry["mean"] - low)], [100 * (high - entry["mean"])]]


def plot_study(study: dict, path: str | Path) -> None:
    """study.png: grouped bars per arch (one per variant, hatched where seen) plus unseen/all mean bars.

    Bar = mean over the variant's S sets; whiskers = 95% t-interval of that mean (`stats.mean_interval`),
    or for a variant with S = 1 ± std over the set's N networks (group bars then get none). The title says
    which.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    archs, res, variants = study["archs"], study["results"], study["variants"]
    slots, width = [*archs, "unseen mean (own)", "all mean"], 0.8 / len(variants)
    counts = sorted({len(seeds) for seeds in study["variant_seeds"].values()})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(slots) + 2), 4))
    for i, v in enumerate(variants):
        single = len(study["variant_seeds"][v]) < 2
        for j, slot in enumerate(slots):
            entry = res[v]["archs"][slot] if slot in archs else res[v]["groups"][slot.split()[0]]
            if not math.isnan(entry["mean"]):
                hatch = "//" if slot in res[v]["seen"] else None
                x, whisker = j - 0.4 + (i + 0.5) * width, _whisker(entry, single)
                ax.bar(
                    x, 100 * entry["mean"], width, yerr=whisker, color=f"C{i % 10}", hatch=hatch, **BAR_STYLE
                )
    ax.axvline(len(archs) - 0.5, color="grey", linestyle=":")
    ax.set_xticks(range(len(slots)), slots, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    interval, network = "95% t-interval of the mean over sets", "± std over networks (S = 1)"
    whisker = network if counts[-1] < 2 else interval if counts[0] >= 2 else f"{interval} ({network})"
    reduced = ", reduced protocol" if study["reduced"] else ""
    sets = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set_title(f"Mean over {sets} sets; whiskers: {whisker}{reduced}", fontsize=9)
    handles = [Patch(color=f"C{i % 10}", label=v) for i, v in enumerate(variants)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="seen by that variant"))
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_study(study: dict, workdir: str | Path) -> None:
    """Writes a `compute_study` result as study.json (NaN as null), study.md and study.png in `workdir`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # NaN (undefined std or interval) becomes null, so the file is strict JSON.
    safe = json.loads(json.dumps(study), parse_constant=lambda _: None)
    (workdir / "study.json").write_text(json.dumps(safe, indent=2, allow_nan=False) + "\n")
    (workdir / "study.md").write_text(study_markdown(study))
    plot_study(study, workdir / "study.png")
