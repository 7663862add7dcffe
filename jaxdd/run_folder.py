"""The run folder before any work: checked writable, and locked while one process uses it.

`prepare(workdir)` creates the folder and names every reason it cannot be used (a file in its place or
above it, no write permission, a read-only disk, `checkpoints` taken by a file) before data is loaded or
anything compiles. `locked(workdir)` holds an exclusive `fcntl` lock on `<workdir>/jaxdd.lock` for the
run's life, so a second process started on the same folder stops at once, naming the first; the lock
ends with the process however it ends (the file itself stays and is harmless).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from jaxdd.errors import UserError

LOCK_FILE = "jaxdd.lock"


def prepare(workdir: str | Path) -> Path:
    """Creates `workdir` if needed and checks that a run can write there; returns it as a Path."""
    workdir = Path(workdir)
    blocker = _file_in_the_way(workdir)
    if blocker is not None:
        where = "is a file" if blocker == workdir else f"is under {blocker}, which is a file"
        raise UserError(f"--workdir={str(workdir)!r} {where}: choose a folder path for the run.")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".jaxdd-write-test-{socket.gethostname()}-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"--workdir={str(workdir)!r} is not writable ({error.strerror or error}): choose a folder you "
            "can write to, or fix its permissions."
        ) from None
    checkpoints = workdir / "checkpoints"
    if checkpoints.exists() and not checkpoints.is_dir():
        raise UserError(
            f"{checkpoints} is a file, but the run keeps its checkpoints in a folder of that name: move the "
            "file away or choose another --workdir."
        )
    return workdir


def _file_in_the_way(path: Path) -> Path | None:
    """`path` or the nearest of its parents that exists as something other than a folder, if any."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Holds the run folder's lock; UserError naming the holder when another process has it."""
    path = Path(workdir) / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 (held open for the lock's life)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"{workdir} is in use by {holder}: two runs in one folder would mix their checkpoints and "
                "metrics. Wait for it to finish (or stop it), or choose another --workdir."
            ) from None
        handle.seek(0)
        handle.truncate()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        handle.write(f"jaxdd process {json.dumps(holder)}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
