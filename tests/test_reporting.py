"""What a run shows a person: synset.png's grid (one row per class, cells of at least 64 px, capped rows)
and progress lines that print only the metrics that mean something while metrics.jsonl keeps them all."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdd import reporting
from jaxdd import run as driver
from jaxdd.config import base_config, resolve_backend
from jaxdd.data.real import from_arrays
from jaxdd.methods import gradient_matching as gm
from jaxdd.methods.base import DistillState, Method


def _coloured_set(num_classes: int, ipc: int, size: int = 8) -> np.ndarray:
    """[num_classes·ipc, size, size, 3] class-major images, image (c, j) one flat colour (10 + 2c,
    5 + 5j, 0)/255: never grey, so no antialiased text pixel and no white padding can match it."""
    c, j = np.divmod(np.arange(num_classes * ipc), ipc)
    colours = np.stack([10 + 2 * c, 5 + 5 * j, np.zeros_like(c)], axis=-1) / 255
    return np.broadcast_to(colours[:, None, None, :], (len(c), size, size, 3)).astype(np.float32)


def _cells(picture: np.ndarray, num_classes: int, ipc: int) -> dict[tuple[int, int], tuple]:
    """{(class, index): (top, left, height, width, pixel count)} of every image found in the picture."""
    coloured = (picture[..., 2] == 0) & (picture[..., 0] >= 10)
    ys, xs = np.nonzero(coloured)
    red, green = picture[ys, xs, 0].astype(int), picture[ys, xs, 1].astype(int)
    found = {}
    for c in range(num_classes):
        for j in range(ipc):
            hit = (red == 10 + 2 * c) & (green == 5 + 5 * j)
            if hit.any():
                y, x = ys[hit], xs[hit]
                found[c, j] = (y.min(), x.min(), y.max() - y.min() + 1, x.max() - x.min() + 1, hit.sum())
    return found


@pytest.mark.parametrize("ipc", [1, 50])
def test_synset_png_has_one_row_per_class_in_order_with_cells_of_at_least_64_px(ipc):
    images = _coloured_set(10, ipc)
    picture = reporting.synset_picture(
        images, class_names=tuple("abcdefghij"), mean=(0.0,) * 3, std=(1.0,) * 3, title="dm on x, IPC"
    )
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    cells = _cells(picture, 10, ipc)
    assert len(cells) == 10 * ipc
    # 8 px enlarged ×8, whole and square
    assert {cell[2:] for cell in cells.values()} == {(64, 64, 64 * 64)}
    tops = np.array([[cells[c, j][0] for j in range(ipc)] for c in range(10)])
    lefts = np.array([[cells[c, j][1] for j in range(ipc)] for c in range(10)])
    assert (tops == tops[:, :1]).all() and (np.diff(tops[:, 0]) >= 64).all()  # class c is row c
    assert (lefts == lefts[:1]).all() and (np.diff(lefts[0]) >= 64).all()  # its images left to right
    assert picture.shape[1] >= lefts[0, -1] + 64 and picture.shape[0] >= tops[-1, 0] + 64
    assert lefts[0, 0] > 8  # the class names stand left of the images


def test_grey_and_large_images_keep_their_size_and_greyscale_becomes_rgb():
    grey = np.linspace(-1, 1, 3 * 2 * 28 * 28, dtype=np.float32).reshape(6, 28, 28, 1)
    picture = reporting.synset_picture(grey, class_names=("a", "b", "c"), mean=(0.5,), std=(0.5,))
    assert picture.shape[2] == 3 and picture.shape[0] >= 3 * 84  # 28 px enlarged ×3
    big = reporting.synset_picture(
        _coloured_set(2, 3, size=64), class_names=("a", "b"), mean=(0.0,) * 3, std=(1.0,) * 3
    )
    assert {cell[2:] for cell in _cells(big, 2, 3).values()} == {(64, 64, 64 * 64)}  # not enlarged


def test_a_hundred_classes_show_the_first_rows_only_and_the_picture_says_so():
    names = tuple(f"class {c}" for c in range(100))
    images = _coloured_set(100, 2)
    options = {"mean": (0.0,) * 3, "std": (1.0,) * 3, "max_rows": 20}
    capped = reporting.synset_picture(images, class_names=names, **options)
    assert {c for c, _ in _cells(capped, 100, 2)} == set(range(20))
    whole = reporting.synset_picture(images[:40], class_names=names[:20], **options)
    shown, alone = _cells(capped, 20, 2), _cells(whole, 20, 2)
    shifts = {(shown[k][0] - alone[k][0], shown[k][1] - alone[k][1]) for k in alone}
    ((down, across),) = shifts  # the same grid, lower by one caption line
    assert down > 0 and across == 0 and capped.shape[0] == whole.shape[0] + down
    lines = reporting.picture_caption(num_classes=100, shown=20, ipc=2, image_hw=(8, 8), scale=8)
    assert lines[-1] == "showing the first 20 of 100 classes (synset.npz holds all of them)"
    assert len(reporting.picture_caption(num_classes=20, shown=20, ipc=2, image_hw=(8, 8), scale=8)) == 1


def test_long_class_names_are_shortened_for_their_row():
    assert reporting.short_name("goldfish, Carassius auratus") == "goldfish"
    assert reporting.short_name("a" * 30) == "a" * 19 + "…"
    assert reporting.short_name("aquarium_fish") == "aquarium_fish"


def test_the_progress_line_drops_repeated_losses_and_a_zero_inner_ce_only():
    one_match = {
        "grad_norm": 1.5,
        "images": 20.0,
        "inner_ce": 0.0,
        "loss": 0.5,
        "loss_first": 0.5,
        "loss_last": 0.5,
    }
    assert reporting.shown_metrics(one_match) == {"loss": 0.5, "grad_norm": 1.5}
    several = {**one_match, "inner_ce": 2.25, "loss_last": 0.25}
    assert list(reporting.shown_metrics(several)) == [
        "loss",
        "grad_norm",
        "inner_ce",
        "loss_first",
        "loss_last",
    ]
    line = reporting.Progress(total=4).line(1, one_match)
    assert line.startswith("iter 1/4 | loss 0.5 | grad_norm 1.5 |")
    assert "inner_ce" not in line and "loss_first" not in line and "images" not in line


@pytest.mark.usefixtures("fast_compilation")
@pytest.mark.parametrize(("outer_loop", "hidden"), [(1, True), (2, False)])
def test_gradient_matching_metrics_at_one_and_two_matches(blobs, outer_loop, hidden):
    x, y = blobs(3, 6, seed=1)
    real = from_arrays(
        name="blobs", train_images=x, train_labels=y, test_images=x, test_labels=y,
        mean=(0.5,), std=(0.25,), class_names=("a", "b", "c"),
    )  # fmt: skip
    config = ml_collections.ConfigDict(
        {
            "method": "dc",
            "dataset": "blobs",
            "model": {"width": 8, "depth": 1},
            "ipc": 1,
            "init": "real",
            "seed": 0,
            "devices": 0,
        }
    )
    config.gm = gm.default_config()
    config.gm.update({"outer_loop": outer_loop, "inner_loop": 1, "batch_real": 4, "batch_train": 3})
    resolve_backend(config)
    state = gm.init(config, real, jax.random.PRNGKey(0))
    _, metrics = gm.make_step(config, real)(state, real)
    shown = reporting.shown_metrics({k: float(v) for k, v in metrics.items()})
    assert {"loss", "grad_norm"} <= set(shown)
    per_match = {"inner_ce", "loss_first", "loss_last"}
    assert (per_match & set(shown) == set()) if hidden else (per_match <= set(shown))


def _one_match_method() -> Method:
    """A stand-in method whose metrics are those of gradient matching with one match an iteration."""

    def init(config, real, key):
        images, labels = jnp.zeros((2, 1, 1, 1)), jnp.arange(2, dtype=jnp.int32)
        return DistillState(
            images=images, labels=labels, opt_state=(), key=key, step=jnp.zeros((), jnp.int32)
        )

    def make_step(config, real, *, log):
        @jax.jit
        def step(state, real):
            loss = 1.0 / (state.step + 1)
            metrics = {"loss": loss, "loss_first": loss, "loss_last": loss, "inner_ce": jnp.float32(0)}
            return state.replace(step=state.step + 1), {**metrics, "grad_norm": jnp.float32(2), "images": 4.0}

        return step

    return Method(init=init, make_step=make_step)


def test_the_run_prints_what_means_something_and_records_every_metric(tmp_path):
    config = base_config()
    config.iterations, config.checkpoint_every, config.log_every = 3, 3, 1
    method, logs = _one_match_method(), []
    driver.distill(
        config, method, None, method.init(config, None, jax.random.PRNGKey(0)), tmp_path, log=logs.append
    )
    printed = [line for line in logs if line.startswith("iter ")]
    assert len(printed) == 3 and printed[0].startswith("iter 1/3 | loss 1 | grad_norm 2 |")
    assert not any(name in line for line in printed for name in ("inner_ce", "loss_first", "loss_last"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [set(r) for r in records] == [
        {"time", "step", "loss", "loss_first", "loss_last", "inner_ce", "grad_norm", "images"}
    ] * 3


def test_the_platform_record_names_the_matmul_precision_in_force():
    assert reporting.platform()["matmul_precision"] == "default"
    with jax.default_matmul_precision("highest"):
        record = reporting.platform()
    assert record["matmul_precision"] == "highest"
    assert record["device_count"] == len(jax.devices()) and record["versions"]["jax"] == jax.__version__
