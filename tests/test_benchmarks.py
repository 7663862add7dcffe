"""The benchmark entry point runs in --quick mode and writes well-formed results (no timing asserted)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = (
    "bench_matrix_quick",
    "bench_eval_quick",
    "bench_conv_quick",
    "bench_gradient_matching_quick",
    "bench_torch_dc_quick",
    "bench_profile_quick",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("benchmarks")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _positive(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def _not_run(value) -> bool:
    return isinstance(value, str) and value.startswith(("skipped", "failed"))


def test_quick_benchmarks_write_well_formed_json_and_markdown(results):
    for name in NAMES:
        result = json.loads((results / f"{name}.json").read_text())
        assert result["benchmark"] == name and result["machine"]["jax"] and result["rows"]
        for row in result["rows"]:
            timings = [v for k, v in row.items() if k in ("seconds", "s_per_step")]
            assert all(_positive(t) or _not_run(t) for t in timings), row
        table = (results / f"{name}.md").read_text()
        assert table.count("\n|") >= 1 + len(result["rows"])  # header, separator, one line per row


def test_quick_matrix_has_one_row_per_variant_each_measured_or_skipped_with_a_reason(results):
    rows = json.loads((results / "bench_matrix_quick.json").read_text())["rows"]
    variants = [(r["method"], r["ipc"], r["K"], r["devices"]) for r in rows]
    gm = {(m, 1, 2, d) for m in ("dc", "dsa", "dc_metadd") for d in (1, 2)}
    assert sorted(variants, key=str) == sorted(
        gm | {(m, 1, "-", d) for m in ("dm", "sre2l") for d in (1, 2)}, key=str
    )
    for row in rows:
        assert row["machine"]["jax"] and row["machine"]["cpu_count"], row
        if row["status"] == "ok":
            assert row["machine"]["device_count"] == row["devices"], row
            for key in ("seconds", "images_per_s", "compile_s", "peak_mib"):
                assert _positive(row[key]), (key, row)
        else:
            assert _not_run(row["status"]) and "seconds" not in row, row
    # every method shards its classes, so every variant runs on one and on two devices
    for devices in (1, 2):
        assert {r["method"] for r in rows if r["devices"] == devices and r["status"] == "ok"} == {
            "dc", "dsa", "dm", "sre2l", "dc_metadd"
        }  # fmt: skip


def test_quick_torch_comparison_pairs_each_jaxdd_step_with_torch_or_says_why_not(results):
    rows = json.loads((results / "bench_torch_dc_quick.json").read_text())["rows"]
    keys = [(r["ipc"], r["outer"], r["framework"]) for r in rows]
    assert len(keys) == len(set(keys)) and {k[:2] for k in keys} == {(1, 1), (10, 1), (10, 2)}
    assert {k[2] for k in keys} == {"jaxdd", "torch"}
    torch_installed = importlib.util.find_spec("torch") is not None
    for row in rows:
        if row["framework"] == "jaxdd" or torch_installed:
            assert _positive(row["seconds"]) and _positive(row["images_per_s"]), row
        else:
            assert row["seconds"].startswith("skipped: torch is not installed"), row
        if torch_installed:
            assert _positive(row["jaxdd_over_torch"]), row
    # extrapolated (O·m + (O-1)·(t2 - 2m)): a number, whose sign at quick sizes is noise
    assert all(
        isinstance(r.get("ref_iteration_s"), float | int)
        for r in rows
        if r["outer"] == 2 and _positive(r["seconds"])
    )


def test_quick_profile_splits_the_step_into_kinds_that_add_up_and_finds_its_convolutions(results):
    rows = json.loads((results / "bench_profile_quick.json").read_text())["rows"]
    kinds = {r["what"]: r for r in rows if r["row"] == "kind"}
    assert sum(r["share"] for r in kinds.values()) == pytest.approx(1.0, abs=0.01)
    # a DC step has a forward pass and the gradients of the matching's backward passes
    assert "convolution: forward pass" in {k.replace(" (fused)", "") for k in kinds}
    assert any("backward pass" in k for k in kinds)
    assert any(r["row"] == "instruction" for r in rows)
