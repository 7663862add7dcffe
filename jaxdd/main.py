"""Command line: parse flags, call the library, turn user errors into one clear message.

python -m jaxdd.main --config=configs/default.py --workdir=runs/x [--config.ipc=1 ...]
python -m jaxdd.main --mode=evaluate --config=configs/default.py --workdir=runs/x [--synset=PATH]
python -m jaxdd.main --mode=table --runs=runs/a,runs/b
python -m jaxdd.main --mode=study --config=configs/studies/<name>.py --workdir=studies/<name>
python -m jaxdd.main --mode=experts --config=configs/mtt.py:dataset=cifar10,ipc=10  # MTT's buffer step

Every mistake the user can fix (a bad recipe file, override, value, synthetic set, a full disk) ends the
process with one line `jaxdd: error: ...` on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdd.errors import UserError, disk_full_message, find_cause, is_disk_full

_CONFIG = config_flags.DEFINE_config_file("config", None, "A recipe file, configs/<recipe>.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run folder: outputs, and checkpoints to resume from.")
_MODE = flags.DEFINE_enum(
    "mode", "distill", ["distill", "evaluate", "table", "study", "experts"], "What to do."
)
_SYNSET = flags.DEFINE_string("synset", None, "--mode=evaluate: a synset.npz (default: WORKDIR/synset.npz).")
_RUNS = flags.DEFINE_list("runs", [], "--mode=table: run folders whose eval.json to collect.")


class _RecipeParser(flags.ArgumentParser):
    """The --config flag's parser: `jaxdd.recipe.load_recipe` in place of ml_collections' loader (which
    defers a missing file to the first access and lets a recipe's errors out as tracebacks); ml_collections
    still applies the --config.KEY=VALUE overrides. Keeps the last recipe loaded, to explain an override
    that fails after it."""

    config = None

    def parse(self, argument):
        from jaxdd import recipe  # here, so that --help answers without importing the library

        self.config = recipe.load_recipe(argument)
        return self.config

    def flag_type(self) -> str:
        return "config object"


_RECIPE_PARSER = _RecipeParser()
flags.FLAGS[_CONFIG.name].parser = _RECIPE_PARSER


def _dispatch() -> None:
    # Imported here so that --help answers at once.
    from jaxdd import distributed
    from jaxdd.config_lists import split_names
    from jaxdd.results import collect_table
    from jaxdd.run import run
    from jaxdd.run_eval import evaluate_existing

    if _MODE.value == "table":
        runs = split_names(",".join(_RUNS.value), key="--runs")  # absl split "(a,b)" into "(a" and "b)"
        if not runs:
            raise UserError("--mode=table needs --runs=DIR[,DIR...]: the run folders to collect.")
        print(collect_table(runs))
        return
    if _CONFIG.value is None:
        raise UserError("--config is required, e.g. --config=configs/default.py.")
    if _MODE.value == "experts":  # MTT's expert trajectories alone, into their cache (no run folder)
        from jaxdd.methods import mtt

        enable_compilation_cache(_CONFIG.value.get("compilation_cache_dir", ""))
        mtt.prepare_experts(_CONFIG.value)
        return
    if not _WORKDIR.value:
        raise UserError("--workdir is required: the folder the run writes to, e.g. --workdir=runs/default.")
    is_study = "variants" in _CONFIG.value and "recipe" in _CONFIG.value
    if is_study != (_MODE.value == "study"):
        raise UserError(
            "--mode=study needs a study file (configs/studies/<name>.py)."
            if not is_study
            else "--config is a study file (configs/studies/...): run it with --mode=study."
        )
    if is_study:
        from jaxdd import study

        variants = list(_CONFIG.value.variants)
        if variants:  # the cells' cache folder (a bad study is named by run_study before any work)
            first = study.cell_config(_CONFIG.value, variants[0], 0)
            enable_compilation_cache(first.get("compilation_cache_dir", ""))
        study.run_study(_CONFIG.value, _WORKDIR.value)
        return
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


def _fail(message: str) -> None:
    """Prints `message` as the one error line and exits with status 2."""
    print(f"jaxdd: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with each mistake one `jaxdd: error:` line: a recipe that does not load, an
    unknown or misplaced --config.KEY, a value of the wrong type, any other bad flag. `--help` still
    prints the usage."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # every flag mistake is reported; anything else is re-raised
        message = _flag_error_message(error, argv)
        if message is None:
            raise
        _fail(message)


def _flag_error_message(error: Exception, argv: list[str]) -> str | None:
    """The message for a failed flag parse (None: not a user's mistake). A UserError from the recipe
    comes wrapped in absl's IllegalFlagValueError; an unknown override key surfaces as ml_collections'
    AttributeError, so the overrides are checked against the recipe that loaded."""
    user_error = find_cause(error, lambda e: isinstance(e, UserError))
    if user_error is not None:
        return str(user_error)
    config = _RECIPE_PARSER.config
    if config is not None:
        from jaxdd import recipe

        try:
            recipe.check_overrides(config, argv)
        except UserError as override_error:
            return str(override_error)
        explained = recipe.explain_value_error(config, str(error))
        if explained is not None:
            return explained
    if type(error).__name__ == "FlagOrderError":  # ml_collections': an override before --config
        return f"{error}: give --config=FILE first, then its --config.KEY=VALUE overrides, each once."
    if isinstance(error, flags.Error):
        return f"{error} (python -m jaxdd.main --helpshort lists the flags)."
    return None


def main(argv: list[str]) -> None:
    """Runs the mode the flags ask for; a UserError, or a full disk anywhere in an exception's chain,
    becomes one `jaxdd: error:` line and exit status 2."""
    if len(argv) > 1:
        _fail(f"unexpected arguments {' '.join(argv[1:])!r}: every option is a --flag=VALUE.")
    logging.set_verbosity(logging.WARNING)  # JAX's INFO lines (backend probing) are noise to users
    try:
        _dispatch()
    except UserError as error:
        _fail(str(error))
    except Exception as error:
        full = find_cause(error, is_disk_full)
        if full is None:
            raise
        _fail(disk_full_message(full, _WORKDIR.value))


def entry_point() -> None:
    """The `jaxdd` console script."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry_point()
