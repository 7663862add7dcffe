"""The accelerator paths without an accelerator, and the accelerator suite itself (issue 18).

The loops an accelerator runs (K networks vmapped, every class in one vmap, groups of classes under
lax.map) give the CPU's results; on an accelerator, its step equals the CPU's at 'highest' precision and
points the same way at the default (TF32) one (on a CPU-only machine both sides are the CPU). The suite's
--quick mode runs as it would on a bare GPU machine: ml-collections and tensorflow-datasets do not import,
ml-collections comes from a wheel; every part is measured or skipped with a reason, the deadline skips
parts and a part over its budget is cut off without stopping the suite.
"""

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from benchmarks.accelerator import part_timeout
from jaxdd.config import resolve_backend
from jaxdd.methods import gradient_matching as gm

ROOT = Path(__file__).resolve().parents[1]
TINY = {"width": 8, "depth": 1}

pytestmark = pytest.mark.usefixtures("fast_compilation")


# ---- the accelerator's loops, on the CPU ----


def _config(method: str, model: dict) -> ml_collections.ConfigDict:
    """DC or DSA on 3 classes, IPC 2, K = 2 networks, outer 2 (two matches and an inner training)."""
    config = ml_collections.ConfigDict(
        {
            "method": method,
            "dataset": "blobs",
            "model": model,
            "ipc": 2,
            "init": "real",
            "seed": 0,
            "devices": 0,
        }
    )
    config.gm = gm.default_config()
    config.gm.update(outer_loop=2, inner_loop=1, batch_real=4, batch_train=4, num_nets=2)
    if method == "dsa":
        config.gm.dsa_strategy = "color_crop_flip"
    return config


def _step(config, real):
    """(new images, metrics) of one outer step from the config's first state."""
    state = gm.init(config, real, jax.random.PRNGKey(0))
    new, metrics = gm.make_step(config, real, log=lambda _: None)(state, real)
    return np.asarray(new.images), {k: float(v) for k, v in metrics.items()}, np.asarray(state.images)


LOOPS = {  # how classes and networks are iterated: the backends' choices, and all classes in groups of 2
    "cpu": "cpu",
    "gpu": "gpu",
    "groups of 2 under lax.map": {"parallel": "vmap", "class_chunk": 2, "class_loop": "map"},
}


@pytest.mark.parametrize(("method", "model"), [("dc", TINY), ("dsa", {**TINY, "norm": "batchnorm"})])
def test_the_accelerator_loops_give_the_cpu_loops_results(tiny_real, method, model):
    """Networks and classes iterated as each backend's `BACKEND_DEFAULTS` say (CPU: one network and one
    class at a time; GPU: the networks vmapped, classes in vmapped groups) change no result: the whole
    outer step, inner training and BatchNorm refresh included, at 'highest' matmul precision (an
    accelerator's TF32 would differ between any two loop orders)."""
    results = {}
    with jax.default_matmul_precision("highest"):
        for name, loops in list(LOOPS.items())[: 3 if method == "dc" else 2]:  # DSA: the backends' only
            config = _config(method, model)
            if isinstance(loops, dict):
                config.gm.update(loops)
            resolve_backend(config, "cpu" if isinstance(loops, dict) else loops)
            results[name] = _step(config, tiny_real), config.gm
    (cpu_images, cpu_metrics, first), cpu_gm = results["cpu"]
    assert (cpu_gm.parallel, cpu_gm.class_chunk) == (gm.BACKEND_DEFAULTS["cpu"]["parallel"], 1)
    assert results["gpu"][1].parallel == gm.BACKEND_DEFAULTS["gpu"]["parallel"] == "vmap"
    assert results["gpu"][1].class_chunk == gm.BACKEND_DEFAULTS["gpu"]["class_chunk"] >= 3  # all 3 at once
    assert np.abs(cpu_images - first).max() > 1e-3  # the step moved the pixels
    assert cpu_metrics["inner_ce"] > 0  # and trained the networks between the matches
    for name in set(results) - {"cpu"}:
        (images, metrics, _), _ = results[name]
        np.testing.assert_allclose(images, cpu_images, rtol=1e-5, atol=1e-6, err_msg=name)
        for key in ("loss", "loss_first", "loss_last", "inner_ce", "grad_norm"):
            np.testing.assert_allclose(metrics[key], cpu_metrics[key], rtol=1e-5, err_msg=f"{name}: {key}")


def test_this_device_computes_the_step_the_cpu_computes(tiny_real):
    """The default device's DC step (the backend's loops) against the same step on the CPU: equal at
    'highest' precision; at the default one (TF32 on Ampere and later NVIDIA GPUs) the pixel update
    points the same way. On a CPU-only machine both sides are the CPU."""
    config = _config("dc", TINY)
    config.gm.outer_loop = 1  # one match: the program the step's time is spent in
    resolve_backend(config, jax.default_backend())
    cpu = jax.devices("cpu")[0]
    for precision in ("highest", None):
        updates, losses = {}, {}
        for device in (jax.devices()[0], cpu):
            real = jax.device_put(tiny_real, device)
            context = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
            with jax.default_device(device), context:
                images, metrics, first = _step(config, real)
            updates[device.platform], losses[device.platform] = (images - first).ravel(), metrics["loss"]
        here, there = updates[jax.devices()[0].platform], updates["cpu"]
        if precision:
            np.testing.assert_allclose(here, there, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(losses[jax.devices()[0].platform], losses["cpu"], rtol=1e-5)
        else:
            assert here @ there / (np.linalg.norm(here) * np.linalg.norm(there)) > 0.999


# ---- the suite ----


def test_a_part_gets_its_budget_cut_to_the_deadline_or_is_skipped():
    assert part_timeout(100, 0.0, 1000.0, min_s=15) == 100
    assert part_timeout(100, 0.0, 50.0, min_s=15) == 45  # 5 s kept for the last write
    assert part_timeout(100, 980.0, 1000.0, min_s=15) == 15
    assert part_timeout(100, 981.0, 1000.0, min_s=15) is None


def _repacked_wheel(distribution: str, folder: Path) -> None:
    """A wheel of the installed `distribution` (its files and dist-info, a fresh RECORD): the suite's
    offline install, tested without the network."""
    dist = importlib.metadata.distribution(distribution)
    files = [f for f in dist.files if "__pycache__" not in f.parts and not str(f).endswith("RECORD")]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    name = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(folder / name, "w") as wheel:
        for file in files:
            data = Path(dist.locate_file(file)).read_bytes()
            wheel.writestr(str(file), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{file},sha256={digest},{len(data)}")
        wheel.writestr(f"{info}/RECORD", "\n".join([*records, f"{info}/RECORD,,"]) + "\n")


@pytest.fixture(scope="module", name="bare")
def bare_fixture(tmp_path_factory):
    """(env, wheels, site): a Python where ml_collections and tensorflow_datasets do not import (stand-in
    packages that raise ImportError come first on PYTHONPATH), a folder with a wheel of ml-collections,
    and an empty folder to install it in."""
    root = tmp_path_factory.mktemp("bare")
    for module in ("ml_collections", "tensorflow_datasets"):
        (root / "hidden" / module).mkdir(parents=True)
        (root / "hidden" / module / "__init__.py").write_text(f"raise ImportError('{module} is hidden')\n")
    (root / "wheels").mkdir()
    _repacked_wheel("ml_collections", root / "wheels")
    env = {**os.environ, "PYTHONPATH": str(root / "hidden"), "JAX_PLATFORMS": "cpu"}
    return env, root / "wheels", root / "site"


def _suite(bare, out: Path, *options: str, wheels: Path | None = None, site: Path | None = None):
    env, default_wheels, default_site = bare
    command = [sys.executable, "-m", "benchmarks.accelerator", str(out), "--quick"]
    command += ["--wheels", str(wheels or default_wheels), "--site", str(site or default_site), *options]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module", name="quick")
def quick_fixture(bare, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quick")
    done = _suite(bare, out)
    assert done.returncode == 0, done.stderr[-3000:] + (out / "accelerator.log").read_text()[-5000:]
    return json.loads((out / "accelerator.json").read_text()) | {"out": out}


def _parts():
    from benchmarks.accelerator_parts import PARTS

    return PARTS


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_the_quick_suite_installs_ml_collections_from_its_wheel_and_never_needs_tfds(quick, bare):
    settings = next(r for r in quick["rows"] if r["part"] == "suite")
    assert settings["installed"] == ["ml-collections"]  # absl-py and PyYAML were there
    assert (bare[2] / "ml_collections" / "__init__.py").is_file()
    log = (quick["out"] / "accelerator.log").read_text()
    assert "tensorflow_datasets is hidden" not in log and "ml_collections is hidden" not in log


def test_every_part_is_measured_or_skipped_with_a_reason_and_the_results_are_well_formed(quick):
    rows = quick["rows"]
    assert quick["benchmark"] == "accelerator" and quick["machine"]["jax"] and quick["machine"]["cpu_count"]
    parts = {r["part"]: r for r in rows if r["variant"] == "(the part)"}
    assert list(parts) == list(_parts())  # every part, in the suite's order
    for name, part in parts.items():
        measured = [r for r in rows if r["part"] == name and r["variant"] != "(the part)"]
        assert part["status"] == "ok", part  # at --quick sizes every part runs to its end
        assert measured and all(r["status"] == "ok" or r["status"].startswith("skipped: ") for r in measured)
        for row in measured:
            for key in ("seconds", "compile_s", "extrapolated_s"):
                if row["status"] == "ok" and key in row:
                    assert _positive(row[key]) or key == "compile_s", (key, row)
    assert any(r["status"] == "ok" for r in rows if r["part"] == "torch")  # jaxdd's rows, torch or not
    tests = next(r for r in rows if r["part"] == "tests" and r["variant"] == "fast subset")
    assert tests["passed"] == 1 and tests["failed"] == 0, tests
    precision = next(r for r in rows if r["variant"] == "highest against default")
    assert precision["pixel_gradient_cosine"] == pytest.approx(1.0, abs=1e-6)  # the CPU has no TF32
    memory = [r for r in rows if r["part"] == "max_ipc" and r["variant"] != "(the part)"]
    assert len(memory) == 2 and all(1 <= r["value"] <= 64 and r["fits"] for r in memory)  # at most a class
    targets = [r for r in rows if r["part"] == "targets"]
    assert len(targets) == 8 and {r["status"] for r in targets} <= {"met", "missed", "not measured"}
    table = (quick["out"] / "accelerator.md").read_text()
    assert table.count("\n|") >= 1 + len(rows)  # header, separator, one line per row


def test_the_deadline_skips_the_parts_that_no_longer_fit(bare, tmp_path):
    done = _suite(bare, tmp_path, "--budget-s", "0")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "accelerator.json").read_text())
    parts = [r for r in result["rows"] if r["variant"] == "(the part)"]
    assert [r["part"] for r in parts] == list(_parts())
    assert all(r["status"].startswith("skipped: the suite's deadline (--budget-s 0)") for r in parts)
    assert result["machine"]["device"].startswith("not recorded")


def test_a_part_over_its_budget_is_cut_off_and_the_suite_goes_on_to_the_next(bare, tmp_path):
    done = _suite(bare, tmp_path, "--only", "eval,machine", "--part-budget-s", "1")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "accelerator.json").read_text())["rows"]
    parts = {r["part"]: r["status"] for r in rows if r["variant"] == "(the part)"}
    assert list(parts) == ["machine", "eval"]  # the suite's order, whatever --only's
    assert parts["eval"].startswith("failed: cut off after 1 s"), parts  # after machine's, cut or not


def test_missing_packages_without_wheels_stop_the_suite_naming_the_fix(bare, tmp_path):
    (tmp_path / "empty").mkdir()
    done = _suite(bare, tmp_path / "out", wheels=tmp_path / "empty", site=tmp_path / "site")
    assert done.returncode != 0 and "accelerator_wheels.sh" in done.stderr
    assert not (tmp_path / "out").exists()
