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
    "--config=configs/dc_digits.py",
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

    def make_step(config, real):
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
