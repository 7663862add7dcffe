"""Tests of the reference model zoo: parameter counts, shapes, PyTorch-default init, BatchNorm, errors.

Big nets are only traced abstractly (``jax.eval_shape``); real forward passes use tiny variants.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.errors import UserError
from jaxdd.models import (
    MODELS,
    ConvNetSpec,
    ResNet18,
    check_input_shape,
    get_model,
    model_names,
    uses_batch_norm,
)
from jaxdd.models.layers import BatchNorm, Conv2d

SHAPES = {"28x28x1/10": ((28, 28, 1), 10), "32x32x3/10": ((32, 32, 3), 10), "32x32x3/100": ((32, 32, 3), 100)}

# sum(p.numel() for p in net.parameters()) of the PyTorch reference networks, columns as SHAPES. Computed
# with torch 2.13.0 (CPU) from a scratch re-statement of VICO-UoE/DatasetCondensation networks.py and
# utils.get_network (default ConvNet: width 128, depth 3, relu, instancenorm, avgpooling), outside this
# repository; each net was also run on a zero batch of its shape. BN running statistics are buffers in
# PyTorch (and `batch_stats` here), not parameters.
REFERENCE_PARAMS = {
    "ConvNet": (317706, 320010, 504420),
    "ConvNetBN": (317706, 320010, 504420),
    "ConvNetIN": (317706, 320010, 504420),
    "ConvNetLN": (661002, 663306, 847716),
    "ConvNetGN": (317706, 320010, 504420),
    "ConvNetNN": (316938, 319242, 503652),
    "ConvNetD1": (329226, 331530, 3280740),
    "ConvNetD2": (231306, 233610, 970980),
    "ConvNetD3": (317706, 320010, 504420),
    "ConvNetD4": (450186, 452490, 498660),
    "ConvNetW32": (24138, 24714, 70884),
    "ConvNetW64": (85130, 86282, 178532),
    "ConvNetW128": (317706, 320010, 504420),
    "ConvNetW256": (1225226, 1229834, 1598564),
    "ConvNetAS": (317706, 320010, 504420),
    "ConvNetAR": (317706, 320010, 504420),
    "ConvNetAL": (317706, 320010, 504420),
    "ConvNetASwish": (317706, 320010, 504420),
    "ConvNetASwishBN": (317706, 320010, 504420),
    "ConvNetMP": (317706, 320010, 504420),
    "ConvNetAP": (317706, 320010, 504420),
    "ConvNetNP": (1607946, 1610250, 13406820),
    "MLP": (118282, 411146, 422756),
    "LeNet": (61706, 62006, 69656),
    "AlexNet": (1865802, 1872202, 2148772),
    "AlexNetBN": (1867722, 1874122, 2150692),
    "VGG11": (9229962, 9231114, 9277284),
    "VGG11BN": (9229962, 9231114, 9277284),
    "ResNet18": (11172810, 11173962, 11220132),
    "ResNet18BN": (11172810, 11173962, 11220132),
    "ResNet18BN_AP": (11213770, 11250762, 11988132),
}

# Last spatial map (h, w, C) at 28x28x1 and at 32x32x3, worked out by hand from the reference layers.
_CONVNET_MAPS = {"ConvNetD1": (16, 16, 128), "ConvNetD2": (8, 8, 128), "ConvNetD4": (2, 2, 128)}
_CONVNET_MAPS |= {"ConvNetW32": (4, 4, 32), "ConvNetW64": (4, 4, 64), "ConvNetW256": (4, 4, 256)}
_CONVNET_MAPS |= {"ConvNetNP": (32, 32, 128)}
FEATURE_MAPS = {
    **{n: 2 * (_CONVNET_MAPS.get(n, (4, 4, 128)),) for n in REFERENCE_PARAMS if n.startswith("ConvNet")},
    "MLP": (None, None),
    "LeNet": ((5, 5, 16),) * 2,
    "AlexNet": ((4, 4, 192),) * 2,
    "AlexNetBN": ((4, 4, 192),) * 2,
    "VGG11": ((1, 1, 512),) * 2,
    "VGG11BN": ((1, 1, 512),) * 2,
    "ResNet18": ((4, 4, 512),) * 2,
    "ResNet18BN": ((4, 4, 512),) * 2,
    "ResNet18BN_AP": ((3, 3, 512), (4, 4, 512)),
}
# Width of the features the classifier sees, where it is not the flattened feature map.
EMBED_DIMS = {"MLP": 128, "LeNet": 84, "ResNet18": 512, "ResNet18BN": 512}


def _abstract(model, image_shape, batch=2):
    """((logits, out), variables) as ShapeDtypeStructs, without running the net."""
    x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)


def _key(seed):
    # threefry's unrolled rounds cost ~25 s of XLA:CPU compile for a ResNet init (one per parameter);
    # the rbg generator compiles in ~4 s. Abstract traces keep the default key.
    return jax.random.key(seed, impl="rbg")


def _numpy_variables(model, x, seed=0):
    """Variables of the right structure filled by NumPy (running stats 0 / 1), skipping init's compile."""
    rng = np.random.default_rng(seed)
    abstract = _abstract(model, x.shape[1:], batch=x.shape[0])[1]

    def fill(path, a):
        last = path[-1].key
        if last in ("mean", "var"):
            return np.full(a.shape, float(last == "var"), np.float32)
        return rng.uniform(-0.5, 0.5, a.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _jit(fn, **static):
    """``fn`` with keyword arguments fixed, compiled once: eager Flax compiles every primitive separately."""
    return jax.jit(functools.partial(fn, **static))


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_registry_holds_exactly_the_reference_names():
    assert set(model_names()) == set(REFERENCE_PARAMS) == set(MODELS)


@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_param_count_and_output_shapes_match_reference(name, shape_id):
    image_shape, num_classes = SHAPES[shape_id]
    model = get_model(name, num_classes=num_classes, image_shape=image_shape)
    (logits, out), variables = _abstract(model, image_shape)

    assert _count(variables["params"]) == REFERENCE_PARAMS[name][list(SHAPES).index(shape_id)]
    assert logits.shape == (2, num_classes)
    feature_map = FEATURE_MAPS[name][0 if image_shape[-1] == 1 else 1]
    if feature_map is None:
        assert set(out) == {"embedding"}
    else:
        assert set(out) == {"embedding", "feature_map"}
        assert out["feature_map"].shape == (2, *feature_map)
    assert out["embedding"].shape == (2, EMBED_DIMS.get(name, feature_map and int(np.prod(feature_map))))
    has_bn = "BN" in name
    assert uses_batch_norm(name) == uses_batch_norm(model) == has_bn
    assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})


def test_layernorm_affine_covers_channels_and_space():
    """The reference ConvNet LayerNorm is nn.LayerNorm([C, H, W]) with an elementwise affine."""
    model = get_model("ConvNetLN", num_classes=10, image_shape=(32, 32, 3))
    params = _abstract(model, (32, 32, 3))[1]["params"]
    assert [params[f"norm{d}"]["scale"].shape for d in range(3)] == [
        (32, 32, 128),
        (16, 16, 128),
        (8, 8, 128),
    ]


def test_init_matches_pytorch_default():
    """Conv/Dense weights and biases ~ U(±1/sqrt(fan_in)): bounded, filling the range, std bound/sqrt(3)."""
    model = get_model(ConvNetSpec(width=128, depth=2), num_classes=10, image_shape=(8, 8, 3))
    params = _jit(model.init, train=False)(_key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    for layer, fan_in, std_tol in (("conv0", 27, 0.05), ("conv1", 1152, 0.01), ("classifier", 512, 0.02)):
        bound = 1 / np.sqrt(fan_in)
        w = np.asarray(params[layer]["kernel"])
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert np.std(w) == pytest.approx(bound / np.sqrt(3), rel=std_tol)
        b = np.asarray(params[layer]["bias"])
        assert np.abs(b).max() <= bound and np.std(b) == pytest.approx(bound / np.sqrt(3), rel=0.4)
    np.testing.assert_array_equal(params["norm0"]["scale"], 1.0)
    np.testing.assert_array_equal(params["norm0"]["bias"], 0.0)


def _numpy_conv(x, w, b, stride, padding):
    """Cross-correlation with zero padding, PyTorch's Conv2d semantics, NHWC / HWIO, by explicit loops."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k = w.shape[0]
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            y[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
    return y + b


@pytest.mark.parametrize("k,padding,stride", [(3, 3, 1), (5, 4, 1), (3, 1, 1), (3, 1, 2), (5, 0, 1)])
def test_conv_padding_is_exact(k, padding, stride):
    """Both padding paths (jnp.pad + VALID for wide pads, the conv's own pads otherwise) equal PyTorch's."""
    rng = np.random.default_rng(k * 100 + padding * 10 + stride)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    params = {
        "kernel": rng.normal(size=(k, k, 3, 4)).astype(np.float32),
        "bias": rng.normal(size=4).astype(np.float32),
    }
    conv = Conv2d(4, k, stride=stride, padding=padding)
    expected = _numpy_conv(x, params["kernel"], params["bias"], stride, padding)
    np.testing.assert_allclose(jax.jit(conv.apply)({"params": params}, x), expected, rtol=1e-5, atol=1e-4)


def test_batchnorm_follows_pytorch():
    """Train: biased batch variance to normalise, unbiased one into the running average (momentum 0.1)."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(4, 3, 3, 5)) * 2 + 1).astype(np.float32)
    scale, bias = rng.uniform(0.5, 2, 5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    stats = {"mean": rng.normal(size=5).astype(np.float32), "var": rng.uniform(0.5, 2, 5).astype(np.float32)}
    variables = {"params": {"scale": scale, "bias": bias}, "batch_stats": stats}
    bn = BatchNorm()
    y, updates = _jit(bn.apply, train=True, mutable=["batch_stats"])(variables, x)
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * stats["mean"] + 0.1 * mean, rtol=1e-5)
    unbiased = x.var((0, 1, 2), ddof=1)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 * stats["var"] + 0.1 * unbiased, rtol=1e-5)
    # eval mode normalises with the running averages and can report the input's batch statistics
    y_eval, recorded = _jit(bn.apply, train=False, mutable=["bn_stats"])(variables, x)
    expected = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * scale + bias
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(recorded["bn_stats"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recorded["bn_stats"]["var"], var, rtol=1e-5)


@pytest.mark.parametrize(
    "model",
    [
        get_model(ConvNetSpec(width=8, depth=1, norm="batchnorm"), num_classes=3, image_shape=(8, 8, 3)),
        ResNet18(num_classes=3, norm="batchnorm", downsample="avgpool", widths=(4, 4, 8, 8)),
    ],
    ids=["ConvNetBN-tiny", "ResNet18BN_AP-tiny"],
)
def test_bn_nets_update_batch_stats_in_train_mode(model):
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 3))
    variables = _numpy_variables(model, x)
    (logits, out), updates = _jit(model.apply, train=True, mutable=["batch_stats"])(variables, x)
    assert logits.shape == (4, 3) and set(out) == {"embedding", "feature_map"}
    before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
    assert len(before) == len(after) > 0
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_embedding_is_what_the_classifier_sees():
    x = jax.random.normal(jax.random.key(5), (3, 8, 8, 1))
    for model, pool in (
        (get_model({"width": 8, "depth": 2}, num_classes=4, image_shape=(8, 8, 1)), "flatten"),
        (ResNet18(num_classes=4, widths=(4, 4, 8, 8)), "mean"),
    ):
        variables = _numpy_variables(model, x)
        logits, out = _jit(model.apply, train=False)(variables, x)
        fm = out["feature_map"]
        expected = fm.reshape(3, -1) if pool == "flatten" else fm.mean((1, 2))
        np.testing.assert_allclose(out["embedding"], expected, rtol=1e-6)
        head = variables["params"]["classifier"]
        np.testing.assert_allclose(
            logits, out["embedding"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6
        )


def test_structured_spec_and_dict_agree():
    from_dict = get_model({"width": 8, "depth": 1, "act": "swish"}, num_classes=5, image_shape=(8, 8, 3))
    from_spec = get_model(ConvNetSpec(width=8, depth=1, act="swish"), num_classes=5, image_shape=(8, 8, 3))
    reference = get_model("ConvNetASwish", num_classes=5, image_shape=(8, 8, 3))
    fields = ("num_classes", "width", "depth", "act", "norm", "pool")
    assert [getattr(from_dict, f) for f in fields] == [getattr(from_spec, f) for f in fields]
    assert dataclasses.asdict(ConvNetSpec(act="swish")) == {f: getattr(reference, f) for f in fields[1:]}
    assert uses_batch_norm({"norm": "batchnorm"}) and not uses_batch_norm(ConvNetSpec())


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as info:
        get_model("ConvNetXL", num_classes=10, image_shape=(32, 32, 3))
    assert "'ConvNetXL'" in str(info.value)
    assert all(name in str(info.value) for name in model_names())


@pytest.mark.parametrize(
    "spec,words",
    [
        ({"act": "gelu"}, ["'gelu'", "swish"]),
        ({"widht": 64}, ["widht", "width"]),
        ({"depth": 0}, ["depth=0"]),
    ],
)
def test_bad_spec_is_a_user_error(spec, words):
    with pytest.raises(UserError) as info:
        get_model(spec, num_classes=10, image_shape=(32, 32, 3))
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize("image_shape,num_classes", [((32, 32), 10), ((32, 0, 3), 10), ((32, 32, 3), 0)])
def test_bad_shape_or_class_count_is_a_user_error(image_shape, num_classes):
    with pytest.raises(UserError, match="must be"):
        get_model("ConvNet", num_classes=num_classes, image_shape=image_shape)


def test_too_small_images_are_a_user_error():
    message = "VGG11 needs images of at least 28x28 (5 max-pools); dataset images are 8x8"
    for check in (get_model, lambda s, **kw: check_input_shape(s, kw["image_shape"], kw["num_classes"])):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check("VGG11", num_classes=10, image_shape=(8, 8, 1))


@pytest.mark.parametrize(
    "name",
    ["ConvNet", "ConvNetD4", "ConvNetNP", "MLP", "LeNet", "AlexNet", "VGG11", "ResNet18", "ResNet18BN_AP"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_min_image_size_agrees_with_tracing(name, channels):
    """The arithmetic bound get_model uses is tight: the net traces at it and breaks just below it."""
    model = MODELS[name](num_classes=10)
    size, _ = model.min_image_size(channels)
    check_input_shape(name, (size, size, channels), 10)
    if size > 1:
        try:
            (logits, out), _ = _abstract(model, (size - 1, size - 1, channels))
            broken = any(0 in a.shape for a in (logits, *out.values()))
        except Exception:
            broken = True
        assert broken or _embeds_every_image_alike(model, (size - 1, size - 1, channels))


def _embeds_every_image_alike(model, image_shape) -> bool:
    """Whether two different random images get the same embedding (a net that cannot see its input)."""
    images = jax.random.normal(_key(1), (2, *image_shape))
    variables = model.init(_key(0), images, train=False)
    _, out = model.apply(variables, images, train=False)
    return bool(np.allclose(out["embedding"][0], out["embedding"][1], atol=1e-6))


def test_instance_norm_resnet18_is_refused_on_8x8_images_but_resnet18bn_is_not():
    """On 8x8 digits ResNet18's last map is 1x1 and instance norm zeroes it (it trained at chance)."""
    with pytest.raises(UserError, match=r"ResNet18 needs images of at least 9x9.*ResNet18BN works"):
        get_model("ResNet18", num_classes=10, image_shape=(8, 8, 1))
    check_input_shape("ResNet18BN", (8, 8, 1), 10)
    assert not _embeds_every_image_alike(ResNet18(num_classes=10, widths=(4, 4, 8, 8)), (9, 9, 1))


@pytest.mark.parametrize(
    "name,image_shape,feature_map,embed_dim",
    [
        ("ConvNet", (8, 8, 1), (1, 1, 128), 128),  # sklearn digits: padding 3 makes it 12x12
        ("ConvNet", (64, 64, 3), (8, 8, 128), 8192),  # Tiny-ImageNet
        ("ResNet18", (64, 64, 3), (8, 8, 512), 512),
        ("ResNet18BN_AP", (64, 64, 3), (8, 8, 512), 32768),
        ("VGG11", (64, 64, 3), (2, 2, 512), 2048),
        ("AlexNet", (8, 8, 1), (1, 1, 192), 192),
        ("MLP", (8, 8, 1), None, 128),
    ],
)
def test_other_dataset_shapes(name, image_shape, feature_map, embed_dim):
    model = get_model(name, num_classes=7, image_shape=image_shape)
    (logits, out), _ = _abstract(model, image_shape)
    assert logits.shape == (2, 7) and out["embedding"].shape == (2, embed_dim)
    if feature_map is None:
        assert "feature_map" not in out
    else:
        assert out["feature_map"].shape == (2, *feature_map)


def test_a_config_dict_spec_builds_the_same_convnet_as_a_plain_dict():
    import ml_collections

    spec = {"width": 8, "depth": 2, "norm": "batchnorm"}
    from_config = get_model(ml_collections.ConfigDict(spec), num_classes=3, image_shape=(8, 8, 1))
    assert from_config == get_model(spec, num_classes=3, image_shape=(8, 8, 1))
