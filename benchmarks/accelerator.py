"""The accelerator suite (issue 18): the figures a first GPU session needs, in one call that survives
being cut off.

  python -m benchmarks.accelerator OUT_DIR [--quick] [--budget-s 450] [--only methods,eval,...]
  bash benchmarks/accelerator.sh OUT_DIR      # the device call (docs/gpu.md): wheels from .whl/

It runs from a bare Python with jax, flax, optax and orbax: ml-collections (and absl-py, PyYAML) are
installed from the wheels in --wheels (benchmarks/accelerator_wheels.sh downloads them) into --site
when they do not import; tensorflow-datasets is never needed, no part reads a dataset.

The parts (`accelerator_parts.PARTS`, in order of value) run one after another, each in its own process
(its device memory its own; killed with every process it started when it overruns), each under its
budget and all under one deadline, --budget-s from the start: a part starts only while MIN_PART_S
remain before it (less RESERVE_S for the last write), and what remains cuts its budget. A part appends
each row to OUT_DIR/rows.jsonl as soon as it is measured; after every part OUT_DIR/accelerator.json and
accelerator.md are written again from those rows (the machine, every row, the issue's targets), so a
suite stopped anywhere leaves everything it measured. The parts' output goes to OUT_DIR/accelerator.log.
This process never holds the accelerator (it runs JAX on the CPU): the parts have it to themselves.
--quick: every part on the CPU at tiny shapes (CI): well-formed results, timings that mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = {"ml_collections": "ml-collections", "absl": "absl-py", "yaml": "PyYAML"}  # module: distribution
ROWS, LOG, NAME = "rows.jsonl", "accelerator.log", "accelerator"
RESERVE_S = 5.0  # kept after the last part for writing the results
MIN_PART_S = {True: 2.0, False: 15.0}  # quick, accelerator: the least a part needs to measure anything
COLUMNS = ["part", "variant", "status", "seconds", "compile_s", "peak_mib", "temp_mib", "ratio"]
COLUMNS += ["extrapolated_s", "value", "target", "note"]
TARGETS = [  # (the target, the part and variant of its row, the row's figure, the most it may be)
    ("DC CIFAR-10 IPC 10, 1000 iterations: under 300 s", "methods", "dc ipc 10", "extrapolated_s", 300),
    ("100 ConvNets evaluated (IPC 10, 300 epochs): under 120 s", "eval", "vmap, 100 nets", "seconds", 120),
    ("K = 8 networks vmapped: at most 3x K = 1", "nets", "K 8 vmap", "ratio", 3),
    ("MetaDD: at most 1.3x the base method's time", "metadd", "dc ipc 10 + MetaDD", "ratio", 1.3),
    ("MetaDD: at most 1.3x the base method's memory", "metadd", "dc ipc 10 + MetaDD", "memory_ratio", 1.3),
    ("jaxdd 3x faster than PyTorch eager, DC IPC 1", "torch", "jaxdd ipc 1 outer 1", "ratio", 1 / 3),
    ("jaxdd 3x faster than PyTorch eager, DC IPC 10", "torch", "jaxdd ipc 10 outer 2", "ratio", 1 / 3),
    ("the fast test subset passes on the accelerator", "tests", "fast subset", "failed", 0),
]


# ---- the packages a bare accelerator machine lacks ----


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def ensure_packages(wheels: Path, site: Path) -> list[str]:
    """Makes `NEEDED`'s modules importable: those that do not import are installed with pip from the
    wheels in `wheels` (offline, no dependencies) into `site`, which goes first on sys.path and on
    PYTHONPATH (the parts' processes). Returns the distributions installed, [] when none was missing."""
    _put_first(site)  # where an earlier call (the suite, for its parts) installed them
    missing = [dist for module, dist in NEEDED.items() if not importable(module)]
    if not missing:
        return []
    if not any(wheels.glob("*.whl")):
        raise SystemExit(
            f"benchmarks.accelerator: {', '.join(missing)} do not import and {wheels} holds no wheels: run "
            "`bash benchmarks/accelerator_wheels.sh` where PyPI is reachable (it fills .whl/) and carry "
            f".whl, or pip install {' '.join(missing)}."
        )
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    pip += ["--disable-pip-version-check", "--find-links", str(wheels), "--target", str(site), *missing]
    subprocess.run(pip, check=True)
    importlib.invalidate_caches()
    still = [module for module in NEEDED if not importable(module)]
    if still:
        raise SystemExit(f"benchmarks.accelerator: {', '.join(still)} still do not import from {site}.")
    print(f"installed {', '.join(missing)} from {wheels} into {site}", flush=True)
    return missing


def _put_first(site: Path) -> None:
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(site) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *paths])


# ---- the schedule ----


def part_timeout(budget_s: float, now: float, deadline: float, *, min_s: float) -> float | None:
    """Seconds a part may run: its budget, cut to what remains before `deadline` less RESERVE_S; None
    (skip it) when less than `min_s` would remain."""
    left = deadline - now - RESERVE_S
    return None if left < min_s else min(budget_s, left)


class Suite:
    """The parent process: runs the parts in their processes and writes the results after each."""

    def __init__(self, out: Path, args, env: dict):
        self.out, self.args, self.env = out, args, env
        self.process: subprocess.Popen | None = None

    def run_part(self, name: str, timeout: float, extra_env: dict) -> str:
        """Part `name` in its own process group, at most `timeout` s; its status."""
        command = [sys.executable, "-m", "benchmarks.accelerator", str(self.out), "--run-part", name]
        command += ["--deadline", str(time.time() + timeout)] + (["--quick"] if self.args.quick else [])
        env = dict(self.env)
        for key, value in extra_env.items():  # XLA_FLAGS add to the caller's; others replace
            env[key] = f"{env.get(key, '')} {value}".strip() if key == "XLA_FLAGS" else value
        with open(self.out / LOG, "a") as log:
            log.write(f"\n== part {name}: at most {timeout:.0f} s\n")
            log.flush()
            offset = log.tell()
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0
            )
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_part()
                return (
                    f"failed: cut off after {timeout:.0f} s (its budget or the deadline); its rows are kept"
                )
            finally:
                self.process = None
        if code:
            return f"failed: exit status {code}: {_last_line(self.out / LOG, offset)}"
        return "ok"

    def stop_part(self) -> None:
        """Kills the running part and every process it started (its process group)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def write(self) -> None:
        """accelerator.json and .md from every row so far and the targets they reach."""
        from benchmarks.common import machine, write_results

        rows = read_rows(self.out)
        info = next((r["info"] for r in rows if r.get("variant") == "machine" and "info" in r), None)
        if info is None:  # the machine part did not run: this process's host, no accelerator named
            info = {**machine(), "device": "not recorded (the machine part did not run)"}
        quick = "--quick: tiny shapes on the CPU, timings that mean nothing. " if self.args.quick else ""
        notes = (
            f"{quick}One row per measured variant; '(the part)' rows give each part's status and wall "
            "time (its process start included). status: ok, or skipped/failed with the reason. seconds: "
            "steady state (best run after compiling); compile_s apart; peak_mib: device peak (process RSS "
            "on CPU) of the variant's own process where the part isolates variants, else the part's "
            "process peak so far; temp_mib: XLA's scratch memory of the compiled program. ratio: the "
            "part's comparison, named in note. Targets: the issue's, from these rows."
        )
        write_results(NAME, rows + targets(rows), columns=COLUMNS, notes=notes, out_dir=self.out, info=info)


def read_rows(out: Path) -> list[dict]:
    """The rows of out/rows.jsonl; a line cut short (a part killed while writing it) is left out."""
    rows = []
    for line in (out / ROWS).read_text().splitlines() if (out / ROWS).is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(out: Path, row: dict) -> None:
    with open(out / ROWS, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def targets(rows: list[dict]) -> list[dict]:
    """One row per `TARGETS` entry: 'met', 'missed' or 'not measured' (its row absent or not 'ok')."""
    found = []
    for text, part, variant, key, most in TARGETS:
        row = next((r for r in rows if (r.get("part"), r.get("variant")) == (part, variant)), {})
        value = row.get(key) if row.get("status") == "ok" else None
        status = (
            "not measured" if not isinstance(value, int | float) else ("met" if value <= most else "missed")
        )
        found.append(
            {
                "part": "targets",
                "variant": text,
                "status": status,
                "value": value,
                "target": f"{key} <= {most:.3g}",
            }
        )
    return found


def _last_line(path: Path, offset: int) -> str:
    with open(path) as f:
        f.seek(offset)
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="results folder (created; its earlier results are replaced)")
    parser.add_argument("--quick", action="store_true", help="every part on the CPU at tiny shapes")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole suite's deadline")
    parser.add_argument("--part-budget-s", type=float, default=0.0, help="caps every part's budget (0: none)")
    parser.add_argument("--only", default="", help="comma-separated parts (default: all, in order)")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="wheels of the packages that may lack")
    parser.add_argument("--site", default="/tmp/jaxdd-accelerator-site", help="where they are installed")
    parser.add_argument("--run-part", default="", help=argparse.SUPPRESS)  # in a part's process
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    installed = ensure_packages(Path(args.wheels), Path(args.site))
    out = Path(args.out_dir).resolve()
    if args.run_part:
        from benchmarks import accelerator_parts

        accelerator_parts.run(args.run_part, out=out, quick=args.quick, deadline=args.deadline)
        return

    start = time.time()
    env = dict(os.environ)  # the parts': the accelerator visible
    os.environ["JAX_PLATFORMS"] = "cpu"  # this process's JAX (the results' writer) never holds it
    from benchmarks.accelerator_parts import PARTS

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PARTS)
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; valid: {', '.join(PARTS)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in (ROWS, LOG):
        (out / name).unlink(missing_ok=True)
    suite = Suite(out, args, env)
    signal.signal(signal.SIGTERM, lambda *_: (suite.stop_part(), suite.write(), sys.exit(143)))
    deadline = start + args.budget_s
    append_row(
        out,
        {
            "part": "suite",
            "variant": "settings",
            "status": "ok",
            "quick": args.quick,
            "budget_s": args.budget_s,
            "parts": names,
            "installed": installed,
        },
    )
    for name in (n for n in PARTS if n in names):
        part = PARTS[name]
        budget = min(part.budget_s, args.part_budget_s or part.budget_s)
        began = time.time()
        timeout = part_timeout(budget, began, deadline, min_s=MIN_PART_S[args.quick])
        if timeout is None:
            left = max(deadline - began, 0.0)
            status = f"skipped: the suite's deadline (--budget-s {args.budget_s:g}): {left:.0f} s were left"
        else:
            status = suite.run_part(name, timeout, part.env)
        wall = round(time.time() - began, 1)
        append_row(
            out,
            {
                "part": name,
                "variant": "(the part)",
                "status": status,
                "seconds": wall,
                "note": f"budget {part.budget_s:g} s: {part.what}",
            },
        )
        suite.write()
        print(f"{name}: {status} ({wall:.0f} s)", flush=True)
    print(f"{out / NAME}.json and .md, {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
