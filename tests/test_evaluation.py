"""The evaluation protocol: learns an easy task, N distinct networks, loop = vmap, one program per student;
`config.eval` and `config.teachers` read once (their dataclasses, their defaults and checks)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxdd import augment, data, eval_settings, evaluation, settings, teachers
from jaxdd.config import base_config, resolve_backend
from jaxdd.errors import UserError
from jaxdd.models import ConvNetSpec, get_model
from jaxdd.run_eval import describe_protocol

TINY = ConvNetSpec(width=8, depth=1)


def _arrays(*arrays):
    return tuple(jax.numpy.asarray(a) for a in arrays)


def test_protocol_reaches_high_accuracy_on_a_separable_set(blobs):
    train_x, train_y = blobs(3, 5, seed=0)
    test_x, test_y = blobs(3, 40, seed=1)
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = eval_settings.EvalProtocol(epochs=60, lr=0.05)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    accs = evaluation.evaluate_model(model, protocol, keys, *_arrays(train_x, train_y, test_x, test_y))
    assert accs.shape == (2,) and accs.min() >= 0.95


def _noisy_task():
    rng = np.random.default_rng(0)
    train_x = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
    test_x = rng.uniform(size=(300, 8, 8, 1)).astype(np.float32)
    return _arrays(train_x, rng.integers(0, 3, 6), test_x, rng.integers(0, 3, 300))


def test_each_key_is_its_own_network_and_the_same_key_the_same_network():
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = eval_settings.EvalProtocol(epochs=3)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    keys = np.stack([k1, k2, k3, k1])
    accs = evaluation.evaluate_model(model, protocol, keys, *_noisy_task(), parallel="loop")
    assert accs[0] == accs[3]
    assert len(set(accs[:3].tolist())) == 3  # chance-level accuracies of three distinct networks
    assert evaluation.summarize(accs[:3])["std"] > 0


def test_vmap_and_loop_train_the_same_networks():
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = eval_settings.EvalProtocol(epochs=3, augment="color_crop_cutout_scale_rotate")
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    data = _noisy_task()
    looped = evaluation.evaluate_model(model, protocol, keys, *data, parallel="loop")
    vmapped = evaluation.evaluate_model(model, protocol, keys, *data, parallel="vmap")
    np.testing.assert_allclose(looped, vmapped, atol=2 / 300)  # at most two borderline test images


@pytest.mark.parametrize(("backend", "expected"), [("cpu", "loop"), ("gpu", "vmap"), ("tpu", "vmap")])
def test_eval_parallel_auto_is_the_backends_measured_choice_recorded_in_the_config(backend, expected):
    config = base_config()
    assert config.eval.parallel == "auto"
    assert (
        resolve_backend(config, backend).eval.parallel == expected == evaluation.backend_parallelism(backend)
    )


def test_the_library_is_given_a_concrete_way_to_train_the_networks():
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    with pytest.raises(UserError, match=r"parallel='auto' must be one of loop, vmap"):
        evaluation.evaluate_model(
            model, eval_settings.EvalProtocol(epochs=1), keys, *_noisy_task(), parallel="auto"
        )


def test_equal_students_share_one_compiled_program():
    """A KD τ search and a second evaluation of the same shapes reuse the program: `Student` is hashed by
    value, not by identity."""
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = eval_settings.EvalProtocol(epochs=1)
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    images, labels, test_images, test_labels = _noisy_task()
    before = evaluation._accuracy_block._cache_size()
    for _ in range(2):  # two distinct but equal students
        student = evaluation.Student(get_model(TINY, num_classes=3, image_shape=(8, 8, 1)), protocol)
        evaluation.train_students(student, keys, images, labels, test=(test_images, test_labels))
    assert evaluation._accuracy_block._cache_size() == before + 1
    plain = evaluation.evaluate_model(model, protocol, keys, images, labels, test_images, test_labels)
    assert evaluation._accuracy_block._cache_size() == before + 1  # the plain student is that student
    np.testing.assert_array_equal(
        plain, evaluation.train_students(student, keys, images, labels, test=(test_images, test_labels))
    )


# ---- config.eval and config.teachers, read once ----

# `dataclasses.asdict` of the protocol is part of the evaluation and teacher cache keys: written out by
# hand, so that a changed field or default (which would orphan every cached result) fails here.
REFERENCE_PROTOCOL = {
    "epochs": 300,
    "batch_size": 256,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_decay_at": 0.5,
    "augment": "none",
    "test_batch_size": 500,
}


@pytest.mark.parametrize(
    "cls", [eval_settings.EvalProtocol, eval_settings.EvalSettings, teachers.TeacherSettings]
)
def test_the_settings_round_trip_through_their_config_section(cls):
    assert settings.from_section(cls, settings.section_config(cls)) == cls()


def test_the_eval_and_teachers_sections_are_the_dataclasses_defaults():
    base = base_config()
    assert base.eval.to_dict() == {
        **REFERENCE_PROTOCOL,
        **settings.section_config(eval_settings.EvalSettings),
    }
    assert "protocol" not in base.eval  # derived at the edge, not a key
    assert base.teachers.to_dict() == settings.section_config(teachers.TeacherSettings).to_dict()
    read = eval_settings.settings_from_section(base.eval, "digits")
    assert read == eval_settings.EvalSettings() and read.arch_names[0] == "ConvNet"
    assert list(dataclasses.asdict(read.protocol).items()) == list(REFERENCE_PROTOCOL.items())


def test_the_teachers_protocol_is_the_evaluations_but_for_its_epochs():
    options = teachers.options_from_section(base_config().teachers, "digits")
    assert dataclasses.asdict(options.protocol) == {**REFERENCE_PROTOCOL, "epochs": 20}
    assert options == teachers.TeacherOptions(directory="~/.cache/jaxdd/teachers")
    section = {"lr": 1, "epochs": 3, "augment": "dsa", "dir": "/tmp/t", "seed": 2}  # a dict read back
    options = teachers.options_from_section(section, "cifar10")
    assert options.protocol == eval_settings.EvalProtocol(
        epochs=3, lr=1.0, augment=augment.default_strategy("cifar10")
    )
    assert isinstance(options.protocol.lr, float) and (options.directory, options.seed) == ("/tmp/t", 2)


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_eval_augment_dsa_is_the_datasets_default_strategy(dataset):
    section = base_config().eval
    section.augment = "dsa"
    protocol = eval_settings.settings_from_section(section, dataset).protocol
    assert protocol.augment == augment.default_strategy(dataset) and protocol.augment_fn() is not None
    section.augment = "crop_flip"
    assert eval_settings.settings_from_section(section, dataset).protocol.augment == "crop_flip"


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("eval", "epochs", 0, r"eval\.epochs=0 must be an integer ≥ 1"),
        ("eval", "batch_size", 2.5, r"eval\.batch_size=2\.5 must be an integer ≥ 1"),
        ("eval", "test_batch_size", 0, r"eval\.test_batch_size=0 must be an integer ≥ 1"),
        ("eval", "num_nets", 0, r"eval\.num_nets=0 must be an integer ≥ 1"),
        ("eval", "lr", -1.0, r"eval\.lr=-1\.0 must be > 0 and finite \(the reference uses 0\.01\)"),
        ("eval", "momentum", 1.0, r"eval\.momentum=1\.0 must lie in \[0, 1\) \(the reference uses 0\.9\)"),
        ("eval", "weight_decay", -1.0, r"eval\.weight_decay=-1\.0 must be ≥ 0 and finite"),
        ("eval", "lr_decay_at", 1.5, r"eval\.lr_decay_at=1\.5 must lie in \[0, 1\]"),
        ("eval", "augment", "crop_spin", r"DSA strategy 'crop_spin': unknown op\(s\) 'spin'"),
        ("eval", "split", "train", r"eval\.split='train' must be 'test' or 'validation'"),
        ("eval", "test_size", -1, r"eval\.test_size=-1 must be an integer ≥ 0"),
        ("eval", "parallel", "threads", r"eval\.parallel='threads' is not one of"),
        ("eval", "baselines", "random,nope", r"eval\.baselines has 'nope'; valid baselines are random"),
        ("eval", "archs", "('ConvNet',", r"eval\.archs=\"\('ConvNet',\" opens '\('"),
        ("teachers", "epochs", 0, r"teachers\.epochs=0 must be an integer ≥ 1"),
        ("teachers", "lr", float("inf"), r"teachers\.lr=inf must be > 0 and finite \(default 0\.01\)"),
        ("teachers", "momentum", -0.1, r"teachers\.momentum=-0\.1 must lie in \[0, 1\) \(default 0\.9\)"),
        ("teachers", "weight_decay", -1.0, r"teachers\.weight_decay=-1\.0 must be ≥ 0 .*\(default 5e-4\)"),
        ("teachers", "dir", "", r"teachers\.dir='' must be a folder path"),
        ("teachers", "seed", -1, r"teachers\.seed=-1 must be an integer ≥ 0"),
        ("teachers", "augment", "crop_spin", r"DSA strategy 'crop_spin'"),
    ],
)
def test_a_bad_eval_or_teachers_value_is_a_user_error_naming_the_key(section, key, value, message):
    values = base_config()[section].to_dict()
    values[key] = value
    read = eval_settings.settings_from_section if section == "eval" else teachers.options_from_section
    with pytest.raises(UserError, match=message):
        read(values, "digits")


def test_the_dataset_refuses_a_test_subset_without_an_image_per_class_and_an_arch_too_small():
    info = data.dataset_info("digits")
    section = base_config().eval
    section.update({"archs": "ConvNet", "test_size": 10})
    eval_settings.validate(section, info)
    section.test_size = 5
    with pytest.raises(UserError, match=r"eval\.test_size=5 is below the 10 classes"):
        eval_settings.validate(section, info)
    section.update({"archs": "ConvNet,VGG11", "test_size": 0})  # 8×8 digits: too small for five max-pools
    with pytest.raises(UserError, match="VGG11"):
        eval_settings.validate(section, info)


def test_the_protocol_line_states_where_the_lr_drops():
    config = base_config()
    assert "lr ×0.1 at half," in describe_protocol(config)
    config.eval.lr_decay_at = 0.25
    assert "lr ×0.1 at 0.25 of the epochs," in describe_protocol(config)


# ---- a set that carries a learned student step size (MTT's α) ----


def _learned_lr_config(**eval_values):
    config = base_config()
    config.update({"dataset": "digits", "ipc": 2, "method": "mtt"})
    config.eval.update({"archs": "MLP", "epochs": 3, "num_nets": 2, "batch_size": 4, "baselines": "random"})
    config.eval.update(eval_values)
    return resolve_backend(config)


def test_a_learned_step_size_trains_the_sets_students_as_eval_lr_would_and_leaves_the_baselines(
    tiny_real, tmp_path
):
    from jaxdd import run_eval, synthetic

    synset = synthetic.init_real(tiny_real, 2, jax.random.PRNGKey(1))

    def evaluate(name, set_lr, **eval_values):
        out = run_eval.evaluate_synset(
            _learned_lr_config(**eval_values), tiny_real, synset, tmp_path / name, learned_lr=set_lr,
            log=lambda _: None,
        )  # fmt: skip
        baselines = json.loads((tmp_path / name / "baselines.json").read_text())
        return out["MLP"]["accs"], {row: cells["MLP"]["accs"] for row, cells in baselines.items()}

    learned, learned_baselines = evaluate("learned", 0.3)
    as_eval_lr, _ = evaluate("eval_lr", None, lr=0.3)
    plain, plain_baselines = evaluate("plain", None)
    switched_off, _ = evaluate("off", 0.3, learned_lr=False)
    assert learned == as_eval_lr != plain  # the set's students: lr 0.3, exactly as eval.lr=0.3 trains them
    assert learned_baselines == plain_baselines  # the random-real baseline keeps eval.lr
    assert switched_off == plain  # eval.learned_lr=False: eval.lr for every set
    assert "lr 0.3 (learned with the set; baselines 0.01)" in (tmp_path / "learned" / "table.md").read_text()


@pytest.mark.parametrize("bad", [0.0, -0.01, float("nan")])
def test_a_learned_step_size_that_cannot_train_is_refused_naming_the_way_out(bad):
    settings = eval_settings.settings_from_section(_learned_lr_config().eval, "digits")
    with pytest.raises(UserError, match=r"learned student step size .* --config.eval.learned_lr=False"):
        settings.set_protocol(bad)
    assert settings.set_protocol(None) == settings.protocol
    assert settings.set_protocol(0.2) == dataclasses.replace(settings.protocol, lr=0.2)


def test_a_saved_set_whose_learned_step_size_cannot_train_is_refused_before_the_data_loads(
    tiny_real, tmp_path, monkeypatch
):
    from jaxdd import run_eval, synthetic

    synset = synthetic.init_real(tiny_real, 2, jax.random.PRNGKey(1))
    path = tmp_path / "synset.npz"
    synthetic.save_npz(path, synset, mean=(0.5,), std=(0.25,), meta={"learned_lr": -0.1})
    monkeypatch.setattr(synthetic, "check_arrays", lambda *args, **kwargs: None)  # blobs, not digits
    monkeypatch.setattr(synthetic, "_check_normalisation", lambda *args: None)
    monkeypatch.setattr(run_eval, "load_real", lambda *args: pytest.fail("the data was loaded"))
    with pytest.raises(UserError, match=r"learned student step size is -0.1"):
        run_eval.evaluate_existing(_learned_lr_config(), tmp_path, synset_path=path)
