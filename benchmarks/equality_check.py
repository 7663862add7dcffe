"""Does a refactor keep the distilled sets? Distils small sets with every base method (and the model pool
and MetaDD plug-ins) and either saves them as the reference or compares them with a saved reference.

  python benchmarks/equality_check.py --save=/tmp/jaxdd_ref      # before the refactor
  python benchmarks/equality_check.py --compare=/tmp/jaxdd_ref   # after it: max |Δ| per case

Each case is the CLI on scikit-learn digits, IPC 1, a few iterations, no evaluation; the teachers
(SRe2L's, MetaDD's auxiliaries) are trained into the reference folder's cache and reused. Writes
`equality.json` and `equality.md` beside the compared sets. Exit status 1 when a case differs by more
than `--tolerance` (1e-6, issue 17's bar).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

COMMON = (
    "--config.dataset=digits",
    "--config.iterations=6",
    "--config.checkpoint_every=3",
    "--config.eval.archs=",
    "--config.eval.baselines=",
    "--config.compilation_cache_dir=",
    "--config.teachers.epochs=2",
)
CASES = {
    "dc": ("--config=configs/dc.py:dataset=digits,ipc=1",),
    "dsa": ("--config=configs/dsa.py:dataset=digits,ipc=1",),
    "dm": ("--config=configs/dm.py:dataset=digits,ipc=1",),
    "sre2l": ("--config=configs/sre2l.py:dataset=digits,ipc=1",),
    "dc+pool": ("--config=configs/dc.py:dataset=digits,ipc=1", "--config.pool.preset=main_similar"),
    "dm+pool": ("--config=configs/dm.py:dataset=digits,ipc=1", "--config.pool.preset=main_similar"),
    "dm+metadd": (
        "--config=configs/dm.py:dataset=digits,ipc=1",
        "--config.metadd.enabled=True",
        "--config.metadd.archs=ConvNet,ConvNetBN",
    ),
}


def distil(case: str, folder: Path, teachers: Path) -> np.ndarray:
    """Runs `case` into `folder` (fresh) and returns its synset images [N, H, W, C]."""
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "jaxdd.main", *CASES[case], *COMMON, f"--config.teachers.dir={teachers}"]
    done = subprocess.run([*command, f"--workdir={folder}"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{case} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with np.load(folder / "synset.npz") as synset:
        return synset["images"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--save", type=Path, help="write the reference sets here")
    where.add_argument("--compare", type=Path, help="compare with the reference sets saved here")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of the cases")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    root = args.save or args.compare
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    rows = []
    for case in cases:
        if args.save:
            distil(case, root / "reference" / case, root / "teachers")
            print(f"{case}: reference saved")
            continue
        with np.load(root / "reference" / case / "synset.npz") as synset:
            reference = synset["images"]
        images = distil(case, root / "current" / case, root / "teachers")
        difference = float(np.max(np.abs(images - reference)))
        rows.append(
            {"case": case, "max_abs_diff": difference, "bit_identical": bool((images == reference).all())}
        )
        print(f"{case}: max |Δ| {difference:.3g}, bit-identical {rows[-1]['bit_identical']}")
    if args.save:
        return 0
    (root / "equality.json").write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1)
    )
    table = ["| case | max abs diff | bit-identical |", "|---|---|---|"]
    table += [f"| {r['case']} | {r['max_abs_diff']:.3g} | {r['bit_identical']} |" for r in rows]
    (root / "equality.md").write_text("\n".join(table) + "\n")
    return int(any(r["max_abs_diff"] > args.tolerance for r in rows))


if __name__ == "__main__":
    sys.exit(main())
