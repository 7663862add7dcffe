"""MetaDD (DESIGN §4.6) against independent expectations: the Grad-CAM of a hand-built network recomputed
in NumPy, invariance to the order of the auxiliary networks, pixel gradients that lower
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

from jaxdd import cam, metadd, metadd_gradient
from jaxdd.config import base_config, resolve_backend, validate
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
        ("ConvNet", (28, 28, 1), (("norm2",), (8, 8, 128))),
        ("AlexNet", (32, 32, 3), (("conv4",), (8, 8, 192))),
        ("VGG11", (28, 28, 1), (("norm5",), (4, 4, 512))),  # its last stage is 2x2: one stage up
        ("VGG11", (32, 32, 3), (("norm5",), (4, 4, 512))),
        ("ResNet18", (32, 32, 3), (("layer4_1",), (4, 4, 512))),
    ],
)
def test_metadd_taps_the_default_auxiliary_architectures_at_4x4_or_finer(name, image_shape, expected):
    # the table of docs/metadd.md: no map coarser than metadd.min_map_size (default 4)
    model = get_model(name, num_classes=10, image_shape=image_shape)
    tap = cam.feature_tap(model, image_shape, min_map_size=metadd.Options().min_map_size)
    assert (tap.path, tap.map_shape) == expected


def test_an_mlp_has_no_feature_tap():
    with pytest.raises(UserError, match=r"no spatial feature map"):
        cam.feature_tap(get_model("MLP", num_classes=3, image_shape=SHAPE), SHAPE)


# ---- the regularizer ----


def test_the_loss_is_invariant_to_the_order_of_the_auxiliary_networks():
    aux = _aux()
    reversed_aux = metadd.Auxiliaries(
        variables=aux.variables[::-1], models=aux.models[::-1], taps=aux.taps[::-1], options=aux.options
    )
    images, labels = _images()
    key = jax.random.key(0)
    loss, grad, metrics = metadd_gradient.metadd_loss_and_grad(aux, images, labels, key)
    loss_r, grad_r, metrics_r = metadd_gradient.metadd_loss_and_grad(reversed_aux, images, labels, key)
    assert float(loss) == pytest.approx(float(loss_r), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_r), rtol=1e-4, atol=1e-6)
    for name in metrics:
        assert float(metrics[name]) == pytest.approx(float(metrics_r[name]), rel=1e-5, abs=1e-7)


def test_gradients_reach_the_pixels_and_descent_lowers_the_regularizer():
    aux = _aux()
    images, labels = _images()
    step = jax.jit(metadd_gradient.metadd_loss_and_grad)
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
    loss, grad, metrics = metadd_gradient.metadd_loss_and_grad(aux, images, labels, jax.random.key(0))
    assert float(loss) == pytest.approx(float(metrics["metadd_var"]))
    assert float(jnp.abs(grad).sum()) > 0


def test_a_subset_per_step_leaves_the_other_images_untouched():
    aux = _aux(options=metadd.Options(images_per_step=2))
    images, labels = _images()
    _, grad, _ = metadd_gradient.metadd_loss_and_grad(aux, images, labels, jax.random.key(3))
    touched = np.asarray(jnp.abs(grad).sum(axis=(1, 2, 3)) > 0)
    assert touched.sum() == 2


def test_the_hook_is_the_identity_without_auxiliary_networks():
    grad = jnp.ones((2, *SHAPE))
    out, metrics = metadd.add_gradient(None, grad, jnp.zeros(2, jnp.int32), jax.random.key(0), grad)
    assert out is grad and metrics == {}


# ---- every base method with the hook ----


def _config(method: str, teacher_dir: str, **metadd_values) -> ml_collections.ConfigDict:
    values = base_config().to_dict()
    values.update({"dataset": "blobs", "method": method, "ipc": 2, "iterations": 2, "seed": 0})
    values.update({"model": {"width": 4, "depth": 1}, "init": "real"})
    values["gm"].update({"outer_loop": 1, "inner_loop": 1, "batch_real": 4, "batch_train": 4})
    values["gm"].update({"dsa_strategy": "color_crop" if method == "dsa" else "dsa"})
    values["dm"].update({"batch_real": 4, "dsa_strategy": "color_crop"})
    values["sre2l"].update({"batch_ipc": 1})
    values["teachers"].update({"dir": teacher_dir, "epochs": 1, "batch_size": 12})
    values["metadd"].update({"enabled": True, "archs": list(TINY_AUX[:2]), "images_per_step": 4})
    values["metadd"].update(metadd_values)
    if method == "sre2l":
        values.update({"model": {"width": 4, "depth": 1, "norm": "batchnorm"}, "init": "noise"})
    values["mtt"].update({"experts_dir": f"{teacher_dir}_experts", "num_experts": 1})
    values["mtt"].update({"expert_augment": "none", "expert_train_epochs": 2, "expert_batch_size": 12})
    values["mtt"].update({"expert_epochs": 1})
    values["mtt"].update({"max_start_epoch": 1, "syn_steps": 2, "batch_syn": 2})
    return resolve_backend(ml_collections.ConfigDict(values))


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "sre2l", "mtt"])
def test_every_base_method_runs_two_iterations_with_metadd(method, tiny_real, tmp_path_factory):
    # the plumbing each method adds: its own network for the KL ('backbone'), its base norm ('ratio')
    teacher_dir = str(tmp_path_factory.getbasetemp() / "metadd_teachers")  # shared: trained once
    config = _config(method, teacher_dir, kl_target="backbone", balance="ratio", normalisation="softmax")
    impl = get_method(method)
    state = impl.init(config, tiny_real, jax.random.key(0))
    step = impl.make_step(config, tiny_real)
    start = np.asarray(state.images)
    for _ in range(2):
        state, metrics = step(state, tiny_real)
    assert int(state.step) == 2
    names = ("metadd_loss", "metadd_var", "metadd_ai", "meta_fraction", "metadd_grad_norm")
    for name in (*names, "metadd_var_grad_norm", "metadd_ai_grad_norm"):
        assert np.isfinite(float(metrics[name])), name
    assert 0 <= float(metrics["meta_fraction"]) <= 1
    for term in ("var", "ai"):  # each term's step is var_ratio / ai_ratio (0.1) of the base gradient's
        step_norm = float(metrics[f"metadd_{term}_weight"]) * float(metrics[f"metadd_{term}_grad_norm"])
        assert step_norm == pytest.approx(0.1 * float(metrics["grad_norm"]), rel=1e-4), term
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
        ({"archs": "ConvNet,NoSuchNet"}, r"metadd.archs has 'NoSuchNet'.*valid names"),
        ({"archs": "ConvNet,MLP"}, r"metadd.archs has 'MLP'.*no spatial feature map"),
        ({"lambda_var": -1.0}, r"metadd.lambda_var=-1.0 must be ≥ 0"),
        ({"lambda_ai": -0.5}, r"metadd.lambda_ai=-0.5 must be ≥ 0"),
        ({"lambda_var": 0.0, "lambda_ai": 0.0}, r"both weights \(metadd.lambda_var, lambda_ai\) are 0"),
        ({"archs": "ConvNet"}, r"at least 2 architectures"),
        ({"images_per_step": -1}, r"metadd.images_per_step"),
        ({"balance": "adaptive"}, r"metadd.balance='adaptive': choose one of 'fixed', 'ratio'"),
        ({"balance": "ratio", "var_ratio": -0.1}, r"metadd.var_ratio=-0.1 must be ≥ 0"),
        ({"balance": "ratio", "ai_ratio": float("inf")}, r"metadd.ai_ratio=inf must be ≥ 0 and finite"),
        ({"balance": "ratio", "var_ratio": 0.0, "ai_ratio": 0.0}, r"both weights \(metadd.var_ratio"),
        ({"normalisation": "sigmoid"}, r"metadd.normalisation='sigmoid': choose one of 'minmax'"),
        ({"cam_term": "entropy"}, r"metadd.cam_term='entropy'"),
        ({"kl_target": "teacher"}, r"metadd.kl_target='teacher': choose one of 'mean', 'backbone'"),
        ({"weight_gradient": "none"}, r"metadd.weight_gradient='none'"),
        ({"min_map_size": -1}, r"metadd.min_map_size=-1 must be an integer ≥ 0"),
        ({"image_chunk": 2.5}, r"metadd.image_chunk=2.5 must be an integer ≥ 0"),
        ({"cam_threshold": 1.0}, r"metadd.cam_threshold=1.0 must be ≥ 0 .*below 1"),
        ({"cam_threshold": -0.5, "normalisation": "softmax"}, r"metadd.cam_threshold=-0.5"),
        ({"min_aux_accuracy": 1.5}, r"metadd.min_aux_accuracy=1.5 must lie in \[0, 1\]"),
    ],
)
def test_validate_names_bad_metadd_values(values, match):
    with pytest.raises(UserError, match=match):
        validate(_digits_config(**values))


def test_validate_accepts_the_defaults_and_rejects_a_method_without_a_step():
    validate(_digits_config())
    validate(_digits_config(normalisation="softmax", cam_threshold=1.5, balance="ratio", lambda_var=0.0))
    config = _digits_config()
    config.method, config.iterations = "random", 0
    with pytest.raises(UserError, match=r"MetaDD regularises dc, dsa, dm, sre2l or mtt"):
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
