"""The run folder: every reason it cannot be used is named before any work, and one process holds it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxdd import run_folder
from jaxdd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_a_usable_folder_is_created(tmp_path):
    assert run_folder.prepare(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"'.*/f' is a file: choose a folder path"):
        run_folder.prepare(tmp_path / "f")
    with pytest.raises(UserError, match=r"is under .*/f, which is a file"):
        run_folder.prepare(tmp_path / "f" / "sub" / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    with pytest.raises(UserError, match=r"checkpoints is a file.*move the file away"):
        run_folder.prepare(tmp_path / "run")


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)  # root ignores mode bits, so the refusal is staged
    with pytest.raises(UserError, match="is not writable \\(Permission denied\\)"):
        run_folder.prepare(tmp_path / "ro")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(UserError, match="is not writable"):
        run_folder.prepare(tmp_path / "ro")


def test_a_second_process_on_the_same_folder_is_stopped_naming_the_first(tmp_path):
    with run_folder.locked(tmp_path):
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from jaxdd import run_folder; run_folder.locked({str(tmp_path)!r}).__enter__()",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert other.returncode != 0
        assert f'"pid": {os.getpid()}' in other.stderr and "is in use by jaxdd process" in other.stderr
        # the same process opening it again is refused too (a lock per open file)
        with pytest.raises(UserError, match="in use by"), run_folder.locked(tmp_path):
            pass
    with run_folder.locked(tmp_path):  # released when the holder ends
        pass
