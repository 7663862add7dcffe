"""Gradient matching (DC/DSA) against independent expectations: distances by hand in NumPy, a zero loss
when the synthetic set is the real one, finite differences of the second-order pixel gradient, siamese
augmentation, K stacked networks, one compilation per configuration.

Tiny sizes throughout (8x8 images, 3 classes, width-8 one-block ConvNets); the module compiles with
most XLA optimisations off (compilation dominates at this size) and restores the flag afterwards.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdd import augment
from jaxdd.config import resolve_backend
from jaxdd.data import dataset_info
from jaxdd.data.real import from_arrays
from jaxdd.errors import UserError
from jaxdd.methods import gradient_matching as gm
from jaxdd.methods import matching_loss
from jaxdd.models import get_model

TINY = {"width": 8, "depth": 1}


pytestmark = pytest.mark.usefixtures("fast_compilation")


def _real(blobs, per_class: int, num_classes: int = 3):
    x, y = blobs(num_classes, per_class, seed=1)
    return from_arrays(
        name="blobs",
        train_images=x,
        train_labels=y,
        test_images=x,
        test_labels=y,
        mean=(0.5,),
        std=(0.25,),
        class_names=tuple("abcdefgh"[:num_classes]),
    )


def _config(*, model=None, **gm_overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "method": "dc",
            "dataset": "blobs",
            "model": model or dict(TINY),
            "ipc": 2,
            "init": "real",
            "seed": 0,
            "devices": 0,
        }
    )
    config.gm = gm.default_config()
    config.gm.update({"outer_loop": 2, "inner_loop": 2, "batch_real": 6, "batch_train": 4, **gm_overrides})
    return resolve_backend(config)


def _loss(model, params, images, real, key, **options):
    """`matching_loss` of one network without BatchNorm; `options`: `MatchOptions`' fields."""
    return gm.matching_loss(model, params, {}, images, real, key, gm.MatchOptions(**options))


# ---- the distance ----


def _grads(rng):
    def tree():
        return {
            "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
            "dense": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)},
            "ln": {"scale": rng.normal(size=(2, 2, 4)), "bias": rng.normal(size=(2, 2, 4))},
            "bn": {"scale": rng.normal(size=4)},
        }

    return tree(), tree()


def _ours_by_hand(g_real, g_syn) -> float:
    """The reference's distance_wb: rows of (out, everything else), 1-D tensors skipped."""
    total = 0.0
    for r, s in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn), strict=True):
        if r.ndim < 2:
            continue
        r = np.moveaxis(r, -1, 0).reshape(r.shape[-1], -1)
        s = np.moveaxis(s, -1, 0).reshape(s.shape[-1], -1)
        cos = (r * s).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(s, axis=1) + 1e-6)
        total += float(np.sum(1 - cos))
    return total


def test_ours_is_the_per_output_row_cosine_distance_of_weights_only():
    g_real, g_syn = _grads(np.random.default_rng(0))
    value = float(gm.distance(g_real, g_syn, "ours"))
    np.testing.assert_allclose(value, _ours_by_hand(g_real, g_syn), rtol=1e-5)
    # 3-D LayerNorm bias counts (as in the reference), 1-D biases and norm scales do not
    g_syn["conv"]["bias"], g_syn["dense"]["bias"], g_syn["bn"]["scale"] = 0 * g_syn["bn"]["scale"], 5.0, 7.0
    np.testing.assert_allclose(float(gm.distance(g_real, g_syn, "ours")), value, rtol=1e-6)
    # only the output axis (last) defines rows: permuting the other axes of both leaves is invariant,
    # permuting the output axis of one of them is not
    perm = np.random.default_rng(1).permutation(5)
    g_real["dense"]["kernel"], g_syn["dense"]["kernel"] = (
        g_real["dense"]["kernel"][perm],
        g_syn["dense"]["kernel"][perm],
    )
    np.testing.assert_allclose(float(gm.distance(g_real, g_syn, "ours")), value, rtol=1e-5)
    g_syn["dense"]["kernel"] = g_syn["dense"]["kernel"][:, ::-1]
    assert abs(float(gm.distance(g_real, g_syn, "ours")) - value) > 1e-3


def test_ours_of_a_single_row_and_its_scale_invariance():
    r = np.array([[1.0], [0.0]])  # dense [in=2, out=1]
    s = np.array([[1.0], [1.0]])
    expected = 1 - 1 / (np.sqrt(2) + 1e-6)
    np.testing.assert_allclose(float(gm.distance({"k": r}, {"k": s})), expected, rtol=1e-6)
    np.testing.assert_allclose(
        float(gm.distance({"k": r}, {"k": 3 * s})), 1 - 3 / (3 * np.sqrt(2) + 1e-6), rtol=1e-6
    )


def test_mse_and_cos_cover_all_parameters():
    g_real, g_syn = _grads(np.random.default_rng(2))
    r = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_real)])
    s = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_syn)])
    np.testing.assert_allclose(float(gm.distance(g_real, g_syn, "mse")), np.sum((s - r) ** 2), rtol=1e-5)
    cos = 1 - r @ s / (np.linalg.norm(r) * np.linalg.norm(s) + 1e-6)
    np.testing.assert_allclose(float(gm.distance(g_real, g_syn, "cos")), cos, rtol=1e-5, atol=1e-6)


def test_a_zero_gradient_row_has_a_finite_derivative():
    g_real = {"k": jnp.ones((3, 2))}
    grad = jax.jit(jax.grad(lambda s: gm.distance(g_real, {"k": s})))(jnp.zeros((3, 2)).at[:, 0].set(1.0))
    assert np.all(np.isfinite(grad))


# ---- loops and validation ----


def test_loops_for_ipc_follows_the_reference_table():
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    for ipc, loops in table.items():
        assert gm.loops_for_ipc(ipc, 0, 0) == loops
    assert gm.loops_for_ipc(10, 5, 0) == (5, 50)
    assert gm.loops_for_ipc(7, 3, 4) == (3, 4)
    with pytest.raises(UserError, match="set both explicitly"):
        gm.loops_for_ipc(7, 3, 0)


def test_validate_names_bad_values():
    info = dataset_info("digits")
    ok = _config(model="ConvNet")
    ok.dataset = "digits"
    gm.validate(ok, info)
    for key, value, message in [
        ("ipc", 3, "outer_loop"),
        ("gm.metric", "l2", "gm.metric"),
        ("gm.dsa_strategy", "crop", "method='dc'"),
        ("gm.batch_real", 0, "gm.batch_real"),
        ("gm.parallel", "pmap", "gm.parallel"),
        ("gm.class_chunk", -2, "gm.class_chunk"),
        ("gm.class_loop", "scan", "gm.class_loop"),
    ]:
        bad = ok.copy_and_resolve_references()
        if key == "ipc":
            bad.gm.outer_loop = bad.gm.inner_loop = 0
        section, _, name = key.rpartition(".")
        (bad.gm if section else bad)[name] = value
        with pytest.raises(UserError, match=message):
            gm.validate(bad, info)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("cpu", ("loop", 1, "map")), ("gpu", ("vmap", 10, "map")), ("tpu", ("vmap", 10, "map"))],
)
def test_the_loops_are_the_backends_once_resolved_and_never_chosen_in_the_library(backend, expected):
    config = _config()
    config.gm.update(parallel="auto", class_chunk=-1, class_loop="auto")
    with pytest.raises(UserError, match=r"gm\.class_chunk=-1 is the backend's choice"):
        gm.settings_from_config(config, min_class_count=140)
    settings = gm.settings_from_config(resolve_backend(config, backend), min_class_count=140)
    assert (settings.parallel, settings.class_chunk, settings.class_loop) == expected
    assert (config.gm.parallel, config.gm.class_chunk, config.gm.class_loop) == expected  # as recorded


def test_batch_real_is_capped_to_the_smallest_class():
    settings = gm.settings_from_config(_config(batch_real=256), min_class_count=140)
    assert settings.batch_real == 140
    assert (settings.outer_loop, settings.inner_loop) == (2, 2)
    assert settings.strategy == ""  # DC
    config = _config()
    config.method = "dsa"
    assert gm.settings_from_config(config, min_class_count=140).strategy == augment.default_strategy("blobs")


# ---- the matching loss ----


def _net(spec, num_classes=3, key=0, shape=(8, 8, 1)):
    model = get_model(spec, num_classes=num_classes, image_shape=shape)
    variables = model.init(jax.random.PRNGKey(key), jnp.zeros((1, *shape)), train=False)
    return model, variables["params"]


def test_loss_and_pixel_gradient_vanish_when_synthetic_equals_real(blobs):
    real = _real(blobs, per_class=2)  # batch_real = ipc = the whole class: both batches hold the same images
    state = gm.init(_config(), real, jax.random.PRNGKey(3))
    model, params = _net(TINY)

    @jax.jit
    def probe(images):
        def loss(images, metric):
            return _loss(model, params, images, real, jax.random.PRNGKey(4), batch_real=2, metric=metric)

        mse, grad = jax.value_and_grad(loss)(images, "mse")
        classes = real.train_images.reshape(3, 2, 8, 8, 1)
        g_real = jax.vmap(lambda c: matching_loss.class_gradient(model, params, {}, classes[c], c))(
            jnp.arange(3)
        )
        return mse, grad, loss(images, "ours"), g_real

    mse, grad, ours, g_real = probe(state.images)
    assert abs(float(mse)) < 1e-10 and float(jnp.abs(grad).max()) < 1e-6
    # 'ours' leaves only its 1e-6 guard: Σ_rows 1e-6 / (‖g_row‖² + 1e-6) of the real gradient
    expected = 0.0
    for leaf in jax.tree.leaves(g_real):
        if leaf.ndim >= 3:  # [class, ...weight dims]
            sq = np.sum(np.asarray(leaf, np.float64) ** 2, axis=tuple(range(1, leaf.ndim - 1)))
            expected += float(np.sum(1e-6 / (sq + 1e-6)))
    np.testing.assert_allclose(float(ours), expected, rtol=1e-3)


def test_second_order_pixel_gradient_matches_central_differences(blobs):
    with jax.enable_x64(True):
        real = _real(blobs, per_class=5)
        real = real.replace(train_images=real.train_images.astype(jnp.float64))
        model, params = _net({**TINY, "act": "sigmoid"}, key=5)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        images = jax.random.normal(jax.random.PRNGKey(6), (6, 8, 8, 1), jnp.float64)
        value_and_grad = jax.jit(
            jax.value_and_grad(lambda x: _loss(model, params, x, real, jax.random.PRNGKey(7), batch_real=3))
        )
        _, grad = value_and_grad(images)
        h = 1e-5
        for seed in range(3):
            direction = jax.random.normal(jax.random.PRNGKey(10 + seed), images.shape, jnp.float64)
            plus, _ = value_and_grad(images + h * direction)
            minus, _ = value_and_grad(images - h * direction)
            numeric = (plus - minus) / (2 * h)
            np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(numeric), rtol=1e-6)


def _float64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _assert_directional_derivatives(loss_and_grad, images, *, seeds=3, h=1e-5):
    """⟨grad, d⟩ of `loss_and_grad(images) -> (loss, grad)` against the central difference of its own
    loss along random directions d (float64)."""
    _, grad = loss_and_grad(images)
    for seed in range(seeds):
        direction = jax.random.normal(jax.random.PRNGKey(20 + seed), images.shape, jnp.float64)
        plus, _ = loss_and_grad(images + h * direction)
        minus, _ = loss_and_grad(images - h * direction)
        numeric = (float(plus) - float(minus)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(grad, direction)), numeric, rtol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"class_chunk": 1, "class_loop": "map"},  # the CPU default: one class at a time under lax.map
        {"class_chunk": 2, "class_loop": "map", "strategy": "color_crop", "metric": "mse"},  # group + rest
    ],
)
def test_the_production_per_class_gradient_matches_central_differences(blobs, options):
    # `matching_loss_and_grad` differentiates each class on its own (not one reverse pass over the sum):
    # its gradient against finite differences of the loss it returns
    with jax.enable_x64(True):
        real = _real(blobs, per_class=5)
        real = real.replace(train_images=real.train_images.astype(jnp.float64))
        model, params = _net({**TINY, "act": "sigmoid"}, key=8)
        params = _float64(params)
        images = jax.random.normal(jax.random.PRNGKey(9), (6, 8, 8, 1), jnp.float64)
        loss_and_grad = jax.jit(
            lambda x: gm.matching_loss_and_grad(
                model, params, {}, x, real, jax.random.PRNGKey(7), gm.MatchOptions(batch_real=3, **options)
            )
        )
        _assert_directional_derivatives(loss_and_grad, images)


def test_the_stacked_gradient_of_the_outer_step_matches_central_differences(blobs):
    # the outer step's path: K = 2 BatchNorm networks (frozen running statistics), 'ours', DSA
    spec = {**TINY, "act": "sigmoid", "norm": "batchnorm"}
    model = get_model(spec, num_classes=3, image_shape=(8, 8, 1))
    nets = gm.init_nets(model, gm.Settings(1, 1, 3, num_nets=2), jax.random.PRNGKey(3), (8, 8, 1))
    shift = {"mean": 0.1, "var": 0.5}  # running statistics away from init's (0, 1), so that they matter
    stats = jax.tree_util.tree_map_with_path(lambda path, x: x + shift[path[-1].key], nets.batch_stats)
    with jax.enable_x64(True):
        real = _real(blobs, per_class=5)
        real = real.replace(train_images=real.train_images.astype(jnp.float64))
        nets = _float64(nets.replace(batch_stats=stats))
        images = jax.random.normal(jax.random.PRNGKey(9), (6, 8, 8, 1), jnp.float64)
        options = gm.MatchOptions(batch_real=3, strategy="scale_rotate", parallel="loop", class_chunk=1)
        key = jax.random.PRNGKey(7)
        loss_and_grad = jax.jit(
            lambda x: gm.stacked_matching_loss_and_grad(model, nets, x, real, key, options)
        )
        _assert_directional_derivatives(loss_and_grad, images)


def test_dsa_augments_the_real_and_synthetic_batch_of_a_class_identically(blobs):
    # Synthetic = the whole real class in another order: only a siamese transform (one op and one
    # parameter set for both batches) keeps their gradients equal, whatever the key.
    real = _real(blobs, per_class=3)
    config = _config()
    config.ipc = 3
    state = gm.init(config, real, jax.random.PRNGKey(0))
    model, params = _net(TINY)
    options = {"batch_real": 3, "metric": "mse", "strategy": "scale_rotate"}
    loss = jax.jit(lambda images, key: _loss(model, params, images, real, key, **options))
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        assert float(loss(state.images, key)) < 1e-10
    moved = augment.augment(state.images, key, strategy="scale_rotate", siamese=True)
    assert float(jnp.abs(moved - state.images).max()) > 0.1  # the op really changes the images


def test_k_stacked_networks_and_class_groupings_give_the_same_losses(blobs):
    real = _real(blobs, per_class=6)
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    key = jax.random.PRNGKey(2)
    nets = gm.init_nets(model, gm.Settings(1, 1, 4, num_nets=2), jax.random.PRNGKey(3), (8, 8, 1))

    @jax.jit
    def probe(nets, images):
        one = lambda k, **kw: _loss(model, jax.tree.map(lambda x: x[k], nets.params), images, real, key, **kw)
        separate = [one(k, batch_real=4) for k in range(2)]
        # 3 classes (`separate`: all in one vmap): a group of 2 plus a remainder under lax.map, or one
        # class at a time unrolled
        groupings = [(2, "map"), (1, "unroll")]
        grouped = [one(0, batch_real=4, class_chunk=c, class_loop=loop) for c, loop in groupings]
        stacked = [
            gm.stacked_matching_loss(
                model, nets, images, real, key, gm.MatchOptions(batch_real=4, parallel=p)
            )
            for p in ("vmap", "loop", "map")
        ]
        return jnp.stack(separate), jnp.stack(grouped), jnp.stack(stacked)

    separate, grouped, stacked = probe(nets, jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 1)))
    assert separate[0] != separate[1]  # two different networks
    np.testing.assert_allclose(grouped, np.full(2, separate[0]), rtol=1e-5)
    np.testing.assert_allclose(stacked, np.full(3, np.mean(separate)), rtol=1e-5)


# ---- the outer step ----


def _fixed_net_loss(config, real):
    """The matching loss on 4 fixed networks, a yardstick that does not change between steps."""
    settings = gm.settings_from_config(config, min_class_count=real.min_class_count)
    model = get_model(TINY, num_classes=real.num_classes, image_shape=real.image_shape)
    nets = gm.init_nets(model, dataclasses.replace(settings, num_nets=4), jax.random.PRNGKey(99), (8, 8, 1))
    key, options = jax.random.PRNGKey(98), settings.match_options
    return jax.jit(lambda images: gm.stacked_matching_loss(model, nets, images, real, key, options))


def test_outer_step_compiles_once_moves_images_and_lowers_the_loss(blobs):
    real = _real(blobs, per_class=12)
    config = _config(lr_img=0.5)  # DC, outer_loop 2, inner_loop 2
    config.init = "noise"
    state = gm.init(config, real, jax.random.PRNGKey(0))
    step = gm.make_step(config, real)
    yardstick = _fixed_net_loss(config, real)
    before = float(yardstick(state.images))
    compiled = gm.outer_step._cache_size()
    first = state.images
    for _ in range(4):
        state, metrics = step(state, real)
    assert gm.outer_step._cache_size() == compiled + 1
    assert int(state.step) == 4
    assert set(metrics) >= {"loss", "loss_first", "loss_last", "grad_norm", "inner_ce"}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["inner_ce"]) > 0  # outer_loop 2: the networks were trained once
    assert float(jnp.abs(state.images - first).max()) > 1e-3
    assert float(yardstick(state.images)) < 0.9 * before


def test_batchnorm_statistics_move_a_tenth_towards_the_real_batch_and_the_step_runs(blobs):
    real = _real(blobs, per_class=4)
    spec = {**TINY, "norm": "batchnorm"}
    config = _config(model=spec, outer_loop=1, bn_images_per_class=4)  # 4 = the whole class
    settings = gm.settings_from_config(config, min_class_count=4)
    model = get_model(spec, num_classes=3, image_shape=(8, 8, 1))
    nets = gm.init_nets(model, settings, jax.random.PRNGKey(1), (8, 8, 1))
    refresh = jax.jit(lambda nets: gm.refresh_batch_stats(model, settings, nets, real, jax.random.PRNGKey(2)))
    stats = refresh(nets).batch_stats["norm0"]
    # the BN input by hand: conv0 (padding 3 for one channel) of all 12 training images
    conv = nets.params["conv0"]
    x = np.pad(np.asarray(real.train_images), ((0, 0), (3, 3), (3, 3), (0, 0)))
    y = jax.lax.conv_general_dilated(
        x, conv["kernel"][0], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = np.asarray(y + conv["bias"][0], np.float64).reshape(-1, 8)
    np.testing.assert_allclose(stats["mean"][0], 0.1 * y.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"][0], 0.9 + 0.1 * y.var(0, ddof=1), rtol=1e-4)

    state = gm.init(config, real, jax.random.PRNGKey(0))
    new_state, metrics = gm.make_step(config, real)(state, real)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(jnp.abs(new_state.images - state.images).max()) > 0
