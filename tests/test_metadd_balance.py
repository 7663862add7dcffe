"""MetaDD's gradient as issue 16 asks for it, against independent expectations: descent on the CAM term
alone lowers it; float64 central differences of the whole pixel gradient; balance='ratio' gives each
term the set fraction of the base gradient's norm (also through `methods.base.pixel_step`, with the
pool's rescaling); the weight-stop shortcut taken exactly where it is exact; the KL to the base
method's network by hand; the auxiliaries' accuracy report naming weak ones; the taps' minimum size.

Tiny untrained ConvNets on 8x8 images, 3 classes; XLA's optimisations off for the module.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdd import cam, metadd
from jaxdd import metadd_gradient as gradient
from jaxdd.errors import UserError
from jaxdd.methods.base import Hooks, pixel_step
from jaxdd.models import get_model

pytestmark = pytest.mark.usefixtures("fast_compilation")

SHAPE = (8, 8, 1)
KEY = jax.random.key(0)
# tapped at the last block's norm (6x6), then relu, pooling and the linear layer: piecewise linear
RELU = ({"width": 4, "depth": 2}, {"width": 4, "depth": 2, "pool": "maxpool", "norm": "batchnorm"})
SWISH = (
    {"width": 4, "depth": 2, "act": "swish"},
    {"width": 4, "depth": 1, "act": "swish", "pool": "maxpool"},
)


def _networks(specs, dtype=jnp.float32):
    models = [get_model(spec, num_classes=3, image_shape=SHAPE) for spec in specs]
    x = jnp.zeros((1, *SHAPE))
    init = lambda i, m: dict(m.init(jax.random.key(10 + i), x, train=False))
    variables = [jax.tree.map(lambda v: v.astype(dtype), init(i, m)) for i, m in enumerate(models)]
    return models, variables


def _aux(specs, dtype=jnp.float32, **options) -> metadd.Auxiliaries:
    models, variables = _networks(specs, dtype)
    return metadd.make_auxiliaries(models, variables, SHAPE, metadd.Options(**options))


def _images(dtype=jnp.float32, n=6):
    return jax.random.normal(jax.random.key(5), (n, *SHAPE), dtype), jnp.arange(n, dtype=jnp.int32) % 3


def _grad(aux, images, labels, **kwargs):
    return np.asarray(gradient.metadd_loss_and_grad(aux, images, labels, KEY, **kwargs)[1])


# ---- descent and exactness ----


@pytest.mark.parametrize(
    "options",
    [{}, {"normalisation": "softmax"}, {"normalisation": "pre_relu", "cam_term": "alignment"}],
    ids=["minmax-variance", "softmax-variance", "pre_relu-alignment"],
)
def test_descent_on_the_cam_term_alone_lowers_it(options):
    aux = _aux(RELU + SWISH[:1], lambda_ai=0.0, **options)
    images, labels = _images()
    step = jax.jit(lambda x: gradient.metadd_loss_and_grad(aux, x, labels, KEY))
    first, grad, metrics = step(images)
    assert float(first) == float(metrics["metadd_var"]) > 0
    assert "metadd_ai_grad_norm" not in metrics  # λ_ai = 0: its gradient is not traced
    loss = first
    for _ in range(8):
        images = images - 0.05 * grad / jnp.linalg.norm(grad)
        loss, grad, _ = step(images)
    assert float(loss) < float(first)


def _check_central_differences(loss_and_grad, images, *, h=1e-5):
    """⟨∇R, d⟩ against (R(x + h d) − R(x − h d)) / 2h along three random directions d (float64)."""
    _, grad = loss_and_grad(images)
    for seed in range(3):
        d = jax.random.normal(jax.random.key(20 + seed), images.shape, jnp.float64)
        numeric = (float(loss_and_grad(images + h * d)[0]) - float(loss_and_grad(images - h * d)[0])) / (
            2 * h
        )
        np.testing.assert_allclose(float(jnp.vdot(grad, d)), numeric, rtol=1e-6)


@pytest.mark.parametrize(
    ("specs", "options"),
    [
        (SWISH, {"lambda_ai": 0.0, "normalisation": "softmax"}),  # the full second-order path
        (RELU, {"lambda_ai": 0.0}),  # minmax, the Grad-CAM weights' gradient skipped ('auto')
        (SWISH, {"lambda_ai": 0.0, "normalisation": "pre_relu", "cam_term": "alignment"}),
        (SWISH, {"lambda_var": 30.0, "normalisation": "softmax", "kl_target": "backbone"}),  # both terms
    ],
    ids=["softmax-variance", "relu-auto", "pre_relu-alignment", "both-backbone"],
)
def test_the_whole_pixel_gradient_matches_float64_central_differences(specs, options):
    with jax.enable_x64(True):
        aux = _aux(specs, jnp.float64, **options)
        (net,), (variables,) = _networks([{"width": 4, "depth": 1, "act": "swish"}], jnp.float64)
        backbone = lambda x: net.apply(variables, x, train=False)[0]
        images, labels = _images(jnp.float64)
        loss_and_grad = jax.jit(
            lambda x: gradient.metadd_loss_and_grad(aux, x, labels, KEY, backbone=backbone)[:2]
        )
        _check_central_differences(loss_and_grad, images)


def test_auto_weight_gradient_equals_full_where_the_head_is_piecewise_linear():
    auto = _aux(RELU, lambda_ai=0.0)  # the CAM term: the only one the weights' gradient reaches
    assert all(tap.linear_head for tap in auto.taps)
    full = _aux(RELU, lambda_ai=0.0, weight_gradient="full")
    images, labels = _images()
    expected = _grad(full, images, labels)
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(_grad(auto, images, labels), expected, atol=1e-6 * np.abs(expected).max())


def test_on_a_swish_auxiliary_auto_keeps_the_path_the_shortcut_would_change():
    auto = _aux(SWISH, lambda_ai=0.0, normalisation="softmax")
    assert not any(tap.linear_head for tap in auto.taps)
    images, labels = _images()
    full = _grad(_aux(SWISH, lambda_ai=0.0, normalisation="softmax", weight_gradient="full"), images, labels)
    np.testing.assert_array_equal(_grad(auto, images, labels), full)
    shortcut = auto.replace(taps=tuple(tap._replace(linear_head=True) for tap in auto.taps))
    assert np.abs(_grad(shortcut, images, labels) - full).max() > 1e-3 * np.abs(full).max()


# ---- the balance ----


def _term_gradients(aux, images, labels):
    """∇L_var and ∇L_ai, each by its own reverse pass (no pullback shared)."""
    value = lambda x, t: gradient.term_values(aux, x, labels)[0][t]
    return [np.asarray(jax.grad(value)(images, t)) for t in (0, 1)]


@pytest.mark.parametrize(("var_ratio", "ai_ratio"), [(0.3, 0.0), (0.0, 0.05), (0.3, 0.05)])
def test_ratio_balance_gives_each_term_its_fraction_of_the_base_norm(var_ratio, ai_ratio):
    aux = _aux(RELU, balance="ratio", var_ratio=var_ratio, ai_ratio=ai_ratio, normalisation="softmax")
    images, labels = _images()
    base = 2.5
    _, grad, metrics = gradient.metadd_loss_and_grad(aux, images, labels, KEY, base_norm=jnp.float32(base))
    g_var, g_ai = _term_gradients(aux, images, labels)
    expected = base * (var_ratio * g_var / np.linalg.norm(g_var) + ai_ratio * g_ai / np.linalg.norm(g_ai))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    if not (var_ratio and ai_ratio):
        np.testing.assert_allclose(float(jnp.linalg.norm(grad)), base * (var_ratio + ai_ratio), rtol=1e-5)
    for name, ratio, g in (("var", var_ratio, g_var), ("ai", ai_ratio, g_ai)):
        if ratio:
            np.testing.assert_allclose(
                float(metrics[f"metadd_{name}_grad_norm"]), np.linalg.norm(g), rtol=1e-5
            )
            implied = ratio * base / np.linalg.norm(g)
            np.testing.assert_allclose(float(metrics[f"metadd_{name}_weight"]), implied, rtol=1e-5)


def test_fixed_balance_logs_each_terms_own_gradient_norm_and_adds_their_weighted_sum():
    aux = _aux(RELU, lambda_var=3.0, lambda_ai=0.5)
    images, labels = _images()
    _, grad, metrics = gradient.metadd_loss_and_grad(aux, images, labels, KEY)
    g_var, g_ai = _term_gradients(aux, images, labels)
    np.testing.assert_allclose(float(metrics["metadd_var_grad_norm"]), np.linalg.norm(g_var), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["metadd_ai_grad_norm"]), np.linalg.norm(g_ai), rtol=1e-5)
    expected = 3.0 * g_var + 0.5 * g_ai
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("image_chunk", [1, 2, 4])  # 4: the largest divisor of 6 not above it, 3
def test_a_chunked_gradient_equals_the_gradient_of_all_images_at_once(image_chunk):
    aux = _aux(RELU, lambda_var=3.0, lambda_ai=0.5, image_chunk=image_chunk, normalisation="softmax")
    images, labels = _images()
    loss, grad, metrics = gradient.metadd_loss_and_grad(aux, images, labels, KEY)
    g_var, g_ai = _term_gradients(aux, images, labels)
    expected = 3.0 * g_var + 0.5 * g_ai
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    (l_var, l_ai), fractions = gradient.term_values(aux, images, labels)
    np.testing.assert_allclose(float(loss), 3.0 * float(l_var) + 0.5 * float(l_ai), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["metadd_var_grad_norm"]), np.linalg.norm(g_var), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["meta_fraction"]), float(fractions["meta_fraction"]), atol=1e-7)


def test_largest_divisor_by_hand():
    assert [gradient.largest_divisor(12, k) for k in (1, 5, 6, 11, 40)] == [1, 4, 6, 6, 12]
    assert gradient.largest_divisor(7, 6) == 1


def test_pixel_step_hands_the_applied_base_norm_to_the_ratio_balance():
    aux = _aux(RELU, balance="ratio", var_ratio=0.0, ai_ratio=0.5)
    images, labels = _images()
    target = jax.random.normal(jax.random.key(7), images.shape)
    base_grad = images - target  # of ½‖x − target‖²
    loss_and_grad = lambda x, key: (0.5 * jnp.sum((x - target) ** 2), x - target, {})
    tx = optax.sgd(1.0)  # new = images − (applied base gradient + g_R)
    norm = float(jnp.linalg.norm(base_grad))
    for hooks, applied_norm in (
        (Hooks(metadd=aux), norm),
        (Hooks(metadd=aux, grad_norm=jnp.float32(3.0)), 3.0),
    ):
        new, _, metrics = pixel_step(loss_and_grad, tx, images, tx.init(images), labels, KEY, hooks=hooks)
        metadd_part = images - new - base_grad * (applied_norm / norm)
        np.testing.assert_allclose(float(jnp.linalg.norm(metadd_part)), 0.5 * applied_norm, rtol=1e-4)
        assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-6)  # the base norm, before hooks


# ---- the KL to the base method's network ----


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_the_kl_to_the_backbone_by_hand():
    models, variables = _networks(RELU)
    aux = metadd.make_auxiliaries(models, variables, SHAPE, metadd.Options(kl_target="backbone"))
    images, labels = _images()
    backbone = lambda x: models[0].apply(variables[0], x, train=False)[0]  # auxiliary 0 as the backbone
    _, _, metrics = gradient.metadd_loss_and_grad(aux, images, labels, KEY, backbone=backbone)
    logits = [np.asarray(m.apply(v, images, train=False)[0]) for m, v in zip(models, variables, strict=True)]
    log_p = np.stack([_log_softmax(z) for z in logits])
    ce = -log_p[:, np.arange(len(labels)), np.asarray(labels)].mean(axis=1).sum()
    kl = sum(np.sum(np.exp(log_p[0]) * (log_p[0] - log_p[m]), axis=-1).mean() for m in range(len(models)))
    np.testing.assert_allclose(float(metrics["metadd_ai"]), ce + kl, rtol=1e-5)


def test_a_backbone_target_without_the_methods_network_is_refused_by_name():
    aux = _aux(RELU, kl_target="backbone")
    images, labels = _images()
    with pytest.raises(UserError, match=r"kl_target='backbone' needs the base method's own network's logits"):
        metadd.add_gradient(aux, images, labels, KEY, jnp.zeros_like(images))


# ---- the auxiliaries ----


def test_the_report_gives_every_auxiliarys_accuracy_and_names_the_weak_ones():
    taps = [cam.Tap(("norm2",), (3, 3, 128), True), cam.Tap(("conv4",), (3, 3, 192), False)] * 2
    accuracies = [("ConvNet", 0.831), ("AlexNet", 0.166), ("ConvNetBN", 0.203), ("VGG11", 0.8 * 0.831)]
    lines = metadd.auxiliary_report(accuracies, taps, metadd.Options())
    assert lines[0].startswith("MetaDD auxiliary ConvNet: test accuracy 83.1%, Grad-CAM at norm2 (3x3x128)")
    assert "skipped" in lines[0] and "gradient kept" in lines[1]
    warnings = [line for line in lines if line.startswith("Warning")]
    assert [w.split()[3] for w in warnings] == ["AlexNet", "ConvNetBN"]  # VGG11: exactly 0.8 x the best
    assert "(ConvNet, 83.1%)" in warnings[0]


def test_loading_the_auxiliaries_logs_the_accuracies_teachers_json_records(tiny_real, tmp_path):
    from jaxdd import teachers
    from jaxdd.config import base_config, resolve_backend

    values = base_config().to_dict()
    values["dataset"] = "blobs"
    values["teachers"].update({"dir": str(tmp_path), "epochs": 1, "batch_size": 12})
    values["metadd"].update({"enabled": True, "archs": list(RELU), "min_aux_accuracy": 1.0})
    config = resolve_backend(ml_collections.ConfigDict(values))  # the backend's choices, as validate's
    lines = []
    aux = metadd.load_auxiliaries(config, tiny_real, log=lines.append)
    assert [tap.map_shape for tap in aux.taps] == [(6, 6, 4), (6, 6, 4)]
    options = teachers.options_from_section(config.teachers, "blobs")
    recorded = teachers.records(options, tiny_real, metadd.arch_list(config.metadd))
    for name, record in recorded.items():
        assert any(
            f"auxiliary {name}: test accuracy {100 * record['test_accuracy']:.1f}%" in x for x in lines
        )
    best = max(record["test_accuracy"] for record in recorded.values())
    weak = [name for name, record in recorded.items() if record["test_accuracy"] < best]  # the bar is 1.0
    assert weak and [x.split()[3] for x in lines if x.startswith("Warning: MetaDD")] == weak


@pytest.mark.parametrize(("min_map_size", "expected"), [(0, (3, 3, 4)), (4, (6, 6, 4)), (7, (12, 12, 4))])
def test_the_tap_is_the_last_map_at_least_min_map_size_wide(min_map_size, expected):
    # ConvNet depth 3 at 8x8 (the first conv pads by 3): blocks of 12, 6 and 3 pixels before pooling
    aux = _aux([{"width": 4, "depth": 3}], min_map_size=min_map_size, weight_gradient="full")
    assert aux.taps[0].map_shape == expected
