"""The launcher end to end on a tiny config, and user errors: one clear message, no traceback."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config.ipc=2",
    "--config.eval.archs=ConvNet,MLP",
    "--config.eval.epochs=2",
    "--config.eval.num_nets=2",
    "--config.iterations=2",
    "--config.gm.outer_loop=2",
    "--config.gm.inner_loop=1",
    "--config.gm.batch_real=8",
]


def _jaxdd(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "jaxdd.main", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_default_recipe_end_to_end_then_evaluate_and_table(tmp_path):
    workdir = tmp_path / "run"
    done = _jaxdd("--config=configs/default.py", f"--workdir={workdir}", *TINY)
    assert done.returncode == 0, done.stderr
    for name in ("config.json", "metrics.jsonl", "synset.npz", "synset.png", "eval.json", "table.md"):
        assert (workdir / name).is_file(), name
    results = json.loads((workdir / "eval.json").read_text())
    assert set(results) == {"ConvNet", "MLP"}
    for summary in results.values():
        assert len(summary["accs"]) == 2 and all(0 <= a <= 1 for a in summary["accs"])
        assert summary["mean"] == pytest.approx(sum(summary["accs"]) / 2)
    assert "| dsa, IPC 2 |" in done.stdout and "| random real, IPC 2 |" in done.stdout
    assert json.loads((workdir / "config.json").read_text())["ipc"] == 2

    again = _jaxdd("--mode=evaluate", "--config=configs/default.py", f"--workdir={workdir}", *TINY)
    assert again.returncode == 0, again.stderr
    again_results = json.loads((workdir / "eval.json").read_text())
    for arch, summary in results.items():  # same keys, same networks
        assert again_results[arch]["accs"] == summary["accs"]

    table = _jaxdd("--mode=table", f"--runs={workdir}")
    assert table.returncode == 0 and "| run |" in table.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.dataset=imagenet9", "Unknown dataset 'imagenet9'"),
        ("--config.method=magic", "Unknown method 'magic'"),
        ("--config.eval.archs=ConvNet,ResNet99", "ResNet99"),
        ("--config.ipc=0", "ipc=0"),
        ("--config.ipc=100000", "ipc=100000"),
        ("--config.eval.archs=VGG11", "VGG11"),  # 8×8 digits are too small for five max-pools
        ("--config.eval.parallel=threads", "eval.parallel='threads'"),
    ],
)
def test_user_errors_exit_with_one_clear_message(tmp_path, override, expected):
    done = _jaxdd("--config=configs/default.py", f"--workdir={tmp_path}", override)
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "synset.npz").exists()


def _one_error_line(done) -> str:
    """The single `jaxdd: error:` line of a failed run (which printed no traceback)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("jaxdd: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config=configs/nope.py"], "there is no file 'configs/nope.py'"),
        (["--config=SYNTAX"], "syntax error at line 1 of"),
        (["--config=configs/default.py", "--config.nonexistent=1"], "the config has no key 'nonexistent'"),
        (["--config=configs/default.py:bogus=1"], "names an unknown key 'bogus'"),
        (["--config=configs/default.py", "--config.ipc=1.5"], "config.ipc takes an integer (default 1)"),
        (["--config=configs/default.py", "--config.eval.archs=('ConvNet','Imaginary')"], "'Imaginary'"),
        (["--config=configs/default.py", "--config.gm.lr_img=inf"], "gm.lr_img=inf must be > 0 and finite"),
    ],
)
def test_recipe_override_and_value_mistakes_exit_with_one_clear_message(tmp_path, args, expected):
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def get_config(:\n")
    args = [arg.replace("SYNTAX", str(syntax)) for arg in args]
    line = _one_error_line(_jaxdd(*args, f"--workdir={tmp_path / 'run'}"))
    assert expected in line and "('ConvNet'" not in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_evaluate_refuses_a_malformed_synthetic_set_before_loading_data(tmp_path):
    images = np.random.default_rng(0).normal(size=(15, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "bad.npz", images=images, labels=np.arange(15, dtype=np.int32))
    done = _jaxdd(
        "--mode=evaluate", "--config=configs/default.py", f"--workdir={tmp_path / 'run'}",
        f"--synset={tmp_path / 'bad.npz'}", "--config.eval.archs=MLP",
    )  # fmt: skip
    assert "labels span 0..14, but 'digits' has 10 classes" in _one_error_line(done)
    assert "Loaded digits" not in done.stdout and not (tmp_path / "run" / "eval.json").exists()


def _full_disk_dispatch(form: str, filename: str | None):
    def dispatch():
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        if form == "direct":
            raise full
        if form == "group":  # e.g. several async writers failing at once
            raise ExceptionGroup("checkpoint save failed", [ValueError("other"), full])
        try:
            raise full
        except OSError as error:
            if form == "cause":  # `raise ... from error`, as an async checkpoint save re-raises
                raise RuntimeError("async save failed") from error
            raise RuntimeError("async save failed")  # noqa: B904 (the implicit __context__ form)

    return dispatch


@pytest.mark.parametrize("form", ["direct", "cause", "context", "group"])
def test_a_full_disk_is_one_message_naming_the_path_and_the_rerun(monkeypatch, capsys, tmp_path, form):
    from jaxdd import main as launcher

    target = str(tmp_path / "checkpoints" / "10")
    monkeypatch.setattr(launcher, "_dispatch", _full_disk_dispatch(form, target))
    monkeypatch.setattr(launcher, "_WORKDIR", SimpleNamespace(value=str(tmp_path)))
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(["jaxdd"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"jaxdd: error: The disk holding '{target}' is full")
    assert "Free space there and rerun the same command" in err and "last checkpoint" in err

    monkeypatch.setattr(launcher, "_dispatch", _full_disk_dispatch("cause", None))
    with pytest.raises(SystemExit):
        launcher.main(["jaxdd"])
    assert f"The disk holding '{tmp_path}' is full" in capsys.readouterr().err  # no file name: the workdir


def test_other_failures_keep_their_traceback(monkeypatch, tmp_path):
    from jaxdd import main as launcher

    def dispatch():
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("a bug") from None  # the context is hidden: not a disk problem

    monkeypatch.setattr(launcher, "_dispatch", dispatch)
    monkeypatch.setattr(launcher, "_WORKDIR", SimpleNamespace(value=str(tmp_path)))
    with pytest.raises(RuntimeError, match="a bug"):
        launcher.main(["jaxdd"])


def test_a_full_disk_during_a_real_export_is_one_message(tmp_path):
    """End to end through flag parsing and run(): numpy's writer fails as a full disk makes it fail."""
    program = (
        "import errno, os, sys, numpy\n"
        "def savez(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "numpy.savez = savez\n"
        "from jaxdd.main import entry_point\n"
        "sys.argv = ['jaxdd'] + sys.argv[1:]\n"
        "entry_point()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, "--config=configs/default.py", f"--workdir={tmp_path}",
         "--config.iterations=0", "--config.eval.archs=", "--config.compilation_cache_dir="],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    line = _one_error_line(done)
    assert f"The disk holding '{tmp_path}' is full" in line and "rerun the same command" in line


def test_table_names_a_results_file_that_is_cut_short(tmp_path):
    from jaxdd.errors import UserError
    from jaxdd.results import collect_table

    (tmp_path / "eval.json").write_text('{"ConvNet": {"mean": 0.5')
    with pytest.raises(UserError, match=r"eval.json' is not valid JSON .*--mode=evaluate"):
        collect_table([tmp_path])
    (tmp_path / "eval.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"holds a list, not \{arch: summary\}"):
        collect_table([tmp_path])


def test_integer_checks_accept_numpy_integers_and_reject_bools_and_floats():
    import numpy as np

    from jaxdd.errors import is_int

    assert is_int(3) and is_int(np.int64(3)) and is_int(np.int32(0))
    assert not any(is_int(value) for value in (True, False, np.bool_(True), 3.0, "3", None))
