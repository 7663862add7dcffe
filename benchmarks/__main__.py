"""One entry point for every benchmark: `python -m benchmarks [--quick] [--only eval,conv] [--out-dir DIR]`.

Each benchmark also runs on its own (`python -m benchmarks.bench_<name> --help`); this one runs them in
turn with their defaults, or all in `--quick` mode (CI-sized shapes: well-formed results, timings that
mean nothing). Results: JSON + markdown per benchmark under benchmarks/results/ or --out-dir. The order
is BENCHMARKS': 'matrix' first, because its workers are separate processes that need the accelerator
this process would otherwise already hold.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("matrix", "eval", "conv", "gradient_matching", "torch_dc", "profile")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized runs of every benchmark")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated: {BENCHMARKS}")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)}")
    forwarded = ["--quick"] if args.quick else []
    if args.out_dir:
        forwarded += ["--out-dir", args.out_dir]
    for name in (name for name in BENCHMARKS if name in names):
        print(f"== bench_{name} {' '.join(forwarded)}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main(forwarded)


if __name__ == "__main__":
    main()
