"""A real multi-process run on one machine: two processes of 2 forced host devices each join through
`jax.distributed.initialize` on a loopback coordinator (CPU collectives: gloo, jax 0.10's default) and
distil through the command line. The synthetic set and the metrics equal a single-process, single-device
run's, and only process 0 writes the run folder's files (checkpoints excepted: Orbax coordinates them).

Each process runs `python -m jaxdd.main` under an audit hook that records the files it opens for writing
or renames into the run folder (Python's `open`/`os.rename` audit events), so the test can tell who wrote
what in the folder they share.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tiny DC on digits: 10 classes over a class mesh of 2 devices (the largest count that divides 10 and is
# a multiple of the 2 processes: one device of each), 2 iterations so that the second step starts from
# the first's output, a checkpoint at the end, no evaluation.
DISTILL = [
    "--config=configs/dc.py:dataset=digits,ipc=1",
    "--config.iterations=2",
    "--config.gm.outer_loop=1",
    "--config.gm.inner_loop=1",
    "--config.gm.batch_real=16",
    "--config.model=ConvNetD1",
    "--config.eval.archs=",
    "--config.compilation_cache_dir=",
]

# `python -m jaxdd.main ARGS` that also writes, to RECORD, the paths under WORKDIR it wrote (relative).
LAUNCH = textwrap.dedent(
    """
    import json, os, runpy, sys, traceback

    workdir, record, args = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    written = set()

    def note(path):
        path = os.path.join(os.path.realpath(os.path.dirname(os.fspath(path))), os.path.basename(path))
        if path.startswith(workdir + os.sep):
            written.add(os.path.relpath(path, workdir))

    def hook(event, hook_args):
        if event == "open" and not isinstance(hook_args[0], int) and hook_args[2] & writing:
            note(hook_args[0])
        elif event == "os.rename":
            note(hook_args[1])

    sys.addaudithook(hook)
    sys.argv = ["jaxdd.main", *args]
    code = 0
    try:
        runpy.run_module("jaxdd.main", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    with open(record, "w") as f:
        json.dump(sorted(written), f)
    if code:  # at once: JAX's exit would wait minutes in a shutdown barrier for the peer process
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    """
)


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax  # private: jaxlib has no public probe for its CPU collectives
    except ImportError:
        return True  # cannot tell: let the run show it
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, name: str, workdir: Path, devices: int, *flags: str) -> subprocess.Popen:
    """One `jaxdd.main` process on `devices` forced host devices; output in tmp_path/NAME.log, the paths
    it wrote in tmp_path/NAME.json."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",  # the default, stated: cross-process collectives on CPU
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",  # tiny programs: compile time dominates
    }
    command = [sys.executable, "-c", LAUNCH, str(workdir), str(tmp_path / f"{name}.json")]
    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own copy open
        return subprocess.Popen(
            [*command, *DISTILL, f"--workdir={workdir}", *flags], cwd=ROOT, env=env, stdout=log, stderr=log
        )


def _wait(processes: dict[str, subprocess.Popen], tmp_path: Path, *, timeout: float) -> None:
    """Waits for every process; on the first failure (the other one of a pair would wait for its peer
    until JAX's minutes-long timeouts) or after `timeout` s, kills the rest and fails with the logs."""
    deadline = time.monotonic() + timeout
    failed = False
    while not failed and any(p.poll() is None for p in processes.values()):
        failed = any(p.returncode not in (None, 0) for p in processes.values())
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    timed_out = [name for name, p in processes.items() if p.poll() is None and not failed]
    for p in processes.values():
        if p.poll() is None:
            p.kill()
        p.wait()
    if any(p.returncode for p in processes.values()):
        why = f"{', '.join(timed_out)} still running after {timeout} s" if timed_out else "a process failed"
        logs = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name in processes}
        report = "\n".join(f"--- {name} (exit {processes[name].returncode})\n{logs[name]}" for name in logs)
        pytest.fail(f"{why} (exit -9: killed here):\n{report}")


def _metrics(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_distil_the_single_process_set_and_only_process_zero_writes(tmp_path):
    shared, single = tmp_path / "two_processes", tmp_path / "one_process"
    address = f"127.0.0.1:{_free_port()}"
    joined = lambda index: (
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address={address}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={index}",
    )
    processes = {f"process{i}": _start(tmp_path, f"process{i}", shared, 2, *joined(i)) for i in (0, 1)}
    processes["single"] = _start(tmp_path, "single", single, 1)
    _wait(processes, tmp_path, timeout=240)

    log0 = (tmp_path / "process0.log").read_text()
    assert "Rank 0 is connected to 1 peer ranks" in log0  # gloo joined the two processes
    two, one = np.load(shared / "synset.npz"), np.load(single / "synset.npz")
    np.testing.assert_array_equal(two["labels"], one["labels"])
    np.testing.assert_allclose(two["images"], one["images"], rtol=0, atol=1e-5)
    metrics_two, metrics_one = _metrics(shared), _metrics(single)
    assert [m["step"] for m in metrics_two] == [m["step"] for m in metrics_one] == [1, 2]
    for two_step, one_step in zip(metrics_two, metrics_one, strict=True):
        assert two_step == pytest.approx(one_step, rel=1e-5)

    run_files = {str(p.relative_to(shared)) for p in shared.rglob("*") if p.is_file()}
    run_files = {f for f in run_files if not f.startswith("checkpoints" + os.sep)}
    assert {"config.json", "metrics.jsonl", "synset.npz", "synset.png"} <= run_files
    by_process0, by_process1 = (set(json.loads((tmp_path / f"process{i}.json").read_text())) for i in (0, 1))
    assert run_files <= by_process0
    assert not run_files & by_process1, "process 1 wrote files of the run folder"
    assert (shared / "checkpoints" / "2").is_dir()  # Orbax saved the last iteration
