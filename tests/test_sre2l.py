"""SRe2L against independent expectations: the BatchNorm-statistics distance (0 for a batch whose
statistics are the running ones, positive otherwise, a NumPy sum of norms),
teacher caching (the second call loads), clear errors before any compile, two recover iterations and the
soft-label columns through the driver, an interrupted recover resumed exactly.

Tiny sizes (8x8 images, width-4/8 ConvNets); the module compiles with most XLA optimisations off.
"""

import dataclasses
import json
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdd import eval_settings, methods, relabel, settings, teachers
from jaxdd import run as driver
from jaxdd.config import base_config, validate
from jaxdd.errors import UserError
from jaxdd.methods import Method, get_method, sre2l
from jaxdd.models import get_model
from jaxdd.resized_crop import interpolation_matrix, random_resized_crop_flip

TINY_BN = {"width": 4, "depth": 2, "norm": "batchnorm"}


pytestmark = pytest.mark.usefixtures("fast_compilation")


# ---- the BatchNorm-statistics loss ----


def _recorded(model, variables, images):
    return sre2l.teacher_outputs(model, variables, images)[1]


def test_bn_distance_is_zero_for_a_batch_with_the_running_statistics_and_positive_otherwise(tiny_real):
    model = get_model(TINY_BN, num_classes=3, image_shape=(8, 8, 1))
    variables = dict(model.init(jax.random.key(0), tiny_real.train_images[:1], train=False))
    batch = tiny_real.train_images[:12]
    # eval mode: layer l's input depends on the running statistics of the layers before it, so one pass
    # per layer makes every layer's running statistics those of this batch
    for _ in range(TINY_BN["depth"]):
        variables["batch_stats"] = _recorded(model, variables, batch)
    recorded = _recorded(model, variables, batch)
    assert float(sre2l.bn_statistics_distance(recorded, variables["batch_stats"])) == pytest.approx(
        0, abs=1e-6
    )
    other = _recorded(model, variables, tiny_real.train_images[12:24])
    assert float(sre2l.bn_statistics_distance(other, variables["batch_stats"])) > 1e-3
    # the gradient at a perfect match is finite (zero), not NaN
    grad = jax.grad(
        lambda x: sre2l.bn_statistics_distance(_recorded(model, variables, x), variables["batch_stats"])
    )(batch)
    assert np.isfinite(np.asarray(grad)).all()


def test_pooled_moments_of_equal_shares_are_the_whole_batch_moments():
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(12, 3)) * [1.0, 2.0, 0.5] + [0.0, 3.0, -1.0]
    shares = batch.reshape(4, 3, 3)  # 4 devices, 3 rows each
    per_share = {
        "conv": {"mean": shares.mean(1), "var": shares.var(1)},
        "block": {"bn": {"mean": shares.mean(1), "var": shares.var(1)}},
    }
    pooled = sre2l.pooled_moments(jax.tree.map(jnp.asarray, per_share))
    for node in (pooled["conv"], pooled["block"]["bn"]):
        np.testing.assert_allclose(node["mean"], batch.mean(0), rtol=1e-6)
        np.testing.assert_allclose(node["var"], batch.var(0), rtol=1e-6)


def test_bn_distance_is_the_sum_of_l2_norms_over_layers():
    rng = np.random.default_rng(0)
    tree = lambda: {
        "norm0": {"mean": rng.normal(size=3), "var": rng.uniform(size=3)},
        "block": {"norm1": {"mean": rng.normal(size=5), "var": rng.uniform(size=5)}},
    }
    recorded, running = tree(), tree()
    want = sum(
        np.linalg.norm(np.asarray(r[k]) - np.asarray(b[k]))
        for r, b in (
            (recorded["norm0"], running["norm0"]),
            (recorded["block"]["norm1"], running["block"]["norm1"]),
        )
        for k in ("mean", "var")
    )
    got = sre2l.bn_statistics_distance(
        jax.tree.map(jnp.float32, recorded), jax.tree.map(jnp.float32, running)
    )
    assert float(got) == pytest.approx(want, rel=1e-5)


# ---- relabel ----


def test_views_keep_shapes_and_full_crops_of_a_constant_image_are_constant():
    images = jnp.full((4, 8, 8, 1), 0.7)
    views = random_resized_crop_flip(images, jax.random.key(0), min_scale=0.5)
    assert views.shape == images.shape
    np.testing.assert_allclose(np.asarray(views), 0.7, rtol=1e-5)  # weights sum to 1, edges replicated
    # the whole axis as the box is the identity; half of it, upsampled ×2, interpolates its pixels
    whole = interpolation_matrix(jnp.zeros(1), jnp.full(1, 4.0), 4)[0]
    np.testing.assert_allclose(np.asarray(whole), np.eye(4), atol=1e-6)
    half = interpolation_matrix(jnp.zeros(1), jnp.full(1, 2.0), 4)[0] @ jnp.asarray([0.0, 4.0, 8.0, 12.0])
    np.testing.assert_allclose(np.asarray(half), [0.0, 1.0, 3.0, 4.0], atol=1e-6)


def test_the_relabel_section_is_the_protocol_less_its_derived_values():
    section = sre2l.default_config().relabel
    assert set(section) == {"enabled", "temperature", "epochs", "batch_size", "lr", "weight_decay"}
    assert section.enabled is True
    assert settings.from_section(relabel.RelabelProtocol, section) == relabel.RelabelProtocol()
    protocol = settings.from_section(relabel.RelabelProtocol, section, min_crop_scale=0.5, test_batch_size=7)
    assert (protocol.min_crop_scale, protocol.test_batch_size, protocol.temperature) == (0.5, 7, 20.0)
    for key, value in (("epochs", 0), ("batch_size", 2.0), ("weight_decay", -1.0), ("lr", float("inf"))):
        with pytest.raises(UserError, match=re.escape(f"sre2l.relabel.{key}={value!r}")):
            relabel.RelabelProtocol(**{key: value})


# ---- squeeze: teacher caching ----


def test_a_cached_teacher_is_loaded_instead_of_trained(tiny_real, tmp_path, monkeypatch):
    options = teachers.TeacherOptions(directory=str(tmp_path), protocol=eval_settings.EvalProtocol(epochs=1))
    calls = []
    original = teachers.train_teacher

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(teachers, "train_teacher", counting)
    quiet = lambda _: None
    first = teachers.load_or_train_teacher(TINY_BN, tiny_real, options, log=quiet)
    key = teachers.cache_key(options, "blobs", TINY_BN, (8, 8, 1), 3)
    folder = teachers.entry_dir(options, key)
    assert folder.parent == tmp_path / "blobs" / "ConvNet-w4-d2-relu-batchnorm-avgpool"
    assert json.loads((folder / teachers.META_FILE).read_text())["key"]["protocol"]["epochs"] == 1
    second = teachers.load_or_train_teacher(TINY_BN, tiny_real, options, log=quiet)
    assert calls == [1]
    assert second.test_accuracy == pytest.approx(first.test_accuracy)
    jax.tree.map(np.testing.assert_array_equal, first.variables, second.variables)
    # with training disabled, a missing teacher names its folder, its protocol and the flag
    disabled = teachers.TeacherOptions(directory=str(tmp_path / "empty"), train=False)
    with pytest.raises(
        UserError, match=r"empty/blobs/ConvNet-w4-d2-relu-batchnorm-avgpool.*20 epochs.*teachers\.train"
    ):
        teachers.load_or_train_teacher(TINY_BN, tiny_real, disabled)


def test_a_teacher_trained_another_way_is_never_reused(tiny_real, tmp_path):
    quiet = lambda _: None
    one_epoch = teachers.TeacherOptions(
        directory=str(tmp_path), protocol=eval_settings.EvalProtocol(epochs=1)
    )
    teachers.load_or_train_teacher(TINY_BN, tiny_real, one_epoch, log=quiet)
    base = teachers.cache_key(one_epoch, "blobs", TINY_BN, (8, 8, 1), 3)
    for changed in (
        dataclasses.replace(one_epoch, protocol=eval_settings.EvalProtocol(epochs=2)),
        dataclasses.replace(one_epoch, protocol=eval_settings.EvalProtocol(epochs=1, lr=0.02)),
        dataclasses.replace(one_epoch, protocol=eval_settings.EvalProtocol(epochs=1, augment="flip")),
        dataclasses.replace(one_epoch, seed=1),
    ):
        key = teachers.cache_key(changed, "blobs", TINY_BN, (8, 8, 1), 3)
        assert teachers.entry_dir(changed, key) != teachers.entry_dir(one_epoch, base)
        assert not teachers.is_cached(teachers.entry_dir(changed, key))
    # another architecture version (parameter shapes) is another entry too
    wider = {**TINY_BN, "width": 8}
    assert (
        teachers.cache_key(one_epoch, "blobs", wider, (8, 8, 1), 3)["parameter_shapes_sha256"]
        != base["parameter_shapes_sha256"]
    )
    # the run would now train a 2-epoch teacher rather than load the 1-epoch one
    trained = []
    two = dataclasses.replace(one_epoch, protocol=eval_settings.EvalProtocol(epochs=2))
    teacher = teachers.load_or_train_teacher(TINY_BN, tiny_real, two, log=trained.append)
    assert any("Training teacher" in line and "2 epochs" in line for line in trained)
    assert teacher.meta["key"]["protocol"]["epochs"] == 2


@pytest.mark.parametrize("damage", ["truncated_json", "deleted_variables"])
def test_a_damaged_cache_entry_is_named_and_retrained_or_refused(tiny_real, tmp_path, damage):
    options = teachers.TeacherOptions(directory=str(tmp_path), protocol=eval_settings.EvalProtocol(epochs=1))
    quiet = lambda _: None
    first = teachers.load_or_train_teacher(TINY_BN, tiny_real, options, log=quiet)
    folder = teachers.entry_dir(options, teachers.cache_key(options, "blobs", TINY_BN, (8, 8, 1), 3))
    if damage == "truncated_json":
        meta = folder / teachers.META_FILE
        meta.write_text(meta.read_text()[:40])
    else:
        shutil.rmtree(folder / teachers.VARIABLES_DIR)
    refused = dataclasses.replace(options, train=False)
    with pytest.raises(UserError, match=f"{folder}.*damaged"):
        teachers.load_or_train_teacher(TINY_BN, tiny_real, refused, log=quiet)
    lines = []
    again = teachers.load_or_train_teacher(TINY_BN, tiny_real, options, log=lines.append)
    assert (
        "damaged" in lines[0]
        and str(folder) in lines[0]
        and folder.with_name(folder.name + ".corrupt").is_dir()
    )
    assert again.test_accuracy == pytest.approx(first.test_accuracy)  # the same key retrains the same net
    assert teachers.is_cached(folder)


def test_teacher_training_logs_each_epoch_and_trains_the_evaluation_protocols_network(tiny_real):
    protocol = eval_settings.EvalProtocol(epochs=2, batch_size=16)
    model = get_model(TINY_BN, num_classes=3, image_shape=(8, 8, 1))
    key = jax.random.key(3)
    lines = []
    variables, accuracy = teachers.train_teacher(model, protocol, tiny_real, key, log=lines.append, name="T")
    assert [line.split(" | ")[0] for line in lines] == ["Teacher T: epoch 1/2", "Teacher T: epoch 2/2"]
    assert "loss" in lines[0] and "img/s" in lines[1]
    state = teachers.evaluation.train_network(
        model, protocol, key, tiny_real.train_images, tiny_real.train_labels
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), variables["params"], state.params
    )
    expected = teachers.evaluation.network_accuracy(
        model, protocol, state, tiny_real.test_images, tiny_real.test_labels
    )
    assert accuracy == pytest.approx(float(expected), abs=1e-6)


# ---- the method through the config and the driver ----


def _config(tmp_path, **overrides) -> ml_collections.ConfigDict:
    values = base_config().to_dict()
    values.update({"dataset": "digits", "method": "sre2l", "ipc": 2, "iterations": 2, "init": "noise"})
    values.update({"model": "ConvNetBN", "checkpoint_every": 1, "log_every": 1, "compilation_cache_dir": ""})
    values["teachers"].update({"dir": str(tmp_path / "teachers"), "epochs": 1})
    values["sre2l"].update({"batch_ipc": 1})
    values["sre2l"]["relabel"].update({"epochs": 2})
    values["eval"].update({"archs": "", "baselines": "", "num_nets": 1, "epochs": 2})
    config = ml_collections.ConfigDict(values)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def test_validate_names_bad_values_before_any_compile(tmp_path):
    for key, value, match in (
        ("model", "ConvNet", "no BatchNorm.*ConvNetBN"),
        ("teachers.train", False, r"No cached teacher ConvNetBN.*--config\.teachers\.train=True"),
        ("sre2l.lr_img", 0.0, "sre2l.lr_img"),
        ("sre2l.beta2", 1.0, "sre2l.beta2"),
        ("sre2l.batch_ipc", 3, "sre2l.batch_ipc"),
        ("sre2l.batch_ipc", True, "sre2l.batch_ipc"),
        ("sre2l.relabel.lr", -1.0, "sre2l.relabel.lr"),
        ("sre2l.relabel.temperature", 0.0, "temperature"),
        ("teachers.epochs", 0, "teachers.epochs"),
    ):
        with pytest.raises(UserError, match=match):
            validate(_config(tmp_path, **{key: value}))


def test_recover_step_compiles_once_keeps_pixels_in_range_and_lowers_nothing_to_nan(tiny_real, tmp_path):
    config = _config(tmp_path, **{"model": "ConvNetBN"})
    config.sre2l.batch_ipc = 1
    method = get_method("sre2l")
    model = get_model(TINY_BN, num_classes=3, image_shape=(8, 8, 1))
    variables = dict(model.init(jax.random.key(0), tiny_real.train_images[:1], train=False))
    settings = sre2l.settings_from_config(config, tiny_real)
    state = method.init(config, tiny_real, jax.random.key(1))
    before = sre2l.recover_step._cache_size()
    first, metrics = sre2l.recover_step(model, settings, variables, state, tiny_real)
    second, _ = sre2l.recover_step(model, settings, variables, first, tiny_real)
    assert sre2l.recover_step._cache_size() == before + 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["lr"]) == pytest.approx(0.25)
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    images = np.asarray(second.images)
    assert images.min() >= low - 1e-6 and images.max() <= high + 1e-6
    assert not np.allclose(images, np.asarray(state.images))


def test_two_iterations_and_the_soft_label_columns_through_the_driver(tmp_path, capsys):
    config = _config(tmp_path, **{"eval.archs": "MLP"})
    lines = []
    results = driver.run(config, tmp_path / "run", log=lines.append)
    # the teacher trained by make_step speaks through the run's log, not print
    assert any(line.startswith("Training teacher ConvNetBN") for line in lines)
    assert "Teacher" not in capsys.readouterr().out
    assert list(results) == ["MLP", "MLP+soft"]
    assert 0 <= results["MLP+soft"]["mean"] <= 1 and results["MLP+soft"]["teacher"] == "ConvNetBN"
    steps = [json.loads(line).get("step") for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [s for s in steps if s is not None] == [1, 2]
    assert "MLP+soft" in (tmp_path / "run" / "table.md").read_text()
    (entry,) = (tmp_path / "teachers" / "digits" / "ConvNetBN").glob(f"*/{teachers.META_FILE}")
    recorded = json.loads((tmp_path / "run" / "teachers.json").read_text())
    assert recorded["ConvNetBN"]["folder"] == str(entry.parent)
    assert recorded["ConvNetBN"]["key"]["protocol"]["epochs"] == config.teachers.epochs


def test_an_interrupted_recover_resumes_to_the_same_images(tmp_path, monkeypatch):
    config = _config(tmp_path)
    driver.run(config, tmp_path / "whole", log=lambda _: None)

    def interrupted_step(config, real, *, log):
        step = sre2l.make_step(config, real, log=log)

        def stop_after_one(state, real):
            if int(state.step) == 1:
                raise KeyboardInterrupt  # as a killed run: the checkpoint of iteration 1 is on disk
            return step(state, real)

        return stop_after_one

    with monkeypatch.context() as patch:
        patch.setitem(methods.METHODS, "sre2l", Method(sre2l.init, interrupted_step, sre2l.validate))
        with pytest.raises(KeyboardInterrupt):
            driver.run(config, tmp_path / "resumed", log=lambda _: None)
    lines = []
    driver.run(config, tmp_path / "resumed", log=lines.append)
    assert any("Resumed from the checkpoint of iteration 1" in line for line in lines)
    with np.load(tmp_path / "whole" / "synset.npz") as a, np.load(tmp_path / "resumed" / "synset.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])
