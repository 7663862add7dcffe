"""Command line: parse flags, call the library, turn user errors into one clear message.

python -m jaxdd.main --config=configs/default.py --workdir=runs/x [--config.ipc=1 ...]
python -m jaxdd.main --mode=evaluate --config=configs/default.py --workdir=runs/x [--synset=PATH]
python -m jaxdd.main --mode=table --runs=runs/a,runs/b
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdd.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "A recipe file, configs/<recipe>.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run folder: outputs, and checkpoints to resume from.")
_MODE = flags.DEFINE_enum("mode", "distill", ["distill", "evaluate", "table"], "What to do.")
_SYNSET = flags.DEFINE_string("synset", None, "--mode=evaluate: a synset.npz (default: WORKDIR/synset.npz).")
_RUNS = flags.DEFINE_list("runs", [], "--mode=table: run folders whose eval.json to collect.")


def _dispatch() -> None:
    # Imported here so that --help answers at once.
    from jaxdd import distributed
    from jaxdd.results import collect_table, evaluate_existing
    from jaxdd.run import run

    if _MODE.value == "table":
        if not _RUNS.value:
            raise UserError("--mode=table needs --runs=DIR[,DIR...]: the run folders to collect.")
        print(collect_table(_RUNS.value))
        return
    if _CONFIG.value is None:
        raise UserError("--config is required, e.g. --config=configs/default.py.")
    if not _WORKDIR.value:
        raise UserError("--workdir is required: the folder the run writes to, e.g. --workdir=runs/default.")
    # before anything touches a device: JAX needs the processes joined first (a no-op when disabled)
    distributed.initialize(_CONFIG.value.get("distributed"))
    enable_compilation_cache(_CONFIG.value.get("compilation_cache_dir", ""))
    if _MODE.value == "evaluate":
        evaluate_existing(_CONFIG.value, _WORKDIR.value, synset_path=_SYNSET.value)
    else:
        run(_CONFIG.value, _WORKDIR.value)


def enable_compilation_cache(directory: str) -> None:
    """Points JAX's persistent compilation cache at `directory` (`~` expanded; '' leaves it off), so a
    rerun, a resumed run or another run of the same shapes loads its programs instead of compiling."""
    if not isinstance(directory, str):
        raise UserError(f"compilation_cache_dir={directory!r} must be a folder path ('' = off).")
    if not directory:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # JAX's INFO lines (backend probing) are noise to users
    try:
        _dispatch()
    except UserError as error:
        print(f"jaxdd: error: {error}", file=sys.stderr)
        sys.exit(2)


def entry_point() -> None:
    """The `jaxdd` console script."""
    app.run(main)


if __name__ == "__main__":
    entry_point()
