"""MetaDD (DESIGN §4.6) against independent expectations: L_var by hand, the Grad-CAM of a hand-built
network recomputed in NumPy, invariance to the order of the auxiliary networks, pixel gradients that lower
the regularizer, the feature taps of the reference architectures, every base method running with the
hook, and config errors named before anything compiles.

Tiny sizes (8x8 images, 3 classes, width-4 ConvNets as auxiliary networks trained for one epoch); the
module compiles with most XLA optimisations off and restores the flag afterwards.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdd import cam, metadd
from jaxdd.config import base_config, validate
from jaxdd.errors import UserError
from jaxdd.methods import get_method
from jaxdd.models import get_model

SHAPE = (8, 8, 1)
TINY_AUX = (
    {"width": 4, "depth": 1},
    {"width": 4, "depth": 2, "pool": "maxpool"},
    {"width": 4, "depth": 1, "norm": "batchnorm"},
)


pytestmark = pytest.mark.usefixtures("fast_compilation")


def _aux(specs=TINY_AUX, options=None) -> metadd.Auxiliaries:
    """Randomly initialised (untrained) auxiliary networks: enough for properties of the loss."""
    options = options or metadd.Options()
    models = [get_model(spec, num_classes=3, image_shape=SHAPE) for spec in specs]
    variables = [
        dict(m.init(jax.random.key(i), jnp.zeros((1, *SHAPE)), train=False)) for i, m in enumerate(models)
    ]
    return metadd.make_auxiliaries(models, variables, SHAPE, options)


def _images(n=6, seed=5):
    return jax.random.normal(jax.random.key(seed), (n, *SHAPE)), jnp.arange(n, dtype=jnp.int32) % 3


# ---- the terms ----


def test_variance_is_zero_for_equal_maps_and_the_mean_per_pixel_variance_otherwise():
    rng = np.random.default_rng(0)
    same = np.broadcast_to(rng.uniform(size=(1, 2, 4, 4)), (3, 2, 4, 4))
    assert float(metadd.cam_variance(jnp.asarray(same))) == pytest.approx(0, abs=1e-12)
    maps = rng.uniform(size=(3, 2, 4, 4))
    by_hand = np.mean(np.mean((maps - maps.mean(0)) ** 2, axis=0))
    assert float(metadd.cam_variance(jnp.asarray(maps))) == pytest.approx(by_hand, rel=1e-5)
    assert by_hand > 0


def test_agreement_loss_by_hand():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(3, 4, 5)), np.array([0, 4, 2, 2])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mean = p.mean(0)
    ce = -np.log(p[:, np.arange(4), labels])  # [M, N]
    kl = np.sum(mean * (np.log(mean) - np.log(p)), axis=-1)  # [M, N]
    by_hand = np.sum(np.mean(ce + kl, axis=1))
    got = metadd.agreement_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    assert float(got) == pytest.approx(by_hand, rel=1e-5)


def test_meta_and_heterogeneous_fractions():
    cams = jnp.asarray([[[[0.9, 0.9, 0.1, 0.2]]], [[[0.6, 0.4, 0.8, 0.3]]]])  # [M=2, N=1, 1, 4]
    meta, hetero = metadd.feature_fractions(cams)
    assert float(meta) == 0.25 and float(hetero) == 0.5


# ---- Grad-CAM ----


class HandNet(nn.Module):
    """A 1x1 conv (the feature map A, 4x4x2) -> relu -> flatten -> Dense(3)."""

    @nn.compact
    def __call__(self, x, *, train):
        a = nn.Conv(2, (1, 1), name="conv")(x)
        embedding = nn.relu(a).reshape(x.shape[0], -1)
        return nn.Dense(3, name="classifier")(embedding), {"embedding": embedding, "feature_map": a}


def test_grad_cam_of_a_hand_built_network_matches_numpy():
    model = HandNet()
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    labels = jnp.asarray([2, 0])
    tap = cam.feature_tap(model, (4, 4, 1))
    assert (tap.path, tap.map_shape) == (("conv",), (4, 4, 2))

    k, b = (np.asarray(variables["params"]["conv"][n]) for n in ("kernel", "bias"))
    w = np.asarray(variables["params"]["classifier"]["kernel"])  # [32, 3]
    a = np.asarray(x) @ k[0, 0] + b  # [2, 4, 4, 2]
    expected = []
    for i, y in enumerate(np.asarray(labels)):
        grad = w[:, y].reshape(4, 4, 2) * (a[i] > 0)  # ∂z_y/∂A through relu and flatten
        cam_map = np.maximum(np.einsum("hwc,c->hw", a[i], grad.mean((0, 1))), 0)
        expected.append((cam_map - cam_map.min()) / (cam_map.max() - cam_map.min() + 1e-6))
    maps, _ = cam.grad_cam(model, variables, x, labels, tap, epsilon=1e-6)
    np.testing.assert_allclose(np.asarray(maps), np.stack(expected), atol=1e-5)


def test_maps_are_resized_to_the_image_grid_in_unit_range():
    maps = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 3, 3)))
    out = cam.normalise_maps(maps, (8, 8), 1e-6)
    assert out.shape == (2, 8, 8)
    assert float(out.min()) == pytest.approx(0, abs=1e-6) and float(out.max()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "image_shape", "expected"),
    [
        ("ConvNet", (28, 28, 1), (8, 8, 128)),
        ("AlexNet", (32, 32, 3), (8, 8, 192)),
        ("VGG11", (28, 28, 1), (2, 2, 512)),  # the pooled feature_map is 1x1: the last stage's 2x2 map
        ("VGG11", (32, 32, 3), (2, 2, 512)),
        ("ResNet18", (32, 32, 3), (4, 4, 512)),
    ],
)
def test_feature_taps_of_the_default_auxiliary_architectures(name, image_shape, expected):
    model = get_model(name, num_classes=10, image_shape=image_shape)
    assert cam.feature_tap(model, image_shape)[1] == expected


def test_an_mlp_has_no_feature_tap():
    with pytest.raises(UserError, match="no spatial feature map"):
        cam.feature_tap(get_model("MLP", num_classes=3, image_shape=SHAPE), SHAPE)


# ---- the regularizer ----


def test_the_loss_is_invariant_to_the_order_of_the_auxiliary_networks():
    aux = _aux()
    reversed_aux = metadd.Auxiliaries(
        variables=aux.variables[::-1], models=aux.models[::-1], taps=aux.taps[::-1], options=aux.options
    )
    images, labels = _images()
    key = jax.random.key(0)
    loss, grad, metrics = metadd.metadd_loss_and_grad(aux, images, labels, key)
    loss_r, grad_r, metrics_r = metadd.metadd_loss_and_grad(reversed_aux, images, labels, key)
    assert float(loss) == pytest.approx(float(loss_r), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_r), rtol=1e-4, atol=1e-6)
    for name in metrics:
        assert float(metrics[name]) == pytest.approx(float(metrics_r[name]), rel=1e-5, abs=1e-7)


def test_gradients_reach_the_pixels_and_descent_lowers_the_regularizer():
    aux = _aux()
    images, labels = _images()
    step = jax.jit(metadd.metadd_loss_and_grad)
    first, grad, metrics = step(aux, images, labels, jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).sum()) > 0
    assert 0 <= float(metrics["meta_fraction"]) <= 1 and float(metrics["metadd_var"]) > 0
    loss = first
    for _ in range(5):
        images = images - 0.5 * grad
        loss, grad, _ = step(aux, images, labels, jax.random.key(0))
    assert float(loss) < float(first)


def test_the_variance_term_alone_reaches_the_pixels_through_the_cams():
    aux = _aux(options=metadd.Options(lambda_var=1.0, lambda_ai=0.0))
    images, labels = _images()
    loss, grad, metrics = metadd.metadd_loss_and_grad(aux, images, labels, jax.random.key(0))
    assert float(loss) == pytest.approx(float(metrics["metadd_var"]))
    assert float(jnp.abs(grad).sum()) > 0


def test_a_subset_per_step_leaves_the_other_images_untouched():
    aux = _aux(options=metadd.Options(images_per_step=2))
    images, labels = _images()
    _, grad, _ = metadd.metadd_loss_and_grad(aux, images, labels, jax.random.key(3))
    touched = np.asarray(jnp.abs(grad).sum(axis=(1, 2, 3)) > 0)
    assert touched.sum() == 2


def test_the_hook_is_the_identity_without_auxiliary_networks():
    grad = jnp.ones((2, *SHAPE))
    out, metrics = metadd.add_gradient(None, grad, jnp.zeros(2, jnp.int32), jax.random.key(0), grad)
    assert out is grad and metrics == {}


# ---- every base method with the hook ----


def _config(method: str, teacher_dir: str) -> ml_collections.ConfigDict:
    values = base_config().to_dict()
    values.update({"dataset": "blobs", "method": method, "ipc": 2, "iterations": 2, "seed": 0})
    values.update({"model": {"width": 4, "depth": 1}, "init": "real"})
    values["gm"].update({"outer_loop": 1, "inner_loop": 1, "batch_real": 4, "batch_train": 4})
    values["gm"].update({"dsa_strategy": "color_crop" if method == "dsa" else ""})
    values["dm"].update({"batch_real": 4, "dsa_strategy": "color_crop"})
    values["sre2l"].update({"batch_ipc": 1})
    values["teachers"].update({"dir": teacher_dir, "epochs": 1, "batch_size": 12})
    values["metadd"].update({"enabled": True, "archs": list(TINY_AUX[:2]), "images_per_step": 4})
    if method == "sre2l":
        values.update({"model": {"width": 4, "depth": 1, "norm": "batchnorm"}, "init": "noise"})
    return ml_collections.ConfigDict(values)


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "sre2l"])
def test_every_base_method_runs_two_iterations_with_metadd(method, tiny_real, tmp_path_factory):
    teacher_dir = str(tmp_path_factory.getbasetemp() / "metadd_teachers")  # shared: trained once
    config = _config(method, teacher_dir)
    impl = get_method(method)
    state = impl.init(config, tiny_real, jax.random.key(0))
    step = impl.make_step(config, tiny_real)
    start = np.asarray(state.images)
    for _ in range(2):
        state, metrics = step(state, tiny_real)
    assert int(state.step) == 2
    for name in ("metadd_loss", "metadd_var", "metadd_ai", "meta_fraction", "metadd_grad_norm"):
        assert np.isfinite(float(metrics[name])), name
    assert 0 <= float(metrics["meta_fraction"]) <= 1
    assert not np.allclose(np.asarray(state.images), start)


# ---- validation ----


def _digits_config(**metadd_values) -> ml_collections.ConfigDict:
    values = base_config().to_dict()
    values.update({"dataset": "digits", "method": "dc", "ipc": 1, "iterations": 1, "model": "ConvNet"})
    values["eval"].update({"archs": "ConvNet"})
    values["metadd"].update({"enabled": True, "archs": "ConvNet,AlexNet", **metadd_values})
    return ml_collections.ConfigDict(values)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"archs": "ConvNet,NoSuchNet"}, "metadd.archs has 'NoSuchNet'.*valid names"),
        ({"archs": "ConvNet,MLP"}, "metadd.archs has 'MLP'.*no spatial feature map"),
        ({"lambda_var": -1.0}, r"metadd.lambda_var=-1.0 must be ≥ 0"),
        ({"lambda_ai": -0.5}, r"metadd.lambda_ai=-0.5 must be ≥ 0"),
        ({"lambda_var": 0.0, "lambda_ai": 0.0}, "both λs are 0"),
        ({"archs": "ConvNet"}, "at least 2 architectures"),
        ({"images_per_step": -1}, "metadd.images_per_step"),
    ],
)
def test_validate_names_bad_metadd_values(values, match):
    with pytest.raises(UserError, match=match):
        validate(_digits_config(**values))


def test_validate_accepts_the_defaults_and_rejects_a_method_without_a_step():
    validate(_digits_config())
    config = _digits_config()
    config.method, config.iterations = "random", 0
    with pytest.raises(UserError, match="MetaDD regularises dc, dsa, dm or sre2l"):
        validate(config)


def test_a_pooled_dc_step_gives_every_architecture_the_same_auxiliary_networks(tiny_real, tmp_path_factory):
    teacher_dir = str(tmp_path_factory.getbasetemp() / "metadd_teachers")
    config = _config("dc", teacher_dir)
    config.pool.update({"preset": "custom", "custom": "main:0.5,ConvNetD1:0.5"})
    impl = get_method("dc")
    state = impl.init(config, tiny_real, jax.random.key(0))
    step = impl.make_step(config, tiny_real)
    for _ in range(2):
        state, metrics = step(state, tiny_real)
    assert "pool_arch" in metrics and np.isfinite(float(metrics["metadd_loss"]))
    bound = [step.step_for(index) for index in range(2)]
    assert bound[0].args[0] != bound[1].args[0]
    assert bound[0].keywords["hooks"].metadd is bound[1].keywords["hooks"].metadd is not None
