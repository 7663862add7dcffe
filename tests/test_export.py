"""synset_nchw.npz, the PyTorch-layout export: read back with NumPy alone, it is synset.npz transposed to
[N, C, H, W], un-normalises to pixels in [0, 1], and the snippets of docs/export.md run on it."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxdd import export
from jaxdd import run as driver
from jaxdd.config import base_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
DOC_PATH = Path("runs/dm_digits_ipc10/synset_nchw.npz")  # the path the snippets load


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """The folder of a run of the random-real baseline on digits, IPC 3: its images are real ones."""
    workdir = tmp_path_factory.mktemp("random_run")
    config = base_config()
    config.update({"dataset": "digits", "method": "random", "ipc": 3})
    config.eval.archs, config.eval.baselines = "", ""
    driver.run(config, workdir, log=lambda _: None)
    return workdir


def test_the_export_is_the_nhwc_set_transposed_and_unnormalises_to_pixels(random_run):
    with np.load(random_run / "synset.npz") as nhwc, np.load(random_run / "synset_nchw.npz") as nchw:
        nhwc, nchw = dict(nhwc), dict(nchw)  # np.load refuses pickles by default: plain arrays only
    assert set(nchw) == {"images", "labels", "mean", "std", "class_names", "meta"}
    images = nchw["images"]
    assert images.dtype == np.float32 and images.shape == (30, 1, 8, 8) and images.flags.c_contiguous
    np.testing.assert_array_equal(images, np.transpose(nhwc["images"], (0, 3, 1, 2)))
    np.testing.assert_array_equal(images[:, :, 2, 5], nhwc["images"][:, 2, 5, :])  # pixel (2, 5) of each
    assert nchw["labels"].dtype == np.int64
    np.testing.assert_array_equal(nchw["labels"], np.repeat(np.arange(10), 3))
    np.testing.assert_array_equal(nchw["mean"], nhwc["mean"])
    np.testing.assert_array_equal(nchw["std"], nhwc["std"])
    assert list(nchw["class_names"]) == [str(d) for d in range(10)]
    assert json.loads(str(nchw["meta"])) == {"dataset": "digits", "ipc": 3, "method": "random", "seed": 0}
    pixels = images * nchw["std"][:, None, None] + nchw["mean"][:, None, None]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # real digits lie in [0, 1]
    # scikit-learn's digits are 17 grey levels, 0..16 / 16
    np.testing.assert_allclose(pixels * 16, np.round(pixels * 16), atol=1e-4)
    assert pixels.max() > 0.9 and pixels.min() < 0.1


def test_save_nchw_keeps_each_channel_and_names_of_any_length(tmp_path):
    nhwc = np.random.default_rng(0).normal(size=(4, 3, 2, 3)).astype(np.float64)  # H 3, W 2, C 3
    names = ("apple", "aquarium_fish")
    export.save_nchw(
        tmp_path / "x.npz", nhwc, [0, 0, 1, 1], mean=(0.1, 0.2, 0.3), std=(1, 2, 3), class_names=names
    )
    with np.load(tmp_path / "x.npz") as saved:
        assert saved["images"].shape == (4, 3, 3, 2)
        for c in range(3):
            np.testing.assert_array_equal(saved["images"][:, c], nhwc[..., c].astype(np.float32))
        assert tuple(saved["class_names"]) == names and json.loads(str(saved["meta"])) == {}


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _place_export(run_dir: Path, cwd: Path) -> None:
    (cwd / DOC_PATH).parent.mkdir(parents=True)
    (cwd / DOC_PATH).write_bytes((run_dir / export.NCHW_FILE).read_bytes())


def test_the_docs_numpy_snippet_runs_on_an_export(random_run, tmp_path, monkeypatch, capsys):
    numpy_only = [code for code in _snippets() if "torch" not in code]
    assert len(numpy_only) == 1
    _place_export(random_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(numpy_only[0], scope)
    assert scope["pixels"].shape == (30, 1, 8, 8) and scope["pixels"].min() >= -1e-6
    assert "'random'" in capsys.readouterr().out


def test_the_docs_pytorch_snippet_is_five_lines_and_trains_on_an_export(random_run, tmp_path, monkeypatch):
    (code,) = [code for code in _snippets() if "torch" in code]
    assert len(code.strip().splitlines()) == 5
    torch = pytest.importorskip("torch")
    _place_export(random_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)
    images, labels = next(iter(scope["loader"]))
    assert images.shape == (30, 1, 8, 8) and labels.dtype == torch.int64
    real = torch.rand(1, 8, 8)
    expected = (real - float(scope["d"]["mean"][0])) / float(scope["d"]["std"][0])
    torch.testing.assert_close(scope["normalize"](real), expected)
    logits = torch.nn.Linear(64, 10)(images.flatten(1))
    torch.nn.functional.cross_entropy(logits, labels).backward()  # int64 labels as the loss wants them
