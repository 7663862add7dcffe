"""Multi-host start-up: config.distributed is validated and passed to jax.distributed.initialize as set,
and only process 0 writes the run folder (checkpoints excepted, which Orbax coordinates)."""

import jax
import jax.numpy as jnp
import pytest

from jaxdd import distributed
from jaxdd import run as driver
from jaxdd.config import base_config, validate
from jaxdd.errors import UserError
from jaxdd.methods.base import DistillState, Method


def _dist(**values):
    dist = distributed.default_config()
    dist.update(values)
    return dist


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"coordinator_address": "10.0.0.1:1234"}, "coordinator_address is set but distributed.enabled"),
        ({"enabled": True, "coordinator_address": "10.0.0.1"}, "'10.0.0.1' is not 'host:port'"),
        ({"enabled": True, "coordinator_address": "host:port"}, "'host:port' is not 'host:port'"),
        ({"enabled": True, "num_processes": -2}, "num_processes=-2 must be an integer ≥ 1, or 0"),
        ({"enabled": True, "process_id": -5}, "process_id=-5 must be an integer ≥ 0, or -1"),
        ({"enabled": True, "num_processes": 4, "process_id": 4}, r"process_id=4 is outside 0\.\.3"),
    ],
)
def test_bad_distributed_settings_are_named(values, expected):
    config = base_config()
    config.distributed.update(values)
    with pytest.raises(UserError, match=expected):
        validate(config)


def test_initialize_receives_the_configured_values_and_none_for_detection():
    calls = []
    record = lambda **kwargs: calls.append(kwargs)
    explicit = _dist(enabled=True, coordinator_address="10.0.0.1:1234", num_processes=4, process_id=0)
    assert distributed.initialize(explicit, initialize_fn=record)
    assert distributed.initialize(_dist(enabled=True), initialize_fn=record)  # TPU pod, SLURM, Open MPI
    assert calls == [
        {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 0},
        {"coordinator_address": None, "num_processes": None, "process_id": None},
    ]


def test_a_single_process_run_does_not_initialize():
    never = lambda **kwargs: pytest.fail(f"initialize called with {kwargs}")
    assert not distributed.initialize(_dist(), initialize_fn=never)
    assert not distributed.initialize(None, initialize_fn=never)
    with pytest.raises(UserError, match="process_id=7"):  # validated before any call
        distributed.initialize(_dist(enabled=True, num_processes=2, process_id=7), initialize_fn=never)
    assert distributed.is_main_process()


def _stepping_method() -> Method:
    def init(config, real, key):
        return DistillState(jnp.zeros((2, 1, 1, 1)), jnp.arange(2), (), key, jnp.zeros((), jnp.int32))

    def make_step(config, real, *, log):
        step = lambda state, real: (state.replace(step=state.step + 1), {"loss": 1.0 / (state.step + 1)})
        return jax.jit(step)

    return Method(init=init, make_step=make_step)


RUN_FILES = {
    "config.json",
    "platform.json",
    "eval.json",
    "eval_cache",
    "jaxdd.lock",
    "metrics.jsonl",
    "synset.npz",
    "synset.png",
    "synset_nchw.npz",
    "table.md",
}


def _tiny_run_config():
    config = base_config()
    config.update({"dataset": "digits", "method": "random", "ipc": 1})
    config.eval.update({"archs": "MLP", "epochs": 1, "num_nets": 1, "batch_size": 8, "baselines": ""})
    return config


@pytest.mark.parametrize("main", [True, False])
def test_only_process_zero_writes_the_run_folder(tmp_path, monkeypatch, main):
    monkeypatch.setattr(distributed, "is_main_process", lambda: main)
    config = base_config()
    config.update({"iterations": 4, "checkpoint_every": 2, "log_every": 2})
    driver.distill(config, _stepping_method(), None, _stepping_method().init(config, None, jax.random.key(0)),
                   tmp_path / "distill", log=lambda _: None)  # fmt: skip
    driver.run(_tiny_run_config(), tmp_path / "run", log=lambda _: None)
    distilled = {p.name for p in (tmp_path / "distill").iterdir()}
    written = {p.name for p in (tmp_path / "run").iterdir()}
    if main:
        assert distilled == {"checkpoints", "config.json", "metrics.jsonl"}
        assert written == RUN_FILES
    else:
        assert distilled == {"checkpoints"}  # Orbax saves on every process
        assert written == set()
    assert sorted(p.name for p in (tmp_path / "distill" / "checkpoints").iterdir()) == ["2", "4"]
