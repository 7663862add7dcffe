"""The model pool (DESIGN §4.4): draw frequencies against the probabilities (chi-square), draws as a pure
function of (key, step) so a resumed run repeats them, the presets' contents, every preset distilling on
tiny data (big nets replaced by tiny variants of the same classes), and config validation.

Compiles with most XLA optimisations off (compilation dominates at this size), as test_gradient_matching.
"""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from jaxdd import pool
from jaxdd.config import apply_pool_arg, base_config, resolve_backend, validate
from jaxdd.data.real import from_arrays
from jaxdd.errors import UserError
from jaxdd.methods import distribution_matching as dm
from jaxdd.methods import gradient_matching as gm
from jaxdd.models import VGG11, AlexNet, ConvNetSpec, registry

TINY = {"width": 8, "depth": 1}
# Upper 0.1% points of the chi-square distribution (df: degrees of freedom), from standard tables.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266}


pytestmark = pytest.mark.usefixtures("fast_compilation")


def _pool_config(preset: str, *, model="ConvNet", custom: str = "", **options) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"model": model, "iterations": 100, "devices": 0})
    config.pool = pool.default_config()
    config.pool.update({"preset": preset, "custom": custom, **options})
    return config


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


# ---- draws ----


@pytest.mark.parametrize(
    ("preset", "custom"),
    [("main_others", ""), ("uniform", ""), ("custom", "main:0.5,AlexNet:0.3,LeNet:0.2")],
)
def test_draw_frequencies_match_the_probabilities(preset, custom):
    the_pool = pool.pool_from_config(_pool_config(preset, custom=custom))
    draws = pool.draw_indices(the_pool, jax.random.PRNGKey(7), np.arange(6000))
    counts = np.bincount(draws, minlength=len(the_pool.archs))
    assert counts.sum() == 6000 and len(counts) == len(the_pool.archs)
    statistic = _chi_square(counts, np.asarray(the_pool.probs))
    assert statistic < CHI2_999[len(counts) - 1], (counts, the_pool.probs)


def test_draws_are_a_function_of_key_and_step_so_a_resumed_run_repeats_them():
    the_pool = pool.pool_from_config(_pool_config("uniform", warmup=5))
    key = jax.random.PRNGKey(3)
    whole = pool.draw_indices(the_pool, key, np.arange(40))
    first, rest = (pool.draw_indices(the_pool, key, steps) for steps in (np.arange(20), np.arange(20, 40)))
    np.testing.assert_array_equal(whole, np.concatenate([first, rest]))
    assert [the_pool.index_at(key, s) for s in range(40)] == whole.tolist()
    assert (whole[:5] == 0).all() and len(set(whole[5:])) > 1  # warm-up on the main model, then the pool
    other_key = pool.draw_indices(the_pool, jax.random.PRNGKey(4), np.arange(40))
    assert not np.array_equal(whole, other_key)


def test_presets():
    convnet = ConvNetSpec()
    similar = pool.pool_from_config(_pool_config("main_similar"))
    # the variant equal to the main ConvNet (relu, instancenorm, avgpool, depth 3) joins the main entry
    assert len(similar.archs) == 32 and similar.archs[0] == "ConvNet"
    assert similar.probs[0] == pytest.approx(0.9 + 0.1 / 32)
    assert all(a.width == 128 and a.depth == 3 for a in similar.archs[1:])
    assert {(a.act, a.norm, a.pool) for a in similar.archs[1:]} | {("relu", "instancenorm", "avgpool")} == {
        (a, n, p) for a in pool.SIMILAR_ACTS for n in pool.SIMILAR_NORMS for p in pool.SIMILAR_POOLS
    }
    shallow = pool.pool_from_config(_pool_config("main_similar", similar_depth=1))
    assert len(shallow.archs) == 33 and shallow.probs[0] == pytest.approx(0.9)
    assert convnet not in shallow.archs[1:]
    others = pool.pool_from_config(_pool_config("main_others", model=dict(TINY)))
    assert others.archs == (ConvNetSpec(**TINY), "LeNet", "AlexNet", "VGG11")
    np.testing.assert_allclose(others.probs, [0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3])
    uniform = pool.pool_from_config(_pool_config("uniform"))
    assert uniform.archs == ("ConvNet", "LeNet", "AlexNet", "VGG11") and uniform.probs == (0.25,) * 4
    assert pool.pool_from_config(_pool_config("")) is None


# ---- distillation ----


def _real(blobs, shape, per_class=6):
    x, y = blobs(3, per_class, shape=shape, seed=1)
    return from_arrays(
        name="blobs", train_images=x, train_labels=y, test_images=x, test_labels=y,
        mean=(0.5,), std=(0.25,), class_names=("a", "b", "c"),
    )  # fmt: skip


def _gm_config(preset: str, custom: str = "", **pool_options) -> ml_collections.ConfigDict:
    config = _pool_config(preset, model=dict(TINY), custom=custom, **pool_options)
    config.update({"method": "dc", "dataset": "blobs", "ipc": 1, "init": "real", "seed": 0})
    config.gm = gm.default_config()
    config.gm.update(
        {"outer_loop": 1, "inner_loop": 1, "batch_real": 2, "batch_train": 4, "bn_images_per_class": 2}
    )
    return resolve_backend(config)


@pytest.fixture
def tiny_big_nets(monkeypatch):
    """AlexNet and VGG11 of the registry as tiny variants of the same classes (the full ones take a
    minute to differentiate twice on CPU)."""
    monkeypatch.setitem(registry.MODELS, "AlexNet", functools.partial(AlexNet, widths=(4, 4, 4, 4, 4)))
    monkeypatch.setitem(registry.MODELS, "VGG11", functools.partial(VGG11, widths=(4, 4, 4, 4)))


@pytest.mark.parametrize(
    ("preset", "custom", "size"),
    [
        ("main_similar", "", 8),
        ("main_others", "", 28),
        ("uniform", "", 28),
        ("custom", "main:0.5,MLP:0.5", 8),
    ],
)
def test_every_preset_distils_two_iterations(blobs, tiny_big_nets, preset, custom, size):
    config = _gm_config(preset, custom)
    real = _real(blobs, (size, size, 1))
    state = gm.init(config, real, jax.random.PRNGKey(0))
    step_fn = gm.make_step(config, real)
    assert isinstance(step_fn, pool.PooledStep)
    the_pool = step_fn.pool
    # start where the pool draws a network other than the main one, so each preset runs one
    first = int(np.argmax(pool.draw_indices(the_pool, state.key, np.arange(1000)) != 0))
    state = state.replace(step=state.step + first)
    images = np.asarray(state.images)
    drawn = []
    for _ in range(2):
        expected = the_pool.index_at(state.key, int(state.step))
        state, metrics = step_fn(state, real)
        drawn.append(int(metrics["pool_arch"]))
        assert drawn[-1] == expected
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert drawn[0] != 0 and int(state.step) == first + 2
    assert not np.allclose(np.asarray(state.images), images)
    assert set(step_fn.steps) == set(drawn)  # one step (one compilation) per drawn architecture


def test_resumed_pooled_run_equals_uninterrupted_one(blobs):
    config = _gm_config("custom", "main:0.5,MLP:0.5")
    real = _real(blobs, (8, 8, 1))
    start = gm.init(config, real, jax.random.PRNGKey(1))

    def run(state, step_fn, n):
        arches = []
        for _ in range(n):
            state, metrics = step_fn(state, real)
            arches.append(int(metrics["pool_arch"]))
        return state, arches

    whole, whole_arches = run(start, gm.make_step(config, real), 4)
    half, first_arches = run(start, gm.make_step(config, real), 2)
    resumed, rest_arches = run(half, gm.make_step(config, real), 2)  # a fresh step, as after a restart
    assert whole_arches == first_arches + rest_arches and len(set(whole_arches)) == 2
    np.testing.assert_array_equal(np.asarray(whole.images), np.asarray(resumed.images))


def test_without_a_pool_the_step_is_the_plain_one(blobs):
    config = _gm_config("")
    step_fn = gm.make_step(config, _real(blobs, (8, 8, 1)))
    assert step_fn.func is gm.outer_step and step_fn.args[0].width == 8


def test_the_warmup_iterations_use_the_main_model():
    key = jax.random.PRNGKey(5)
    the_pool = pool.pool_from_config(_pool_config("main_others", warmup=3))
    assert [the_pool.arch_at(key, s) for s in range(3)] == ["ConvNet"] * 3
    assert {the_pool.arch_at(key, s) for s in range(3, 300)} > {"ConvNet"}


# ---- validation ----


def _validated(dataset="fashion_mnist", **changes):
    config = base_config()
    config.update({"dataset": dataset, "method": "dc", "iterations": 20, "model": "ConvNet"})
    config.eval.archs = "ConvNet"
    for key, value in changes.items():
        config.pool[key] = value
    validate(config)
    return config


@pytest.mark.parametrize(
    ("dataset", "changes", "expected"),
    [
        ("digits", {"preset": "main_others"}, "includes LeNet, which cannot run on 'digits'"),
        ("digits", {"preset": "uniform"}, "8x8x1"),
        ("fashion_mnist", {"preset": "best"}, "pool.preset='best'"),
        ("fashion_mnist", {"preset": "custom"}, "needs pool.custom"),
        ("fashion_mnist", {"preset": "custom", "custom": "ConvNet:0.5,AlexNet:0.4"}, "sum to 0.9"),
        ("fashion_mnist", {"preset": "custom", "custom": "ConvNet:1.2,AlexNet:-0.2"}, "must be > 0"),
        ("fashion_mnist", {"preset": "custom", "custom": "ConvNet:0.5,ResNet99:0.5"}, "'ResNet99'"),
        ("fashion_mnist", {"preset": "custom", "custom": "ConvNet=1"}, "NAME:PROBABILITY"),
        ("fashion_mnist", {"preset": "uniform", "warmup": 20}, "pool.warmup=20"),
        ("fashion_mnist", {"preset": "uniform", "warmup": -1}, "pool.warmup=-1"),
        ("digits", {"preset": "custom", "custom": "main:0.5,VGG11:0.5"}, "VGG11"),
    ],
)
def test_validation_names_the_value(dataset, changes, expected):
    with pytest.raises(UserError) as error:
        _validated(dataset, **changes)
    assert expected in str(error.value)


def test_main_similar_needs_a_convnet_main_model():
    config = base_config()
    config.update({"dataset": "fashion_mnist", "method": "dc", "iterations": 20, "model": "AlexNet"})
    config.eval.archs = "ConvNet"
    config.pool.preset = "main_similar"
    with pytest.raises(UserError, match="not one: use a ConvNet"):
        validate(config)


def test_valid_pools_and_recipe_argument():
    for preset in ("main_similar", "main_others", "uniform"):
        _validated("fashion_mnist", preset=preset, warmup=5)
    _validated("digits", preset="main_similar")
    config = apply_pool_arg(base_config(), "main_others,ipc=1", default="main_similar")
    assert config.pool.preset == "main_others" and config.ipc == 1
    assert apply_pool_arg(base_config(), "", default="main_similar").pool.preset == "main_similar"
    with pytest.raises(UserError, match="more than one pool preset"):
        apply_pool_arg(base_config(), "uniform,main_others", default="main_similar")


def _dm_pool_config(scale: str) -> ml_collections.ConfigDict:
    config = _pool_config("main_similar", model=dict(TINY), scale=scale)
    config.update({"method": "dm", "dataset": "blobs", "ipc": 1, "init": "real", "seed": 0})
    config.dm = dm.default_config()
    config.dm.update({"batch_real": 4, "lr_img": 0.5, "momentum_img": 0.0, "dsa_strategy": "none"})
    return config


def _first_draw(config, real, wanted):
    """The initial state moved to the first iteration whose drawn architecture satisfies `wanted`."""
    state = dm.init(config, real, jax.random.PRNGKey(3))
    the_pool = pool.pool_from_config(config)
    draws = pool.draw_indices(the_pool, state.key, np.arange(300))
    first = next(t for t, index in enumerate(draws) if wanted(index, the_pool.archs[index]))
    return state.replace(step=state.step + first)


def test_scale_main_gives_another_architecture_the_main_models_step_size_and_keeps_its_direction(blobs):
    real = _real(blobs, (8, 8, 1))
    plain_config, scaled_config = _dm_pool_config("none"), _dm_pool_config("main")
    state = _first_draw(plain_config, real, lambda index, arch: index and arch.pool == "maxpool")
    plain_step, scaled_step = dm.make_step(plain_config, real), dm.make_step(scaled_config, real)
    plain, plain_metrics = plain_step(state, real)
    scaled, metrics = scaled_step(state, real)
    _, main_metrics = plain_step.step_for(0)(state, real)  # the main model on the same iteration
    assert int(metrics["pool_arch"]) == int(plain_metrics["pool_arch"]) != 0
    # SGD without momentum: the update is −lr·grad
    plain_update = np.asarray(plain.images - state.images)
    scaled_update = np.asarray(scaled.images - state.images)
    lr = plain_config.dm.lr_img
    np.testing.assert_allclose(
        np.linalg.norm(plain_update), lr * float(plain_metrics["grad_norm"]), rtol=1e-4
    )
    np.testing.assert_allclose(
        np.linalg.norm(scaled_update), lr * float(main_metrics["grad_norm"]), rtol=1e-4
    )
    ratio = float(main_metrics["grad_norm"]) / float(plain_metrics["grad_norm"])
    np.testing.assert_allclose(scaled_update, plain_update * ratio, rtol=1e-4, atol=1e-7)
    assert float(metrics["grad_scale"]) == pytest.approx(ratio, rel=1e-5)
    assert abs(np.log(ratio)) > 0.05  # the variant's gradient norm differs from the main model's


def test_scale_main_leaves_the_main_models_iterations_alone(blobs):
    real = _real(blobs, (8, 8, 1))
    state = dm.init(_dm_pool_config("none"), real, jax.random.PRNGKey(3))
    the_pool = pool.pool_from_config(_dm_pool_config("none"))
    state = state.replace(
        step=state.step + int(np.argmax(pool.draw_indices(the_pool, state.key, np.arange(100)) == 0))
    )
    plain, _ = dm.make_step(_dm_pool_config("none"), real)(state, real)
    scaled, metrics = dm.make_step(_dm_pool_config("main"), real)(state, real)
    assert int(metrics["pool_arch"]) == 0 and float(metrics["grad_scale"]) == 1.0
    np.testing.assert_array_equal(np.asarray(scaled.images), np.asarray(plain.images))


def test_scale_needs_a_pool_and_a_known_value():
    config = base_config()
    config.pool.scale = "main"
    with pytest.raises(UserError, match=r"pool\.scale='main' without a pool"):
        validate(config)
    config.pool.preset, config.pool.scale = "main_similar", "max"
    with pytest.raises(UserError, match=r"pool\.scale='max' must be one of none, main"):
        validate(config)
