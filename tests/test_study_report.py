"""The study report: files, headline, seen marking, the reduced label and the comparable-group rule."""

import json
import math

import pytest

from jaxdd import study_report
from jaxdd.errors import UserError

ARCHS = ["ConvNet", "MLP", "LeNet", "AlexNet"]
SEEN = {"base": {"ConvNet"}, "pool": {"ConvNet", "LeNet"}}
# Per-set means of the reference by seed; "pool" adds a per-seed shift.
BASE = {"ConvNet": [0.60, 0.62, 0.58], "MLP": [0.30, 0.32, 0.28], "LeNet": [0.40, 0.42, 0.38],
        "AlexNet": [0.20, 0.22, 0.18]}  # fmt: skip
SHIFT = {"ConvNet": [0.0, 0.0, 0.0], "MLP": [0.05, 0.06, 0.04], "LeNet": [-0.10, -0.10, -0.10],
         "AlexNet": [0.03, 0.03, 0.03]}  # fmt: skip


def _accs(seeds=(0, 1, 2)) -> dict:
    """Two networks per set at set mean ± 0.01, so each set mean is the table value above."""

    def variant(shift: bool) -> dict:
        return {
            s: {a: [BASE[a][s] + SHIFT[a][s] * shift + d for d in (-0.01, 0.01)] for a in ARCHS}
            for s in seeds
        }

    return {"base": variant(False), "pool": variant(True)}


def _study(**options):
    defaults = dict(archs=ARCHS, seen=SEEN, reference="base", protocol="DC protocol, 300 epochs, N = 2")
    return study_report.compute_study(_accs(options.pop("seeds", (0, 1, 2))), **{**defaults, **options})


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith(f"| {first_cell} |")
    ]


def test_files_exist_and_parse(tmp_path):
    study_report.write_study(_study(selection="ipc chosen on a held-out validation split"), tmp_path)
    data = json.loads((tmp_path / "study.json").read_text(), parse_constant=pytest.fail)
    assert data["seeds"] == [0, 1, 2] and data["reference"] == "base"
    assert data["results"]["pool"]["archs"]["LeNet"]["set_means"] == pytest.approx([0.30, 0.32, 0.28])
    assert data["results"]["base"]["archs"]["MLP"]["std"] == pytest.approx(0.02)
    assert data["results"]["base"]["archs"]["MLP"]["networks"] == 2
    assert data["differences"]["pool"]["archs"]["MLP"]["mean"] == pytest.approx(0.05)
    assert data["differences"]["pool"]["archs"]["ConvNet"]["verdict"] == "no difference"
    assert data["differences"]["pool"]["archs"]["LeNet"]["verdict"] == "worse"
    assert "base" not in data["differences"]
    assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "study.md").read_text()
    assert "- Selection: ipc chosen on a held-out validation split" in markdown
    assert "paired t (scipy.stats.ttest_rel), 95%" in markdown


def test_headline_comes_first_with_unseen_means_and_verdict():
    first_line = study_report.study_markdown(_study()).splitlines()[0]
    assert "unseen mean" in first_line
    assert "base 30.0 %" in first_line  # (0.30 + 0.40 + 0.20) / 3 over MLP, LeNet, AlexNet
    assert "pool 29.0 %" in first_line  # (0.35 + 0.23) / 2 over MLP, AlexNet
    # Over MLP and AlexNet per seed: [0.04, 0.045, 0.035], mean 0.04, std 0.005, t-interval ± t·0.005/√3.
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * 0.005 / math.sqrt(3)
    assert f"Δ +4.00 pts [+{100 * (0.04 - half):.2f}, +{100 * (0.04 + half):.2f}]" in first_line
    assert "[+2.76, +5.24]" in first_line
    assert "(MLP, AlexNet): **better**" in first_line


def test_seen_cells_are_marked_per_variant():
    markdown = study_report.study_markdown(_study())
    header = _table_rows(markdown, "variant")[0]
    for variant, seen in SEEN.items():
        (row,) = _table_rows(markdown, variant)[:1]
        for arch in ARCHS:
            assert row[header.index(arch)].endswith("†") == (arch in seen), (variant, arch)
    assert "† = seen" in markdown


def test_reduced_label_on_every_table():
    reduced = study_report.study_markdown(_study(reduced=True)).splitlines()
    captions = [reduced[i - 2] for i, line in enumerate(reduced) if line.startswith("| variant |")]
    assert len(captions) == 2
    assert all("protocol (reduced)" in caption for caption in captions)
    assert "Protocol (reduced)" in "\n".join(reduced)
    assert "reduced protocol" in reduced[0]  # the headline too
    assert "reduced" not in study_report.study_markdown(_study(reduced=False))


def test_unseen_difference_uses_archs_unseen_by_both():
    study = _study()
    unseen = study["differences"]["pool"]["groups"]["unseen"]
    assert unseen["archs"] == ["MLP", "AlexNet"]  # LeNet is seen by pool's model pool, so left out
    assert unseen["mean"] == pytest.approx(0.04)
    # The own-split unseen means would compare different archs and give the opposite sign: 29.0 - 30.0.
    own = study["results"]
    assert own["pool"]["groups"]["unseen"]["mean"] - own["base"]["groups"]["unseen"]["mean"] == pytest.approx(
        -0.01
    )
    seen = study["differences"]["pool"]["groups"]["seen"]
    assert seen["archs"] == ["ConvNet", "LeNet"]
    assert seen["mean"] == pytest.approx(-0.05)  # (0 - 0.10) / 2
    markdown = study_report.study_markdown(study)
    assert "archs unseen by both the variant and the reference" in markdown
    assert "| pool | **unseen by both: MLP, AlexNet** | +4.00 | [+2.76, +5.24] | better |" in markdown
    assert "| pool | LeNet (seen by pool) |" in markdown


def test_bootstrap_method_is_named(tmp_path):
    study = _study(method="bootstrap")
    assert "scipy.stats.bootstrap" in study["interval"]
    assert study["differences"]["pool"]["groups"]["unseen"]["interval"] == study["interval"]


def test_one_seed_report_says_n_a(tmp_path):
    study = _study(seeds=(0,))
    study_report.write_study(study, tmp_path)
    data = json.loads((tmp_path / "study.json").read_text(), parse_constant=pytest.fail)
    assert data["results"]["base"]["archs"]["MLP"]["std"] is None
    assert data["differences"]["pool"]["groups"]["unseen"]["verdict"] == "n/a"
    markdown = (tmp_path / "study.md").read_text()
    assert "S = 1: no std" in markdown and "**n/a**" in markdown.splitlines()[0]


def test_every_variant_needs_a_seen_entry():
    with pytest.raises(UserError, match="seen has no entry"):
        _study(seen={"base": {"ConvNet"}})
    with pytest.raises(UserError, match="reference 'kd'"):
        _study(reference="kd")


def test_variant_that_saw_every_arch_has_no_unseen_headline():
    study = _study(seen={"base": {"ConvNet"}, "pool": set(ARCHS)})
    assert study["differences"]["pool"]["groups"]["unseen"]["archs"] == []
    assert "pool n/a, no arch unseen by both: **n/a**" in study_report.headline(study)


def test_a_variant_with_fewer_seeds_is_paired_over_its_own(tmp_path):
    accs = _accs()
    del accs["pool"][2]  # the reference keeps seeds 0-2 (e.g. more seeds for the headline comparison)
    defaults = dict(archs=ARCHS, seen=SEEN, reference="base", protocol="DC protocol")
    study = study_report.compute_study(accs, **defaults)
    assert study["variant_seeds"] == {"base": [0, 1, 2], "pool": [0, 1]}
    assert study["results"]["base"]["archs"]["MLP"]["mean"] == pytest.approx(0.30)  # (0.30+0.32+0.28)/3
    assert study["results"]["pool"]["archs"]["MLP"]["mean"] == pytest.approx(0.365)  # (0.35+0.38)/2
    mlp = study["differences"]["pool"]["archs"]["MLP"]
    assert mlp["differences"] == pytest.approx([0.05, 0.06]) and mlp["n"] == 2
    study_report.write_study(study, tmp_path)
    markdown = (tmp_path / "study.md").read_text()
    assert "S = 3 [0, 1, 2] for base; S = 2 [0, 1] for pool" in markdown
    first = markdown.splitlines()[0]
    # base's own unseen (MLP, LeNet, AlexNet) over 3 seeds: 0.30; pool's (MLP, AlexNet) over 2: (0.365 +
    # 0.24) / 2; Δ over MLP and AlexNet, seeds 0-1: ((0.05 + 0.03) / 2 + (0.06 + 0.03) / 2) / 2
    assert "base 30.0 % (S = 3) (reference)" in first and "pool 30.2 % (S = 2), Δ +4.25 pts" in first
    assert "(S = " not in study_report.headline(_study())  # equal seeds: no per-variant S
    accs["pool"][3] = accs["pool"][0]
    with pytest.raises(UserError, match=r"variant 'pool' has seeds \[3\] that the reference 'base' lacks"):
        study_report.compute_study(accs, **defaults)
