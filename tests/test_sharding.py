"""Classes sharded over devices: the same distillation on 1, 2 and 4 forced host devices ends with the
same synthetic set, and bad device counts are named before any work."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxdd import sharding
from jaxdd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh process: the forced device count is read when JAX starts.
SCRIPT = textwrap.dedent(
    """
    import json
    import jax, ml_collections, numpy as np
    from jaxdd.data.real import from_arrays
    from jaxdd.methods import gradient_matching as gm

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    images = (rng.normal(size=(48, 8, 8, 1)) + labels[:, None, None, None]).astype(np.float32)
    real = from_arrays(name="blobs", train_images=images, train_labels=labels, test_images=images[:8],
                       test_labels=labels[:8], mean=(0.0,), std=(1.0,), class_names=tuple("abcd"))
    out = {"device_count": jax.device_count()}
    for devices in (1, 2, 4):
        config = ml_collections.ConfigDict({"method": "dsa", "dataset": "blobs", "ipc": 2, "init": "real",
                                            "seed": 0, "devices": devices, "pool": {"preset": ""},
                                            "model": {"width": 8, "depth": 2}})
        config.gm = gm.default_config()
        config.gm.update(outer_loop=2, inner_loop=1, batch_real=6, dsa_strategy="color_crop")
        state = gm.init(config, real, jax.random.PRNGKey(0))
        step = gm.make_step(config, real)
        for _ in range(2):
            state, metrics = step(state, real)
        out[devices] = np.asarray(state.images).ravel().tolist()
    print(json.dumps(out))
    """
)


def test_synthetic_set_does_not_depend_on_the_device_count():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 4
    import numpy as np

    one = np.asarray(out["1"])
    assert np.abs(one).max() > 0
    for devices in ("2", "4"):
        np.testing.assert_allclose(np.asarray(out[devices]), one, rtol=1e-5, atol=1e-5)


def test_device_counts_are_resolved_or_refused_clearly():
    assert sharding.resolve_devices(0, 10, available=4) == 2
    assert sharding.resolve_devices(0, 100, available=8) == 5
    assert sharding.resolve_devices(0, 7, available=4) == 1
    assert sharding.resolve_devices(2, 10, available=4) == 2
    with pytest.raises(UserError, match=r"devices=4 does not divide the 10 classes.*\[1, 2\]"):
        sharding.resolve_devices(4, 10, available=4)
    with pytest.raises(UserError, match="only 1 device"):
        sharding.resolve_devices(2, 10, available=1)
