"""Knowledge-distillation evaluation (DESIGN §4.5): the loss against NumPy, α = 0 is plain training (the
same parameters and accuracies as the plain protocol), the teacher labels the augmented batch, the τ
search uses a validation split, the table shows plain and KD columns side by side, config validation."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, eval_settings, evaluation, kd, results, run_eval, settings, synthetic, training
from jaxdd.config import base_config, resolve_backend, validate
from jaxdd.errors import UserError
from jaxdd.models import ConvNetSpec, get_model

TINY = ConvNetSpec(width=8, depth=1)


pytestmark = pytest.mark.usefixtures("fast_compilation")


def _numpy_kd_loss(student, teacher, labels, alpha, temperature):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p_t = np.exp(log_softmax(teacher / temperature))
    kl = np.sum(p_t * (np.log(p_t) - log_softmax(student / temperature)), -1).mean()
    ce = -log_softmax(student)[np.arange(len(labels)), labels].mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def test_kd_loss_matches_numpy():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    for alpha, temperature in ((0.5, 1.5), (0.3, 4.0), (1.0, 0.7), (0.0, 2.0)):
        got = kd.kd_loss(
            jnp.float32(student),
            jnp.float32(teacher),
            jnp.int32(labels),
            alpha=alpha,
            temperature=temperature,
        )
        want = _numpy_kd_loss(student, teacher, labels, alpha, temperature)
        np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_kd_loss_properties():
    logits = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = jnp.asarray([0, 1])
    # the student equal to the teacher: no KD term
    assert float(kd.kd_loss(logits, logits, labels, alpha=1.0, temperature=2.0)) == pytest.approx(0, abs=1e-6)
    # a tiny τ: one-hot teacher probabilities, a finite loss and gradient
    loss, grad = jax.value_and_grad(
        lambda s: kd.kd_loss(s, logits[::-1], labels, alpha=0.5, temperature=1e-4)
    )(logits)
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()


def test_temperature_decays_per_epoch_to_its_floor():
    params = kd.KDParams.create(alpha=0.5, temperature=1.5, temperature_decay=0.9, min_temperature=0.5)
    taus = [float(kd.temperature_at(params, jnp.int32(e))) for e in range(12)]
    np.testing.assert_allclose(taus[:3], [1.5, 1.35, 1.215], rtol=1e-6)
    assert taus[-1] == pytest.approx(0.5) and min(taus) == pytest.approx(0.5)


def test_the_loss_sees_the_augmented_batch(blobs):
    images, labels = blobs(3, 2)
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    tx = evaluation.protocol_optimizer(eval_settings.EvalProtocol(epochs=1), 6)
    state = training.init_train_state(model, jax.random.PRNGKey(0), (8, 8, 1), tx)
    key = jax.random.PRNGKey(1)
    aug = lambda x, k: augment.augment(x, k, strategy="scale_rotate", siamese=False)
    _, seen = training.sgd_step(
        model, tx, state, images, labels, key, augment=aug, loss=lambda logits, labels, x: jnp.sum(x)
    )
    np.testing.assert_allclose(float(seen), float(jnp.sum(aug(images, key))), rtol=1e-5)
    assert not np.isclose(float(seen), float(np.sum(images)))


def _teacher(images, labels, protocol):
    model = get_model(TINY, num_classes=3, image_shape=images.shape[1:])
    return model, kd._train_teacher(model, protocol, jax.random.PRNGKey(9), images, labels)


@pytest.mark.parametrize("strategy", ["none", "scale_rotate"])
def test_alpha_zero_is_plain_cross_entropy_training(blobs, strategy):
    images, labels = (jnp.asarray(a) for a in blobs(3, 5, seed=3))
    protocol = eval_settings.EvalProtocol(epochs=3, batch_size=4, augment=strategy)  # 15 images: a remainder
    teacher_model, teacher_state = _teacher(images, labels, protocol)
    student = get_model(ConvNetSpec(width=4, depth=1, norm="batchnorm"), num_classes=3, image_shape=(8, 8, 1))
    key = jax.random.PRNGKey(2)
    plain = jax.jit(evaluation.train_network, static_argnums=(0, 1))(student, protocol, key, images, labels)
    params = kd.KDParams.create(alpha=0.0, temperature=2.0, temperature_decay=0.9)
    train_kd = jax.jit(evaluation.train_student, static_argnums=0)
    kd_student = kd.student(student, protocol, teacher_model)
    distilled = train_kd(kd_student, key, images, labels, (teacher_state, params))
    jax.tree.map(
        np.testing.assert_array_equal,  # exactly: 0·KL adds nothing, 1·CE changes nothing
        (plain.params, plain.batch_stats),
        (distilled.params, distilled.batch_stats),
    )
    half = kd.KDParams.create(alpha=0.5, temperature=2.0)
    other = train_kd(kd_student, key, images, labels, (teacher_state, half))
    assert not np.allclose(other.params["classifier"]["kernel"], plain.params["classifier"]["kernel"])


def _real(blobs):
    from jaxdd.data.real import from_arrays

    train_x, train_y = blobs(3, 12, seed=1)
    test_x, test_y = blobs(3, 6, seed=2)
    return from_arrays(
        name="blobs", train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
        mean=(0.5,), std=(0.25,), class_names=("a", "b", "c"),
    )  # fmt: skip


def test_kd_students_pair_with_the_plain_networks_and_search_on_validation(blobs):
    real = _real(blobs)
    synset = synthetic.init_real(real, 2, jax.random.PRNGKey(0))
    protocol = eval_settings.EvalProtocol(epochs=2, batch_size=4)
    key = jax.random.PRNGKey(4)
    archs = ("MLP",)
    options = dict(networks=evaluation.Networks(num_nets=2), protocol=protocol, log=lambda _: None)
    plain = evaluation.evaluate_archs(archs, real, synset.images, synset.labels, key, **options)
    zero = kd.KDOptions(alpha=0.0, teacher="MLP")
    students = kd.evaluate_archs_kd(archs, real, synset.images, synset.labels, key, options=zero, **options)
    np.testing.assert_allclose(students["MLP"]["accs"], plain["MLP"]["accs"], atol=1e-6)
    assert students["MLP"]["temperature"] == 1.5 and 0 <= students["MLP"]["teacher_acc"] <= 1

    searched = kd.KDOptions(teacher="MLP", temperatures="1,4", val_per_class=4)
    found = kd.evaluate_archs_kd(archs, real, synset.images, synset.labels, key, options=searched, **options)
    summary = found["MLP"]
    assert set(summary["search"]) == {"1.0", "4.0"}
    assert summary["temperature"] == max((1.0, 4.0), key=lambda t: summary["search"][str(t)])
    val_x, val_y = kd.validation_split(real, 4, jax.random.PRNGKey(0))
    assert val_x.shape == (12, 8, 8, 1) and np.bincount(np.asarray(val_y)).tolist() == [4, 4, 4]
    train_rows = {tuple(np.asarray(x).ravel()) for x in real.train_images}
    assert all(tuple(np.asarray(x).ravel()) in train_rows for x in val_x)  # never the test set


def test_table_shows_plain_and_kd_columns_side_by_side(blobs, tmp_path):
    real = _real(blobs)
    config = base_config()
    config.update({"dataset": "digits", "ipc": 2, "method": "dc"})
    config.eval.update({"archs": "MLP", "epochs": 2, "num_nets": 2, "batch_size": 4, "baselines": "random"})
    config.kd.update({"enabled": True, "teacher": "MLP"})
    resolve_backend(config)
    synset = synthetic.init_real(real, 2, jax.random.PRNGKey(1))
    out = run_eval.evaluate_synset(config, real, synset, tmp_path, log=lambda _: None)
    assert list(out) == ["MLP", "MLP+KD"]
    assert list(json.loads((tmp_path / "eval.json").read_text())) == ["MLP", "MLP+KD"]
    table = (tmp_path / "table.md").read_text()
    assert "| set | MLP | MLP+KD |" in table
    random_row = next(line for line in table.splitlines() if line.startswith("| random real"))
    assert random_row.endswith("| – |")
    assert "+KD: students" in table and "α 0.5" in table
    assert "+KD" in results.collect_table([tmp_path])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"alpha": 1.5}, "kd.alpha=1.5"),
        ({"temperature": 0.0}, "kd.temperature=0.0"),
        ({"temperature_decay": 1.5}, "kd.temperature_decay=1.5"),
        ({"temperatures": "1,x"}, "kd.temperatures='1,x'"),
        ({"temperatures": "1,2", "val_per_class": 1000}, "kd.val_per_class=1000"),
        ({"teacher": "LeNet"}, "kd.teacher='LeNet'"),
        ({"teacher": "ResNet99"}, "ResNet99"),
    ],
)
def test_kd_validation_names_the_value(changes, expected):
    config = base_config()
    config.eval.archs = "ConvNet"
    config.kd.enabled = True
    config.kd.update(changes)
    with pytest.raises(UserError) as error:
        validate(config)
    assert expected in str(error.value)
    config.kd.enabled = False  # switched off: its numbers are still checked, its teacher is not built
    if "teacher" in changes:
        validate(config)
    else:
        with pytest.raises(UserError, match=re.escape(expected)):
            validate(config)


def test_kd_options_are_the_section_and_refuse_a_bad_value_naming_the_key():
    section = kd.default_config()
    assert section.enabled is False and settings.from_section(kd.KDOptions, section) == kd.KDOptions()
    assert kd.KDOptions(temperatures="(1, 1.5,2)").temperature_choices == (1.0, 1.5, 2.0)
    assert kd.KDOptions().temperature_choices == ()
    for changes, expected in (
        ({"alpha": -0.1}, "kd.alpha=-0.1"),
        ({"min_temperature": 0.0}, "kd.min_temperature=0.0"),
        ({"temperatures": "2,0.001"}, "kd temperature 0.001 is below kd.min_temperature=0.01"),
        ({"search_nets": 0}, "kd.search_nets=0"),
        ({"val_per_class": 2.5}, "kd.val_per_class=2.5"),
    ):
        with pytest.raises(UserError, match=re.escape(expected)):
            kd.KDOptions(**changes)
