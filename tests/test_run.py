"""The run driver: exact resume after SIGKILL, the non-finite stop, refusing a changed config."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import run as driver
from jaxdd.config import base_config
from jaxdd.errors import UserError
from jaxdd.methods.base import DistillState, Method

ROOT = Path(__file__).resolve().parents[1]
TINY_DC = [
    "--config=configs/dc.py:dataset=digits",
    "--config.ipc=1",
    "--config.iterations=8",
    "--config.checkpoint_every=1",
    "--config.log_every=1",
    "--config.model=ConvNetW32",
    "--config.gm.batch_real=8",
    "--config.eval.archs=",
]


def _start(workdir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "jaxdd.main", f"--workdir={workdir}", *TINY_DC, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def test_a_run_killed_mid_way_resumes_to_the_same_synthetic_set(tmp_path):
    whole = _start(tmp_path / "whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    platform = json.loads((tmp_path / "whole" / "platform.json").read_text())
    assert platform["backend"] == "cpu" and platform["matmul_precision"] == "default"  # what ran it

    killed = _start(tmp_path / "killed")
    deadline = time.time() + 600
    while len(_checkpoint_steps(tmp_path / "killed")) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)  # at an arbitrary point: mid-step, mid-save or between
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    resumed = _start(tmp_path / "killed")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "Resumed from the checkpoint of iteration" in out

    with np.load(tmp_path / "whole" / "synset.npz") as a, np.load(tmp_path / "killed" / "synset.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])
    steps = [json.loads(line).get("step") for line in (tmp_path / "killed" / "metrics.jsonl").open()]
    steps = [s for s in steps if s is not None]
    assert steps == list(range(1, 9))  # each iteration recorded once


def test_resuming_with_a_changed_config_is_refused_unless_asked(tmp_path):
    first = _start(tmp_path, "--config.iterations=2")
    assert first.wait(timeout=600) == 0
    changed = _start(tmp_path, "--config.iterations=3", "--config.gm.lr_img=0.5")
    _, err = changed.communicate(timeout=600)
    assert changed.returncode == 2 and "lr_img" in err and "Traceback" not in err
    forced = _start(
        tmp_path,
        "--config.iterations=3",
        "--config.gm.lr_img=0.5",
        "--config.resume_with_changed_config=True",
    )
    out, err = forced.communicate(timeout=600)
    assert forced.returncode == 0, err
    assert "Resumed from the checkpoint of iteration 2" in out


def _counting_method(nan_at: int) -> Method:
    """A stand-in method whose images count the steps and whose loss turns NaN at step `nan_at`."""

    def init(config, real, key):
        return DistillState(
            images=jnp.zeros((2, 1, 1, 1)),
            labels=jnp.arange(2, dtype=jnp.int32),
            opt_state=(),
            key=key,
            step=jnp.zeros((), jnp.int32),
        )

    def make_step(config, real, *, log):
        @jax.jit
        def step(state, real):
            step = state.step + 1
            loss = jnp.where(step >= nan_at, jnp.nan, 1.0 / step)
            return state.replace(images=state.images + 1, step=step), {"loss": loss}

        return step

    return Method(init=init, make_step=make_step)


def test_a_non_finite_loss_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    config = base_config()
    config.iterations, config.checkpoint_every, config.log_every = 10, 2, 5
    method = _counting_method(nan_at=7)
    state = method.init(config, None, jax.random.PRNGKey(0))
    with pytest.raises(UserError, match="Iteration 7: loss became non-finite"):
        driver.distill(config, method, None, state, tmp_path, log=lambda _: None)
    assert _checkpoint_steps(tmp_path) == [2, 4, 6]
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4, 5, 6]


def _growing_method(*, schedule_uses_iterations: bool = False) -> Method:
    """A stand-in method whose images are multiplied by `gm.lr_img` at every step (images = lr^step)."""

    def init(config, real, key):
        return DistillState(
            images=jnp.ones((2, 1, 1, 1)),
            labels=jnp.arange(2, dtype=jnp.int32),
            opt_state=(),
            key=key,
            step=jnp.zeros((), jnp.int32),
        )

    def make_step(config, real, *, log):
        growth = config.gm.lr_img

        @jax.jit
        def step(state, real):
            return state.replace(images=state.images * growth, step=state.step + 1), {"loss": jnp.float32(1)}

        return step

    return Method(
        init=init,
        make_step=make_step,
        lr_keys=("gm.lr_img",),
        schedule_uses_iterations=schedule_uses_iterations,
    )


def _growth_config(growth: float, iterations: int):
    config = base_config()
    config.iterations, config.checkpoint_every, config.log_every = iterations, 1, 1
    config.gm.lr_img = growth
    return config


def _distill(config, method, workdir, logs=None):
    state = method.init(config, None, jax.random.PRNGKey(0))
    log = logs.append if logs is not None else (lambda _: None)
    driver.check_resumable(config, method, workdir / "checkpoints", log=log)
    return driver.distill(config, method, None, state, workdir, log=log)


def test_exploding_images_are_never_saved_and_a_new_lr_resumes_from_the_last_good_checkpoint(tmp_path):
    method = _growing_method()
    # 10, 100, 1000 are within the bound 1e3; iteration 4 reaches 1e4, while the metrics stay finite
    with pytest.raises(
        UserError, match=r"Iteration 4: .*1e\+04.*iteration 3, is kept.*resume_with_new_lr=True"
    ):
        _distill(_growth_config(10.0, 6), method, tmp_path)
    assert _checkpoint_steps(tmp_path) == [1, 2, 3]
    # the advised recovery is refused without its flag, and works with it
    with pytest.raises(UserError, match=r"gm\.lr_img: 10\.0 → 1\.0"):
        _distill(_growth_config(1.0, 6), method, tmp_path)
    recovered = _growth_config(1.0, 6)
    recovered.resume_with_new_lr = True
    logs = []
    state = _distill(recovered, method, tmp_path, logs)
    assert "Resumed from the checkpoint of iteration 3" in "\n".join(logs)
    assert any("gm.lr_img 10.0 → 1.0" in line for line in logs)
    np.testing.assert_array_equal(np.asarray(state.images), 1000.0)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert {"event": "resume", "from_iteration": 3}.items() <= records[3].items()


def test_non_finite_images_stop_the_run_before_any_save(tmp_path):
    with pytest.raises(UserError, match=r"Iteration 1: the synthetic images are NaN.*no checkpoint"):
        _distill(_growth_config(float("nan"), 3), _growing_method(), tmp_path)
    assert _checkpoint_steps(tmp_path) == []


def test_dm_with_an_exploding_learning_rate_stops_instead_of_exporting(tmp_path):
    config = base_config()
    config.update({"method": "dm", "ipc": 1, "iterations": 3, "checkpoint_every": 1, "log_every": 1})
    config.model = "ConvNetW32"
    config.dm.lr_img = 1e30
    config.eval.archs = ""
    with pytest.raises(UserError, match="Iteration 1: the synthetic images reached"):
        driver.run(config, tmp_path, log=lambda _: None)
    assert not (tmp_path / "synset.npz").exists() and _checkpoint_steps(tmp_path) == []


def test_iterations_extend_a_run_only_where_the_schedule_allows_and_a_shorter_count_exports_its_step(
    tmp_path,
):
    plain, scheduled = _growing_method(), _growing_method(schedule_uses_iterations=True)
    _distill(_growth_config(2.0, 4), plain, tmp_path / "plain")
    logs = []
    state = _distill(_growth_config(2.0, 6), plain, tmp_path / "plain", logs)
    assert any("Continuing the run of 4 iterations to 6" in line for line in logs)
    np.testing.assert_array_equal(np.asarray(state.images), 64.0)  # = a fresh 6-iteration run

    _distill(_growth_config(2.0, 4), scheduled, tmp_path / "scheduled")
    with pytest.raises(
        UserError,
        match=r"iterations: 4 → 6\); these keys change the result \(the method's schedule is spread",
    ):
        _distill(_growth_config(2.0, 6), scheduled, tmp_path / "scheduled")

    # checkpoints 4, 5, 6 kept (keep_checkpoints 3): 5 exports that step; 3 has no checkpoint
    logs = []
    state = _distill(_growth_config(2.0, 5), plain, tmp_path / "plain", logs)
    np.testing.assert_array_equal(np.asarray(state.images), 32.0)
    assert any("exporting the checkpoint of iteration 5; the run went on to 6" in line for line in logs)
    assert _checkpoint_steps(tmp_path / "plain") == [4, 5, 6]
    with pytest.raises(UserError, match=r"iterations=3 is below this run's checkpoints \(iterations 4, 5, 6"):
        _distill(_growth_config(2.0, 3), plain, tmp_path / "plain")


def test_metrics_lines_cut_short_or_left_by_a_run_without_a_checkpoint_are_tidied_aloud(tmp_path):
    method = _growing_method()
    # a kill before the first checkpoint leaves lines but no checkpoint: they are recomputed, once each
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 1.0}\n\n{"ste')
    logs = []
    _distill(_growth_config(1.0, 3), method, tmp_path, logs)
    assert any("dropped 1 unreadable line" in line for line in logs)
    assert any("Dropped 2 line(s)" in line and "no checkpoint was saved" in line for line in logs)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2, 3]
    # a deleted metrics file is said aloud on resume
    (tmp_path / "metrics.jsonl").unlink()
    logs = []
    _distill(_growth_config(1.0, 4), method, tmp_path, logs)
    assert any("no line for 3 of the 3 iterations done" in line for line in logs)
