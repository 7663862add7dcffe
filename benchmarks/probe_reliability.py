"""Reliability probe: malformed inputs through the real CLI, kill -9 trials, divergence and corruption.

python -m benchmarks.probe_reliability [--part inputs,kill] [--kills 12] [--jobs 2] [--out-dir DIR]

`inputs`: each case runs `python -m jaxdd.main` in a fresh process on prepared files and folders, and is
classified from its exit status and output: `message` (non-zero exit, one `jaxdd: error:` line, no
traceback), `traceback`, `accepted` (exit 0: silent acceptance when a refusal was expected), or `ok`
(exit 0 where success is right, e.g. a resume that must fall back past a damaged checkpoint). `early`
says whether the refusal came before the data was loaded (no `Loaded <dataset>` line) and so before any
compilation. `kill`: tiny DSA and DM digits runs killed with SIGKILL at random moments (including
mid-save), rerun until they finish; each must export exactly the uninterrupted run's set, and every
checkpoint left on disk must be finite. Writes probe_reliability.json / .md (machine named).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config=configs/dc.py:dataset=digits",
    "--config.ipc=1",
    "--config.iterations=2",
    "--config.model=ConvNetW32",
    "--config.gm.batch_real=8",
    "--config.eval.archs=",
    "--config.compilation_cache_dir=",
]
EVAL = [
    "--mode=evaluate",
    "--config=configs/dc.py:dataset=digits",
    "--config.eval.archs=MLP",
    "--config.eval.epochs=1",
]
EVAL += ["--config.eval.num_nets=1", "--config.eval.baselines=", "--config.compilation_cache_dir="]


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "jaxdd.main", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr


def _classify(rc: int, out: str, err: str, expect: str) -> dict:
    text = out + err
    if "Traceback (most recent call last)" in text:
        kind = "traceback"
    elif rc == 0:
        kind = "ok" if expect == "ok" else "accepted"
    elif "jaxdd: error:" in err or "FATAL Flags parsing error" in err or "ERROR:" in err:
        kind = "message" if expect == "refuse" else "refused-wrongly"
    else:
        kind = "other"
    early = "Loaded " not in out
    message = next((line for line in err.splitlines() if "error" in line.lower()), err.strip()[-300:])
    return {"result": kind, "early": early, "rc": rc, "message": message[:400]}


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _good_images(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 8, 8, 1)).astype(np.float32)


def input_cases(tmp: Path) -> list[tuple[str, str, list[str], str]]:
    """(group, name, argv, expected: 'refuse' | 'ok') for every malformed input; prepares its files."""
    (tmp / "folder.py").mkdir()
    (tmp / "syntax.py").write_text("def get_config(:\n")
    (tmp / "no_get_config.py").write_text("x = 1\n")
    (tmp / "raises.py").write_text("def get_config():\n    raise RuntimeError('boom')\n")
    (tmp / "returns_int.py").write_text("def get_config():\n    return 3\n")
    (tmp / "a_file").write_text("x")
    (tmp / "ckfile").mkdir()
    (tmp / "ckfile" / "checkpoints").write_text("x")
    labels = np.repeat(np.arange(10), 1).astype(np.int32)
    files = {
        "labels_0_14": _npz(tmp / "l15.npz", images=_good_images(15), labels=np.arange(15, dtype=np.int32)),
        "five_classes": _npz(tmp / "c5.npz", images=_good_images(5), labels=np.arange(5, dtype=np.int32)),
        "7_labels_10_images": _npz(tmp / "l7.npz", images=_good_images(10), labels=labels[:7]),
        "negative_labels": _npz(tmp / "neg.npz", images=_good_images(10), labels=labels - 1),
        "nan_images": _npz(tmp / "nan.npz", images=np.full((10, 8, 8, 1), np.nan, np.float32), labels=labels),
        "inf_images": _npz(tmp / "inf.npz", images=np.full((10, 8, 8, 1), np.inf, np.float32), labels=labels),
        "float_labels": _npz(tmp / "fl.npz", images=_good_images(10), labels=labels.astype(np.float32) + 0.5),
        "3d_images": _npz(tmp / "3d.npz", images=_good_images(10)[..., 0], labels=labels),
        "wrong_shape": _npz(tmp / "ws.npz", images=np.zeros((10, 28, 28, 1), np.float32), labels=labels),
        "int_images": _npz(tmp / "ii.npz", images=np.zeros((10, 8, 8, 1), np.int64), labels=labels),
        "no_images_key": _npz(tmp / "nokey.npz", labels=labels),
        "empty_set": _npz(tmp / "empty.npz", images=np.zeros((0, 8, 8, 1), np.float32), labels=labels[:0]),
        "2d_labels": _npz(tmp / "l2d.npz", images=_good_images(10), labels=labels[:, None]),
    }
    np.savez(tmp / "obj.npz", images=np.array([object()], dtype=object), labels=labels)
    files["object_arrays"] = str(tmp / "obj.npz")
    good = tmp / "good.npz"
    np.savez(good, images=_good_images(10), labels=labels)
    raw = good.read_bytes()
    (tmp / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    files["truncated_npz"] = str(tmp / "truncated.npz")
    (tmp / "notzip.npz").write_text("not a zip file")
    files["non_zip"] = str(tmp / "notzip.npz")
    with zipfile.ZipFile(tmp / "badmember.npz", "w") as z:
        z.writestr("images.npy", b"garbage")
        z.writestr("labels.npy", b"garbage")
    files["garbage_members"] = str(tmp / "badmember.npz")
    files["synset_is_folder"] = str(tmp / "folder.py")
    files["missing_synset"] = str(tmp / "nope.npz")

    config_cases = {
        "config_missing": ["--config=configs/nope.py", f"--workdir={tmp}/w"],
        "config_is_folder": [f"--config={tmp}/folder.py", f"--workdir={tmp}/w"],
        "config_syntax_error": [f"--config={tmp}/syntax.py", f"--workdir={tmp}/w"],
        "config_no_get_config": [f"--config={tmp}/no_get_config.py", f"--workdir={tmp}/w"],
        "config_get_config_raises": [f"--config={tmp}/raises.py", f"--workdir={tmp}/w"],
        "config_returns_int": [f"--config={tmp}/returns_int.py", f"--workdir={tmp}/w"],
        "no_config": [f"--workdir={tmp}/w"],
        "no_workdir": ["--config=configs/default.py"],
        "unknown_key": [*TINY, "--config.nonexistent=1", f"--workdir={tmp}/w"],
        "unknown_nested_key": [*TINY, "--config.eval.nonexistent=1", f"--workdir={tmp}/w"],
        "recipe_unknown_arg": ["--config=configs/default.py:bogus=1", f"--workdir={tmp}/w"],
        "recipe_bad_value": ["--config=configs/default.py:ipc=abc", f"--workdir={tmp}/w"],
        "recipe_not_key_value": ["--config=configs/default.py:ipc", f"--workdir={tmp}/w"],
        "unexpected_positional": [*TINY, f"--workdir={tmp}/w", "extra"],
        "mode_bogus": [*TINY, "--mode=bogus", f"--workdir={tmp}/w"],
        "table_without_runs": ["--mode=table"],
        "table_missing_run": ["--mode=table", f"--runs={tmp}/nope"],
    }
    value_cases = {
        "ipc_float": "--config.ipc=1.5",
        "ipc_zero": "--config.ipc=0",
        "ipc_negative": "--config.ipc=-1",
        "ipc_too_large": "--config.ipc=100000",
        "seed_text": "--config.seed=abc",
        "seed_negative": "--config.seed=-1",
        "iterations_negative": "--config.iterations=-1",
        "method_unknown": "--config.method=bogus",
        "model_unknown": "--config.model=Bogus",
        "dataset_unknown": "--config.dataset=bogus",
        "init_unknown": "--config.init=bogus",
        "lr_img_inf": "--config.gm.lr_img=inf",
        "lr_img_nan": "--config.gm.lr_img=nan",
        "lr_img_negative": "--config.gm.lr_img=-1",
        "lr_net_inf": "--config.gm.lr_net=inf",
        "eval_lr_inf": "--config.eval.lr=inf",
        "eval_lr_zero": "--config.eval.lr=0",
        "eval_momentum_one": "--config.eval.momentum=1.0",
        "eval_weight_decay_negative": "--config.eval.weight_decay=-1",
        "eval_weight_decay_inf": "--config.eval.weight_decay=inf",
        "eval_num_nets_zero": "--config.eval.num_nets=0",
        "eval_epochs_zero": "--config.eval.epochs=0",
        "eval_archs_tuple_unknown": "--config.eval.archs=('ConvNet','Imaginary')",
        "eval_archs_list_unknown": "--config.eval.archs=['ConvNet','Imaginary']",
        "eval_archs_unknown": "--config.eval.archs=Imaginary",
        "eval_baselines_unknown": "--config.eval.baselines=bogus",
        "eval_augment_unknown": "--config.eval.augment=bogus",
        "eval_parallel_unknown": "--config.eval.parallel=bogus",
        "checkpoint_every_zero": "--config.checkpoint_every=0",
        "keep_checkpoints_zero": "--config.keep_checkpoints=0",
        "log_every_zero": "--config.log_every=0",
        "eval_at_text": "--config.eval_at=abc",
        "eval_at_beyond_run": "--config.eval_at=100000",
        "devices_negative": "--config.devices=-1",
        "distributed_address_without_enabled": "--config.distributed.coordinator_address=1.2.3.4:5",
        "kd_temperature_inf": "--config.kd.temperature=inf",
        "pool_unknown_preset": "--config.pool.preset=bogus",
        "gm_distance_unknown": "--config.gm.distance=bogus",
        "gm_batch_real_zero": "--config.gm.batch_real=0",
        "max_abs_pixel_zero": "--config.max_abs_pixel=0",
    }
    for name, flag in value_cases.items():
        config_cases[name] = [*TINY, flag, f"--workdir={tmp}/{name}"]
    config_cases["kd_alpha_two"] = [
        *TINY,
        "--config.kd.enabled=True",
        "--config.kd.alpha=2",
        f"--workdir={tmp}/w",
    ]
    metadd = [*TINY, "--config.metadd.enabled=True"]
    config_cases["metadd_one_arch"] = [*metadd, "--config.metadd.archs=ConvNet", f"--workdir={tmp}/w"]
    config_cases["metadd_lambda_inf"] = [*metadd, "--config.metadd.lambda_var=inf", f"--workdir={tmp}/w"]
    dm = ["--config=configs/dm.py:dataset=digits", "--config.eval.archs=", f"--workdir={tmp}/w"]
    config_cases["dm_lr_img_inf"] = [*dm, "--config.dm.lr_img=inf"]
    sre2l = ["--config=configs/sre2l.py:dataset=digits", "--config.eval.archs=", f"--workdir={tmp}/w"]
    config_cases["sre2l_lr_img_inf"] = [*sre2l, "--config.sre2l.lr_img=inf"]
    config_cases["teachers_lr_inf"] = [*sre2l, "--config.teachers.lr=inf"]
    config_cases["teachers_epochs_zero"] = [*sre2l, "--config.teachers.epochs=0"]
    config_cases["teachers_seed_negative"] = [*sre2l, "--config.teachers.seed=-1"]
    config_cases["teacher_missing_training_off"] = [
        *sre2l,
        "--config.teachers.train=False",
        f"--config.teachers.dir={tmp}/no_teachers",
    ]
    folder_cases = {
        "workdir_is_file": [*TINY, f"--workdir={tmp}/a_file"],
        "workdir_under_file": [*TINY, f"--workdir={tmp}/a_file/run"],
        "checkpoints_is_file": [*TINY, f"--workdir={tmp}/ckfile"],
        "evaluate_workdir_is_file": [*EVAL, f"--workdir={tmp}/a_file", f"--synset={good}"],
        "evaluate_without_synset": [*EVAL, f"--workdir={tmp}/empty_run"],
    }
    file_cases = {
        name: [*EVAL, f"--workdir={tmp}/eval_{name}", f"--synset={path}"] for name, path in files.items()
    }
    data_cases = {
        "fashion_mnist_missing_data_dir": [
            "--config=configs/dc.py:dataset=fashion_mnist",
            f"--config.data_dir={tmp}/no_data",
            f"--workdir={tmp}/w",
        ],
        "cifar10_not_downloaded": [
            "--config=configs/dc.py:dataset=cifar10",
            f"--config.data_dir={tmp}/no_tfds",
            "--config.eval.archs=",
            f"--workdir={tmp}/w",
        ],
        "tiny_imagenet_not_downloaded": [
            "--config=configs/dm.py:dataset=tiny_imagenet",
            f"--config.data_dir={tmp}/no_tfds",
            "--config.eval.archs=",
            f"--workdir={tmp}/w",
        ],
    }
    (tmp / "no_tfds").mkdir()  # an existing folder without the prepared dataset
    (tmp / "bad_idx").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp / "bad_idx" / name).write_bytes(b"not gzip")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp / "bad_idx" / name).write_bytes(b"not gzip")
    data_cases["fashion_mnist_garbage_files"] = [
        "--config=configs/dc.py:dataset=fashion_mnist",
        f"--config.data_dir={tmp}/bad_idx",
        f"--workdir={tmp}/w",
    ]
    cases = []
    shared = f"--workdir={tmp}/w"
    for table in (config_cases, folder_cases, data_cases):  # one folder per case: runs in parallel
        for name, argv in table.items():
            table[name] = [f"--workdir={tmp}/w_{name}" if arg == shared else arg for arg in argv]
    for group, table in (
        ("config/CLI", config_cases),
        ("folders", folder_cases),
        ("files", file_cases),
        ("data", data_cases),
    ):
        cases += [(group, name, argv, "refuse") for name, argv in table.items()]
    return cases


def run_folder_cases(tmp: Path) -> list[dict]:
    """Cases that need a run folder in a given state first (each prepared here, then probed)."""
    rows = []

    def record(group, name, argv, expect, check=None):
        rc, out, err = _run(argv, ROOT)
        row = {"group": group, "case": name, "expect": expect, **_classify(rc, out, err, expect)}
        if check is not None and row["result"] in ("ok", "message"):
            problem = check(out, err)
            if problem:
                row["result"], row["message"] = "wrong", problem
        rows.append(row)

    base = tmp / "base"
    _run([*TINY, f"--workdir={base}", "--config.checkpoint_every=1"], ROOT)

    def copy(name):
        target = tmp / name
        shutil.copytree(base, target)
        return target

    w = copy("changed")
    record(
        "run folder", "resume_changed_config", [*TINY, f"--workdir={w}", "--config.gm.lr_img=0.5"], "refuse"
    )
    w = copy("shorter")
    argv = [*TINY, f"--workdir={w}", "--config.iterations=1", "--config.checkpoint_every=1"]
    record("run folder", "shorter_iterations_with_checkpoint", argv, "ok")
    w = copy("partial_metrics")
    with open(w / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 3, "lo')
    argv = [*TINY, f"--workdir={w}", "--config.iterations=3", "--config.checkpoint_every=1"]
    record("run folder", "partial_metrics_line", argv, "ok")
    w = copy("flipped")
    for data_file in [p for p in (w / "checkpoints" / "2" / "state").rglob("*") if p.parent.name == "d"]:
        raw = bytearray(data_file.read_bytes())
        mid = len(raw) // 2
        raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
        data_file.write_bytes(bytes(raw))
    argv = [*TINY, f"--workdir={w}", "--config.iterations=3", "--config.checkpoint_every=1"]
    record(
        "run folder",
        "flipped_checkpoint_bytes",
        argv,
        "ok",
        check=lambda out, err: None if "cannot be read" in out else "the damaged checkpoint was not reported",
    )
    w = copy("bad_ckpt_config")
    for meta in (w / "checkpoints" / "2" / "config").glob("*"):
        if meta.is_file() and meta.name != "commit_success.txt":
            meta.write_text("{not json")
    argv = [*TINY, f"--workdir={w}", "--config.iterations=3", "--config.checkpoint_every=1"]
    record("run folder", "garbage_checkpoint_config", argv, "ok")
    for method, flag in (("dc", "--config.gm.lr_img=1e30"), ("dc", "--config.gm.lr_img=1e300")):
        w = tmp / f"diverge_{method}_{flag.split('=')[1]}"
        argv = [*TINY, f"--workdir={w}", flag, "--config.iterations=3", "--config.checkpoint_every=1"]
        record("run folder", f"diverging_{flag.split('.')[-1]}", argv, "refuse")
    w = tmp / "diverge_dm"
    argv = ["--config=configs/dm.py:dataset=digits", "--config.iterations=3", "--config.checkpoint_every=1"]
    argv += [
        "--config.dm.lr_img=1e30",
        "--config.eval.archs=",
        f"--workdir={w}",
        "--config.compilation_cache_dir=",
    ]
    record("run folder", "diverging_dm_lr_img=1e30", argv, "refuse")
    lock_holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxdd import run_folder\n"
         f"with run_folder.locked({str(base)!r}):\n    print('held', flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock_holder.stdout.readline()
    record("run folder", "workdir_in_use", [*TINY, f"--workdir={base}"], "refuse")
    lock_holder.kill()
    return rows


def probe_inputs(jobs: int) -> tuple[list[dict], list[dict]]:
    tmp = Path(tempfile.mkdtemp(prefix="jaxdd_probe_"))
    cases = input_cases(tmp)

    def one(case):
        group, name, argv, expect = case
        start = time.perf_counter()
        rc, out, err = _run(argv, ROOT)
        row = {"group": group, "case": name, "expect": expect, **_classify(rc, out, err, expect)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{group:10s} {name:40s} {row['result']:10s} {row['message'][:100]}", flush=True)
        return row

    with ThreadPoolExecutor(jobs) as pool:
        rows = list(pool.map(one, cases))
    rows += run_folder_cases(tmp)
    for row in rows[len(cases) :]:
        print(f"{row['group']:10s} {row['case']:40s} {row['result']:10s} {row['message'][:100]}", flush=True)
    poisoned = _poisoned_checkpoints(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return rows, poisoned


def _poisoned_checkpoints(tmp: Path) -> list[dict]:
    """Every checkpoint step under `tmp` whose state is non-finite or has images beyond 1e3."""
    import jax

    from jaxdd import checkpointing

    found = []
    for directory in sorted(tmp.rglob("checkpoints")):
        if not directory.is_dir():
            continue
        for step in sorted(p for p in directory.iterdir() if p.name.isdigit()):
            with checkpointing.Checkpointer(directory) as ckpt:
                state = ckpt._manager.restore(
                    int(step.name),
                    args=checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore()),
                ).state
            images = np.asarray(jax.device_get(state["images"]))
            bad = not np.all(np.isfinite(images)) or np.abs(images).max() > 1e3
            found.append({"checkpoint": str(step.relative_to(tmp)), "poisoned": bool(bad)})
    return found


def probe_kills(trials: int, seed: int) -> list[dict]:
    """SIGKILL trials: DSA and DM digits runs killed at random moments and rerun until they finish."""
    tmp = Path(tempfile.mkdtemp(prefix="jaxdd_kill_"))
    recipes = {
        "dsa": ["--config=configs/dsa.py:dataset=digits", "--config.ipc=1", "--config.model=ConvNetW32"],
        "dm": ["--config=configs/dm.py:dataset=digits", "--config.ipc=2"],
    }
    common = ["--config.iterations=12", "--config.checkpoint_every=2", "--config.log_every=1"]
    common += ["--config.eval.archs=", "--config.compilation_cache_dir="]
    rng = random.Random(seed)
    rows = []
    for method, recipe in recipes.items():
        whole = tmp / f"{method}_whole"
        start = time.perf_counter()
        rc, _, err = _run([*recipe, *common, f"--workdir={whole}"], ROOT)
        assert rc == 0, err
        duration = time.perf_counter() - start
        with np.load(whole / "synset.npz") as f:
            expected = f["images"]
        for trial in range(trials // 2):
            workdir = tmp / f"{method}_{trial}"
            kills = 0
            for _ in range(3):  # kill up to three times, then let it finish
                process = subprocess.Popen(
                    [sys.executable, "-m", "jaxdd.main", *recipe, *common, f"--workdir={workdir}"],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(rng.uniform(0.3 * duration, 1.0 * duration))
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                process.wait()
            rc, _, _ = _run([*recipe, *common, f"--workdir={workdir}"], ROOT)
            with np.load(workdir / "synset.npz") as f:
                same = rc == 0 and np.array_equal(f["images"], expected)
            steps = [
                json.loads(line).get("step") for line in (workdir / "metrics.jsonl").open() if line.strip()
            ]
            steps = [s for s in steps if isinstance(s, int)]
            row = {"method": method, "trial": trial, "kills": kills, "exact": bool(same)}
            row["metrics_once"] = steps == list(range(1, 13))
            rows.append(row)
            print(row, flush=True)
    poisoned = _poisoned_checkpoints(tmp)
    rows.append(
        {
            "method": "all",
            "checkpoints_checked": len(poisoned),
            "poisoned": sum(p["poisoned"] for p in poisoned),
        }
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="inputs,kill")
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    from benchmarks.common import write_results

    parts = set(args.part.split(","))
    if "inputs" in parts:
        rows, poisoned = probe_inputs(args.jobs)
        counts = {
            kind: sum(r["result"] == kind for r in rows) for kind in sorted({r["result"] for r in rows})
        }
        late = [r["case"] for r in rows if r["result"] == "message" and not r["early"]]
        bad = sum(p["poisoned"] for p in poisoned)
        notes = (
            f"{len(rows)} malformed inputs: {counts}. Refusals after the data load: {late or 'none'}. "
            f"Checkpoints left by these runs: {len(poisoned)}, poisoned: {bad}."
        )
        write_results(
            "probe_reliability_inputs",
            rows,
            columns=["group", "case", "expect", "result", "early", "message"],
            notes=notes,
            out_dir=args.out_dir,
        )
        print(notes)
    if "kill" in parts:
        rows = probe_kills(args.kills, args.seed)
        exact = sum(r.get("exact", False) for r in rows)
        trials = sum("exact" in r for r in rows)
        notes = f"{trials} kill -9 trials, {exact} resumed to exactly the uninterrupted set; {rows[-1]}."
        write_results(
            "probe_reliability_kill",
            rows,
            columns=["method", "trial", "kills", "exact", "metrics_once", "checkpoints_checked", "poisoned"],
            notes=notes,
            out_dir=args.out_dir,
        )
        print(notes)


if __name__ == "__main__":
    main()
