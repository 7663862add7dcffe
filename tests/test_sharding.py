"""Classes (gradient matching, DM, SRe2L recover) and networks (evaluation) sharded over devices: the same
distillation on 1, 2 and 4 forced host devices ends with the same synthetic set, the same evaluation
gives the same accuracies, and bad device counts are named before any work."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest

from jaxdd import sharding
from jaxdd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# The scripts run in a fresh process (the forced device count is read when JAX starts), on 4 classes of
# noisy 8x8 blobs.
BLOBS = textwrap.dedent(
    """
    import json
    import jax, ml_collections, numpy as np
    from jaxdd.data.real import from_arrays

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    images = (rng.normal(size=(48, 8, 8, 1)) + labels[:, None, None, None]).astype(np.float32)
    real = from_arrays(name="blobs", train_images=images, train_labels=labels, test_images=images[:8],
                       test_labels=labels[:8], mean=(0.0,), std=(1.0,), class_names=tuple("abcd"))
    """
)

SCRIPT = BLOBS + textwrap.dedent(
    """
    from jaxdd.config import resolve_backend
    from jaxdd.methods import gradient_matching as gm

    out = {"device_count": jax.device_count()}
    for devices in (1, 2, 4):
        config = ml_collections.ConfigDict({"method": "dsa", "dataset": "blobs", "ipc": 2, "init": "real",
                                            "seed": 0, "devices": devices, "pool": {"preset": ""},
                                            "model": {"width": 8, "depth": 2}})
        config.gm = gm.default_config()
        config.gm.update(outer_loop=2, inner_loop=1, batch_real=6, dsa_strategy="color_crop")
        resolve_backend(config)
        state = gm.init(config, real, jax.random.PRNGKey(0))
        step = gm.make_step(config, real)
        for _ in range(2):
            state, metrics = step(state, real)
        out[devices] = np.asarray(state.images).ravel().tolist()
    print(json.dumps(out))
    """
)


# DM's per-class path and SRe2L's recover (a batch's BatchNorm moments pooled over devices) on 1, 2, 4.
DM_SRE2L_SCRIPT = BLOBS + textwrap.dedent(
    """
    from jaxdd.methods import distribution_matching as dm, sre2l
    from jaxdd.models import get_model

    teacher = get_model({"width": 8, "depth": 2, "norm": "batchnorm"}, num_classes=4, image_shape=(8, 8, 1))
    variables = dict(teacher.init(jax.random.PRNGKey(5), images[:1], train=False))
    out = {"device_count": jax.device_count()}
    for devices in (1, 2, 4):
        config = ml_collections.ConfigDict({"method": "dm", "dataset": "blobs", "ipc": 2, "init": "real",
                                            "seed": 0, "devices": devices, "pool": {"preset": ""},
                                            "metadd": {"enabled": False},
                                            "model": {"width": 8, "depth": 2}})
        config.dm = dm.default_config()
        config.dm.update(batch_real=6, dsa_strategy="color_crop")
        state = dm.init(config, real, jax.random.PRNGKey(0))
        step = dm.make_step(config, real)
        for _ in range(2):
            state, _ = step(state, real)
        out[f"dm {devices}"] = np.asarray(state.images).ravel().tolist()
        config.sre2l = sre2l.default_config()
        config.update(method="sre2l", init="noise", iterations=3)
        settings = sre2l.settings_from_config(config, real)
        state = sre2l.init(config, real, jax.random.PRNGKey(1))
        for _ in range(2):
            state, metrics = sre2l.recover_step(teacher, settings, variables, state, real)
        out[f"sre2l {devices}"] = np.asarray(state.images).ravel().tolist()
        out[f"sre2l bn {devices}"] = float(metrics["bn"])
    print(json.dumps(out))
    """
)


# Five networks, so that 2 and 4 devices pad the keys; a noisy task, so that networks differ.
EVAL_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from jaxdd import eval_settings, evaluation
    from jaxdd.models import ConvNetSpec, get_model

    rng = np.random.default_rng(0)
    data = (rng.uniform(size=(6, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 6),
            rng.uniform(size=(300, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 300))
    model = get_model(ConvNetSpec(width=8, depth=1), num_classes=3, image_shape=(8, 8, 1))
    protocol = eval_settings.EvalProtocol(epochs=3)
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    out = {"device_count": jax.device_count()}
    for parallel, devices in (("loop", 1), ("loop", 2), ("loop", 4), ("vmap", 4)):
        accs = evaluation.evaluate_model(model, protocol, keys, *data, parallel=parallel, devices=devices)
        out[f"{parallel} {devices}"] = accs.tolist()
    print(json.dumps(out))
    """
)


def _run_on_four_devices(script: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_synthetic_set_does_not_depend_on_the_device_count():
    out = _run_on_four_devices(SCRIPT)
    assert out["device_count"] == 4
    one = np.asarray(out["1"])
    assert np.abs(one).max() > 0
    for devices in ("2", "4"):
        np.testing.assert_allclose(np.asarray(out[devices]), one, rtol=1e-5, atol=1e-5)


def test_dm_and_sre2l_sets_do_not_depend_on_the_device_count():
    out = _run_on_four_devices(DM_SRE2L_SCRIPT)
    assert out["device_count"] == 4
    assert out["sre2l bn 1"] > 0  # the BatchNorm term is live, so pooling the moments matters
    for method in ("dm", "sre2l"):
        one = np.asarray(out[f"{method} 1"])
        assert np.abs(one).max() > 0
        for devices in (2, 4):
            np.testing.assert_allclose(np.asarray(out[f"{method} {devices}"]), one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([out["sre2l bn 2"], out["sre2l bn 4"]], out["sre2l bn 1"], rtol=1e-5)


def test_evaluation_accuracies_do_not_depend_on_the_device_count():
    out = _run_on_four_devices(EVAL_SCRIPT)
    assert out["device_count"] == 4
    one = out["loop 1"]
    assert len(one) == 5 and len(set(one)) > 1  # distinct networks, padding dropped
    assert out["loop 2"] == one and out["loop 4"] == one  # network i is trained from keys[i] everywhere
    np.testing.assert_allclose(out["vmap 4"], one, atol=2 / 300)  # vmap: float reassociation only


def test_network_device_counts_are_resolved_or_refused_clearly():
    assert sharding.resolve_net_devices(0, available=4, processes=1) == 4
    assert sharding.resolve_net_devices(3, available=4, processes=1) == 3
    assert sharding.resolve_net_devices(0, available=8, processes=2) == 8
    assert sharding.resolve_net_devices(8, available=8, processes=2) == 8
    with pytest.raises(UserError, match="only 4 device"):
        sharding.resolve_net_devices(5, available=4, processes=1)
    with pytest.raises(UserError, match=r"devices=2 in a run of 2 processes.*devices=0"):
        sharding.resolve_net_devices(2, available=8, processes=2)
    with pytest.raises(UserError, match="devices=-1 must be an integer"):
        sharding.resolve_net_devices(-1, available=4, processes=1)


def test_keys_are_padded_with_copies_of_the_first_to_a_multiple_of_the_devices():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    padded = np.asarray(sharding.pad_rows(keys, 4))
    assert padded.shape == (8, 2)
    np.testing.assert_array_equal(padded[:5], np.asarray(keys))
    np.testing.assert_array_equal(padded[5:], np.repeat(np.asarray(keys)[:1], 3, axis=0))
    assert sharding.pad_rows(keys, 5) is keys and sharding.pad_rows(keys, 1) is keys


def test_device_counts_are_resolved_or_refused_clearly():
    assert sharding.resolve_devices(0, 10, available=4) == 2
    assert sharding.resolve_devices(0, 100, available=8) == 5
    assert sharding.resolve_devices(0, 7, available=4) == 1
    assert sharding.resolve_devices(2, 10, available=4) == 2
    with pytest.raises(UserError, match=r"devices=4 does not divide the 10 classes.*\[1, 2\]"):
        sharding.resolve_devices(4, 10, available=4)
    with pytest.raises(UserError, match="only 1 device"):
        sharding.resolve_devices(2, 10, available=1)


def test_a_multi_process_class_mesh_takes_a_multiple_of_the_process_count():
    # 2 processes of 2 devices: 10 classes on one device of each (4 would not divide them, 1 would leave
    # process 1 out of the mesh and unable to read the results)
    assert sharding.resolve_devices(0, 10, available=4, processes=2) == 2
    assert sharding.resolve_devices(0, 12, available=8, processes=2) == 6
    assert sharding.resolve_devices(0, 100, available=16, processes=4) == 4
    assert sharding.resolve_devices(2, 10, available=4, processes=2) == 2
    with pytest.raises(
        UserError, match=r"devices=1 does not divide the 10 classes and is a multiple of the 2 .*\[2\]"
    ):
        sharding.resolve_devices(1, 10, available=4, processes=2)
    with pytest.raises(UserError, match="No device count divides the 10 classes and is a multiple of the 3"):
        sharding.resolve_devices(0, 10, available=6, processes=3)


def test_a_mesh_takes_as_many_devices_from_every_process():
    class Device(NamedTuple):
        id: int
        process_index: int

    two_processes = [Device(i, i // 4) for i in range(8)]
    assert [d.id for d in sharding.mesh_devices(2, two_processes)] == [0, 4]
    assert [d.id for d in sharding.mesh_devices(6, two_processes)] == [0, 1, 2, 4, 5, 6]
    assert [d.id for d in sharding.mesh_devices(3, [Device(i, 0) for i in range(4)])] == [0, 1, 2]
    assert sharding.mesh_devices(1) == jax.devices()[:1]
