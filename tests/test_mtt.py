"""Trajectory matching (MTT, `jaxdd.methods.mtt`) and its experts (`jaxdd.experts`) against independent
expectations: the normalised distance by hand and zero at the target, the pixel and step-size gradients
through an unroll against float64 finite differences, the three remat modes agreeing, the reference's
minibatch order, the expert cache keyed by the protocol, an interrupted expert resuming exactly, bad
settings as UserErrors before anything compiles, two outer iterations, and the recipe's table.

The tests build their configs from `jaxdd.config.base_config()` plus an `mtt` section (the integration
into base_config and the method registry is patched in where a test needs it). Tiny sizes throughout.
"""

import json
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdd.config
from jaxdd import checkpointing, data, experts, recipe
from jaxdd.config import base_config, resolve_backend
from jaxdd.errors import UserError
from jaxdd.methods import mtt
from jaxdd.models import ConvNetSpec

ROOT = Path(__file__).resolve().parents[1]
TRAIN_EPOCH = experts._train_epoch  # the unpatched expert epoch
TINY_ARCH = {"width": 4, "depth": 1, "act": "relu", "norm": "instancenorm", "pool": "avgpool"}

pytestmark = pytest.mark.usefixtures("fast_compilation")


class Tiny(nn.Module):
    """logits = Dense(2)(softplus(Dense(3)(flatten(x)))): smooth, so finite differences apply."""

    @nn.compact
    def __call__(self, x, *, train):
        hidden = nn.softplus(nn.Dense(3)(x.reshape(x.shape[0], -1)))
        return nn.Dense(2)(hidden), {"embedding": hidden}


def _tiny_problem(dtype, num_images=5):
    """(model, start, target, images [num_images, 2, 2, 1], labels): two different initialisations."""
    model = Tiny()
    x = jnp.zeros((1, 2, 2, 1), dtype)
    cast = lambda tree: jax.tree.map(lambda leaf: leaf.astype(dtype), tree)
    start = cast(model.init(jax.random.PRNGKey(1), x, train=False)["params"])
    target = cast(model.init(jax.random.PRNGKey(2), x, train=False)["params"])
    images = jax.random.normal(jax.random.PRNGKey(3), (num_images, 2, 2, 1), dtype)
    labels = jnp.arange(num_images, dtype=jnp.int32) % 2
    return model, start, target, images, labels


def _settings(**changes):
    values = {"syn_steps": 4, "expert_epochs": 1, "max_start_epoch": 1, "expert_train_epochs": 2}
    values.update({"dsa_strategy": "none", "expert_augment": "none", "batch": 2, "strategy": ""})
    return mtt.Settings(**{**values, **changes})


def _loss_fn(settings, model, start, target, labels, key):
    return lambda images, lr: mtt.trajectory_loss(model, settings, {}, images, labels, lr, start, target, key)


# ---- the loss ----


def test_parameter_distance_by_hand_and_zero_at_the_target():
    start = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array([[0.0]])}}
    target = {"a": jnp.array([1.0, 0.0]), "b": {"c": jnp.array([[3.0]])}}  # ‖start − target‖² = 4 + 9
    student = {"a": jnp.array([2.0, 0.0]), "b": {"c": jnp.array([[1.0]])}}  # ‖student − target‖² = 1 + 4
    np.testing.assert_allclose(mtt.parameter_distance(student, start, target), 5.0 / 13.0, rtol=1e-6)
    assert float(mtt.parameter_distance(target, start, target)) == 0.0


def test_the_loss_is_zero_when_the_student_ends_at_the_target():
    model, start, _, images, labels = _tiny_problem(jnp.float32)
    settings, key = _settings(syn_steps=3), jax.random.PRNGKey(0)
    # the target is where the student ends: computed independently with a Python loop of SGD steps
    rows = np.asarray(mtt.minibatch_schedule(jax.random.split(key)[0], 5, 2, 3))
    short = mtt.short_steps(5, 2, 3)
    params, lr = start, 0.1
    for idx, is_short in zip(rows, short, strict=True):
        idx = idx[:1] if is_short else idx

        def ce(p, idx=idx):
            logits = model.apply({"params": p}, images[idx], train=True)[0]
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(idx)), labels[idx]])

        params = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(ce)(params))
    loss = _loss_fn(settings, model, start, params, labels, key)(images, jnp.float32(lr))
    assert float(loss) == pytest.approx(0.0, abs=1e-10)


def test_pixel_and_step_size_gradients_match_float64_finite_differences():
    with jax.enable_x64(True):
        model, start, target, images, labels = _tiny_problem(jnp.float64)
        settings = _settings(syn_steps=4, remat="sqrt")  # 5 images in chunks of 2: the short chunk too
        loss = _loss_fn(settings, model, start, target, labels, jax.random.PRNGKey(0))
        lr = jnp.float64(0.5)
        grad_images, grad_lr = jax.grad(loss, argnums=(0, 1))(images, lr)
        direction = jax.random.normal(jax.random.PRNGKey(4), images.shape, jnp.float64)
        eps = 1e-6
        numeric = (loss(images + eps * direction, lr) - loss(images - eps * direction, lr)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(grad_images, direction), numeric, rtol=1e-6)
        numeric_lr = (loss(images, lr + eps) - loss(images, lr - eps)) / (2 * eps)
        np.testing.assert_allclose(grad_lr, numeric_lr, rtol=1e-6)
        assert float(jnp.abs(grad_lr)) > 0 and float(jnp.linalg.norm(grad_images)) > 0


def test_remat_modes_give_the_same_gradient():
    model, start, target, images, labels = _tiny_problem(jnp.float32)
    grads = {}
    for remat in mtt.REMATS:  # 7 steps: 'sqrt' runs 2 blocks of 3 and a tail of 1
        loss = _loss_fn(
            _settings(syn_steps=7, remat=remat), model, start, target, labels, jax.random.PRNGKey(0)
        )
        grads[remat] = jax.grad(loss, argnums=(0, 1))(images, jnp.float32(0.3))
    for remat in ("step", "sqrt"):
        for got, want in zip(grads[remat], grads["none"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_unrolled_steps_give_the_scans_gradient_without_a_loop():
    model, start, target, images, labels = _tiny_problem(jnp.float32)
    grads, programs = {}, {}
    for straight in (False, True):
        settings = _settings(syn_steps=5, remat="none", unroll=straight)
        loss = _loss_fn(settings, model, start, target, labels, jax.random.PRNGKey(0))
        grad = jax.grad(loss, argnums=(0, 1))
        grads[straight] = grad(images, jnp.float32(0.3))
        programs[straight] = jax.jit(grad).lower(images, jnp.float32(0.3)).as_text()
    for got, want in zip(grads[True], grads[False], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    loops = {straight: text.count("stablehlo.while") for straight, text in programs.items()}
    assert loops[True] < loops[False]  # the student's scan, forward and backward, is gone; the
    # minibatch permutations keep their own loops


def test_minibatches_follow_the_reference_order():
    # 5 images in chunks of 2: [p0 p1] [p2 p3] [p4], used from the last chunk, then a new permutation
    key = jax.random.PRNGKey(7)
    rows = np.asarray(mtt.minibatch_schedule(key, 5, 2, 4))
    first = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 5))
    second = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), 5))
    assert rows[0, 0] == first[4] and rows[1].tolist() == first[2:4].tolist()
    assert rows[2].tolist() == first[0:2].tolist() and rows[3, 0] == second[4]
    assert mtt.short_steps(5, 2, 4) == (True, False, False, True)
    assert mtt.short_steps(4, 2, 3) == (False, False, False)


# ---- experts ----


def _options(tmp_path, **protocol):
    fields = {"epochs": 2, "batch_size": 16, "augment": "none", **protocol}
    return experts.ExpertOptions(str(tmp_path), protocol=experts.ExpertProtocol(**fields))


def _counting(monkeypatch, fail_at=None):
    """Records the epoch index of every expert epoch trained; raises at epoch index `fail_at`."""
    calls = []

    def train_epoch(*args):
        if args[-1] == fail_at:
            raise KeyboardInterrupt("killed")
        calls.append(int(args[-1]))
        return TRAIN_EPOCH(*args)

    monkeypatch.setattr(experts, "_train_epoch", train_epoch)
    return calls


def test_expert_cache_is_keyed_by_the_protocol(tmp_path, tiny_real, monkeypatch):
    arch, options = ConvNetSpec(**TINY_ARCH), _options(tmp_path)
    calls = _counting(monkeypatch)
    first = experts.load_or_train_experts(arch, tiny_real, options, 1, log=lambda line: None)
    assert calls == [0, 1] and jax.tree.leaves(first.params)[0].shape[:2] == (1, 3)  # epochs 0, 1, 2
    calls.clear()
    again = experts.load_or_train_experts(arch, tiny_real, options, 1, epochs=2, log=lambda line: None)
    assert calls == []  # loaded, not retrained
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(first.params), strict=True):
        np.testing.assert_array_equal(a, b[:, :2])
    other = _options(tmp_path, lr=0.02)
    experts.load_or_train_experts(arch, tiny_real, other, 1, log=lambda line: None)
    assert calls == [0, 1]  # a changed protocol is a new entry, trained
    key = lambda o: experts.cache_key(o, tiny_real.name, arch, tiny_real.image_shape, tiny_real.num_classes)
    assert experts.entry_dir(options, key(options)) != experts.entry_dir(other, key(other))
    assert len(list((tmp_path / "blobs" / experts.arch_folder_name(arch)).iterdir())) == 2
    epoch_0 = jax.tree.leaves(first.params)[0][0, 0]
    assert not np.array_equal(epoch_0, jax.tree.leaves(first.params)[0][0, 2])  # the expert moved


def test_an_interrupted_expert_resumes_from_its_last_complete_epoch(tmp_path, tiny_real, monkeypatch):
    arch = ConvNetSpec(**TINY_ARCH)
    options = _options(tmp_path / "a", epochs=3)
    _counting(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        experts.load_or_train_experts(arch, tiny_real, options, 1, log=lambda line: None)
    key = experts.cache_key(options, tiny_real.name, arch, tiny_real.image_shape, tiny_real.num_classes)
    folder = experts.expert_dir(experts.entry_dir(options, key), 0)
    assert not experts.is_complete(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0000", "epoch_0001", "epoch_0002"]
    calls = _counting(monkeypatch)
    lines = []
    resumed = experts.load_or_train_experts(arch, tiny_real, options, 1, log=lines.append)
    assert calls == [2]  # only the epoch that was not complete
    assert any("continuing from epoch 2" in line for line in lines)
    fresh = experts.load_or_train_experts(arch, tiny_real, _options(tmp_path / "b", epochs=3), 1, log=print)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(fresh.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.records == fresh.records
    assert sorted(p.name for p in folder.iterdir()) == ["expert.json", "trajectory"]


# ---- settings and validation ----


def _config(tmp_path, **mtt_values):
    config = base_config()
    config.method, config.dataset, config.ipc, config.model = "mtt", "digits", 1, "ConvNetD1"
    config.eval.archs, config.compilation_cache_dir = "", ""
    config.mtt.experts_dir = str(tmp_path / "experts")
    config.mtt.update(mtt_values)
    return resolve_backend(config)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_start_epoch": 50, "expert_epochs": 2}, r"mtt.max_start_epoch=50 .* targets epoch 51"),
        ({"syn_steps": 0}, r"mtt.syn_steps=0 must be an integer ≥ 1"),
        ({"remat": "all"}, r"mtt.remat='all'"),
        ({"unroll": True}, r"mtt.unroll=True with mtt.remat='sqrt'.*set mtt.remat='none'"),
        ({"unroll": 1}, r"mtt.unroll=1 must be true or false"),
        ({"expert_lr": -1.0}, r"mtt.expert_lr=-1.0 must be > 0"),
        ({"batch_syn": -2}, r"mtt.batch_syn=-2"),
    ],
)
def test_bad_settings_are_user_errors(values, message):
    with pytest.raises(UserError, match=message):
        mtt.Settings(**values)


def test_missing_experts_with_training_off_fail_in_validate(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    config = _config(tmp_path, train_experts=False, num_experts=2)
    with pytest.raises(UserError, match=r"2 of the 2 .* experts .* --config.mtt.train_experts=True"):
        mtt.validate(config, data.dataset_info("digits"))
    # through the whole config check, as a run does before loading data or compiling
    with pytest.raises(UserError, match="train_experts"):
        jaxdd.config.validate(config)
    assert calls == []


# ---- the outer iteration ----


def test_two_outer_iterations_learn_pixels_and_step_size_and_checkpoint(tmp_path, tiny_real):
    config = _config(
        tmp_path, num_experts=2, expert_train_epochs=3, expert_batch_size=16, expert_augment="none",
        syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, lr_lr=1e-2, batch_syn=2,
    )  # fmt: skip
    config.dataset = "blobs"
    state = mtt.init(config, tiny_real, jax.random.PRNGKey(0))
    assert isinstance(state, mtt.MTTState) and float(state.syn_lr) == pytest.approx(0.01)
    lines = []
    step = mtt.make_step(config, tiny_real, log=lines.append)
    assert any("Training expert 2/2" in line for line in lines)
    one, metrics = step(state, tiny_real)
    again, _ = step(state, tiny_real)
    two, metrics_two = step(one, tiny_real)
    assert int(two.step) == 2 and isinstance(two, mtt.MTTState)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert {"syn_lr", "syn_lr_grad", "expert", "start_epoch"} <= set(metrics_two)
    assert float(one.syn_lr) != float(state.syn_lr) and not np.array_equal(one.images, state.images)
    np.testing.assert_array_equal(one.images, again.images)  # the same state and key: the same step
    with checkpointing.Checkpointer(tmp_path / "ckpt", async_save=False) as checkpointer:
        checkpointer.save(2, two, config)
        restored, saved_step = checkpointer.restore_latest(state, config, log=lambda line: None)
    assert saved_step == 2 and float(restored.syn_lr) == float(two.syn_lr)
    np.testing.assert_array_equal(restored.images, two.images)


# ---- the recipe ----


def test_the_recipe_rows_and_its_commands_validate():
    config = recipe.load_recipe(str(ROOT / "configs/mtt.py:dataset=cifar10,ipc=50"))
    assert (config.ipc, config.method, config.iterations) == (50, "mtt", 5000)
    assert (config.mtt.syn_steps, config.mtt.max_start_epoch, config.mtt.syn_lr_init) == (30, 40, 0.001)
    assert not config.zca.enabled  # the reference's table: IPC 50 without ZCA, IPC 1 and 10 with it
    whitened = recipe.load_recipe(str(ROOT / "configs/mtt.py:dataset=cifar10,ipc=10"))
    assert whitened.zca.enabled and whitened.zca.eps == 0.1
    tiny = recipe.load_recipe(str(ROOT / "configs/mtt.py:dataset=tiny_imagenet,ipc=50,mtt.syn_steps=5"))
    assert (tiny.model, tiny.mtt.batch_syn, tiny.mtt.syn_steps) == ("ConvNetD4", 300, 5)  # argument wins
    text = (ROOT / "configs" / "mtt.py").read_text()
    specs = re.findall(r"--config=(configs/[^\s'\"`]+)", text)
    assert len(specs) == 3
    for spec in specs:
        jaxdd.config.validate(recipe.load_recipe(str(ROOT / spec)))


def test_a_run_exports_the_learned_step_size_with_the_set(tmp_path):
    from jaxdd import run as driver
    from jaxdd import synthetic

    config = _config(
        tmp_path, num_experts=1, expert_train_epochs=2, expert_batch_size=16, expert_augment="none",
        syn_steps=2, expert_epochs=1, max_start_epoch=1, batch_syn=2, lr_lr=1e-2,
    )  # fmt: skip
    config.update({"iterations": 2, "checkpoint_every": 2, "log_every": 1})  # on the 8×8 digits
    driver.run(config, tmp_path / "run", log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    final_lr = [r["syn_lr"] for r in records if "syn_lr" in r][-1]
    _, extra = synthetic.load_npz(tmp_path / "run" / "synset.npz")
    assert extra["meta"]["learned_lr"] == pytest.approx(final_lr, rel=1e-6) and final_lr != 0.01


def test_a_pooled_mtt_run_matches_each_architectures_own_experts(tmp_path, tiny_real):
    # the pool draws an architecture per iteration; MTT then matches that architecture's trajectories
    config = _config(
        tmp_path, num_experts=1, expert_train_epochs=2, expert_batch_size=16, expert_augment="none",
        syn_steps=2, expert_epochs=1, max_start_epoch=1, batch_syn=2,
    )  # fmt: skip
    config.dataset = "blobs"
    config.pool.update({"preset": "custom", "custom": "main:0.5,MLP:0.5"})
    lines = []
    step = mtt.make_step(config, tiny_real, log=lines.append)
    state, drawn = mtt.init(config, tiny_real, jax.random.PRNGKey(0)), set()
    for _ in range(8):
        state, metrics = step(state, tiny_real)
        assert np.isfinite(float(metrics["loss"]))
        drawn.add(int(metrics["pool_arch"]))
    assert drawn == {0, 1} and int(state.step) == 8
    trained = [line for line in lines if line.startswith("Training expert")]
    assert len(trained) == 2 and any("MLP" in line for line in trained)  # one buffer per architecture, once
    assert len(list((tmp_path / "experts" / "blobs").iterdir())) == 2
