"""The launcher end to end on a tiny config, and user errors: one clear message, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config.ipc=2",
    "--config.eval.archs=ConvNet,MLP",
    "--config.eval.epochs=2",
    "--config.eval.num_nets=2",
    "--config.iterations=2",
    "--config.gm.outer_loop=2",
    "--config.gm.inner_loop=1",
    "--config.gm.batch_real=8",
]


def _jaxdd(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "jaxdd.main", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_default_recipe_end_to_end_then_evaluate_and_table(tmp_path):
    workdir = tmp_path / "run"
    done = _jaxdd("--config=configs/default.py", f"--workdir={workdir}", *TINY)
    assert done.returncode == 0, done.stderr
    for name in ("config.json", "metrics.jsonl", "synset.npz", "synset.png", "eval.json", "table.md"):
        assert (workdir / name).is_file(), name
    results = json.loads((workdir / "eval.json").read_text())
    assert set(results) == {"ConvNet", "MLP"}
    for summary in results.values():
        assert len(summary["accs"]) == 2 and all(0 <= a <= 1 for a in summary["accs"])
        assert summary["mean"] == pytest.approx(sum(summary["accs"]) / 2)
    assert "| dsa, IPC 2 |" in done.stdout and "| random real, IPC 2 |" in done.stdout
    assert json.loads((workdir / "config.json").read_text())["ipc"] == 2

    again = _jaxdd("--mode=evaluate", "--config=configs/default.py", f"--workdir={workdir}", *TINY)
    assert again.returncode == 0, again.stderr
    again_results = json.loads((workdir / "eval.json").read_text())
    for arch, summary in results.items():  # same keys, same networks
        assert again_results[arch]["accs"] == summary["accs"]

    table = _jaxdd("--mode=table", f"--runs={workdir}")
    assert table.returncode == 0 and "| run |" in table.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.dataset=imagenet9", "Unknown dataset 'imagenet9'"),
        ("--config.method=magic", "Unknown method 'magic'"),
        ("--config.eval.archs=ConvNet,ResNet99", "ResNet99"),
        ("--config.ipc=0", "ipc=0"),
        ("--config.ipc=100000", "ipc=100000"),
        ("--config.eval.archs=VGG11", "VGG11"),  # 8×8 digits are too small for five max-pools
        ("--config.eval.parallel=threads", "eval.parallel='threads'"),
    ],
)
def test_user_errors_exit_with_one_clear_message(tmp_path, override, expected):
    done = _jaxdd("--config=configs/default.py", f"--workdir={tmp_path}", override)
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "synset.npz").exists()


def test_integer_checks_accept_numpy_integers_and_reject_bools_and_floats():
    import numpy as np

    from jaxdd.errors import is_int

    assert is_int(3) and is_int(np.int64(3)) and is_int(np.int32(0))
    assert not any(is_int(value) for value in (True, False, np.bool_(True), 3.0, "3", None))
