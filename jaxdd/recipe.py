"""Reading a recipe, `--config=FILE[:ARG]`, building one from a method family's table, and explaining a
`--config.KEY=VALUE` override that fails.

ml_collections' own loader turns a missing or unreadable file into an error raised at the first attribute
access, and anything else (a syntax error, no `get_config`, an exception inside it) into a traceback;
here each is one UserError naming the file or key and the fix. The launcher installs `load_recipe` as
the --config flag's parser, so overrides keep working exactly as ml_collections applies them.

A method family is one file (big_vision's `configs/bit_i1k.py`): `configs/dc.py:dataset=cifar10,ipc=10`.
`family_config` builds its config from the family's settings and the row of its `DATASETS` table the
argument names; `sibling` lets one recipe build on another (configs/default.py on configs/dsa.py).
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
from pathlib import Path

import ml_collections

from jaxdd.config_lists import split_names
from jaxdd.errors import UserError

EXAMPLE = "configs/default.py"
_MODULE_NAME = "jaxdd_recipe"  # the name the recipe module runs under (sys.modules, pickling)


def load_recipe(spec: str) -> ml_collections.ConfigDict:
    """The locked ConfigDict of `spec` = 'FILE' or 'FILE:ARG': FILE's `get_config()`, or `get_config(ARG)`
    with an argument (ml_collections' convention). UserError for a missing file, a folder, a file that
    does not import, no `get_config`, a wrong argument, an exception inside it or a result that is not a
    ConfigDict."""
    path_text, sep, arg = spec.partition(":")
    flag = f"--config={spec}"
    if not path_text:
        raise UserError(f"--config is empty: name a recipe file, e.g. --config={EXAMPLE}.")
    path = Path(path_text).expanduser()
    if path.is_dir():
        inside = sorted(path.glob("*.py"))
        example = f"e.g. --config={inside[0]}" if inside else f"e.g. --config={EXAMPLE}"
        raise UserError(f"{flag}: {path_text!r} is a folder; name a recipe file (.py) in it, {example}.")
    if not path.is_file():
        moved = _family_form(path, arg)
        if moved:
            raise UserError(
                f"{flag}: there is no file {path_text!r}: the recipes are one file per method family now, "
                f"with the dataset in the argument: --config={moved}."
            )
        closest = _closest(path)
        raise UserError(
            f"{flag}: there is no file {path_text!r} (relative paths start at {os.getcwd()}): name a recipe "
            f"that exists, e.g. --config={EXAMPLE}"
            + (f" (the closest name there: {closest})." if closest else ".")
        )
    module = _import(path, flag)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UserError(
            f"{flag}: {path_text!r} defines no get_config(): a recipe defines get_config(arg='') returning "
            f"an ml_collections.ConfigDict (see {EXAMPLE})."
        )
    args = (arg,) if sep else ()
    _check_signature(get_config, args, flag, path_text)
    try:
        config = get_config(*args)
    except UserError as error:
        raise UserError(f"{flag}: {error}") from None
    except Exception as error:  # the recipe's own bug: one line with its place, not a traceback
        raise UserError(f"{flag}: get_config raised {_describe(error, path)}. Fix the recipe file.") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"{flag}: get_config returned {type(config).__name__} {str(config)[:60]!r}, not an "
            "ml_collections.ConfigDict: return the config, e.g. jaxdd.config.base_config() with your changes."
        )
    config.lock()  # as ml_collections does: an override cannot add a key
    return config


def _family_form(path: Path, arg: str) -> str | None:
    """'configs/dc.py:dataset=cifar10,ipc=10' for `path` configs/dc_cifar10.py and `arg` 'ipc=10': the
    family form of a per-dataset recipe that the family files replaced (None: `path` is no such name)."""
    from jaxdd.data import DATASETS  # only on this error path: the registry's names

    families = sorted((p.stem for p in path.parent.glob("*.py")), key=len, reverse=True)
    for family in families:
        dataset = path.stem.removeprefix(f"{family}_")
        if dataset != path.stem and dataset in DATASETS:
            return f"{path.parent / family}.py:dataset={dataset}" + (f",{arg}" if arg else "")
    return None


def _closest(path: Path) -> str | None:
    """The recipe beside `path` whose name is closest to its name, e.g. configs/dsa.py."""
    folder = path.parent if path.parent.is_dir() else Path("configs")
    names = [p.name for p in folder.glob("*.py")] if folder.is_dir() else []
    match = difflib.get_close_matches(path.name, names, n=1)
    return str(folder / match[0]) if match else None


def _import(path: Path, flag: str, name: str = _MODULE_NAME):
    """Runs the recipe file as module `name` (any suffix, like ml_collections)."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        loader.exec_module(module)
    except SyntaxError as error:
        text = f": {error.text.strip()!r}" if error.text else ""
        raise UserError(
            f"{flag}: syntax error at line {error.lineno} of {str(path)!r}: {error.msg}{text}. Fix the "
            "recipe file."
        ) from None
    except UserError as error:
        raise UserError(f"{flag}: {error}") from None
    except Exception as error:
        raise UserError(f"{flag}: loading it raised {_describe(error, path)}. Fix the recipe file.") from None
    return module


def _check_signature(get_config, args: tuple, flag: str, path_text: str) -> None:
    try:
        inspect.signature(get_config).bind(*args)
    except TypeError:
        if args:
            raise UserError(
                f"{flag}: get_config() in {path_text!r} takes no argument, so ':{args[0]}' cannot be passed: "
                "drop it and set keys with --config.KEY=VALUE."
            ) from None
        raise UserError(
            f"{flag}: get_config() in {path_text!r} needs an argument: give it after a colon, "
            f"--config={path_text}:ARG."
        ) from None
    except ValueError:  # no signature to inspect (a builtin): let the call decide
        pass


def _describe(error: Exception, path: Path) -> str:
    """'NameError: name 'x' is not defined (line 3 of configs/x.py)': the error and its recipe line."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if _same_file(f.filename, path)]
    where = f" (line {lines[-1]} of {str(path)!r})" if lines else ""
    return f"{type(error).__name__}: {error}{where}"


def _same_file(filename: str, path: Path) -> bool:
    return os.path.abspath(filename) == os.path.abspath(path)


# ---- recipe families ----

# The evaluation architectures of scikit-learn's 8×8 digits, in every family: LeNet and VGG11 pool them
# below 1×1, and ResNet18's instance norm of its last 1×1 map is zero (it stays at chance).
DIGITS_EVAL = {"eval.archs": "ConvNet,MLP,AlexNet,ResNet18BN"}


def family_config(
    arg: str, settings: dict, datasets: dict, *, pool_default: str | None = None
) -> ml_collections.ConfigDict:
    """The config of a method family's recipe for `arg` = 'dataset=NAME[,KEY=VALUE...]': `base_config()`,
    then the family's `settings` ({dotted key: value}), then `datasets[NAME][0]` (the dataset's own keys;
    `datasets` is the family's table, NAME: (keys, published number)), then the argument itself
    (`jaxdd.config.apply_arg`; with `pool_default`, `apply_pool_arg`: a bare item names the pool preset).

    configs/dm.py:dataset=cifar10,ipc=1 -> DM's settings, CIFAR-10's row, dataset='cifar10', ipc=1.
    UserError, listing the table's datasets, when the argument names none of them.
    """
    from jaxdd import config as config_lib  # the whole library: imported when a recipe asks for it

    items = split_names(arg or "", key="the recipe argument")
    named = [value for key, _, value in (item.partition("=") for item in items) if key.strip() == "dataset"]
    choices = ", ".join(datasets)
    if not named:
        raise UserError(
            f"the recipe argument {arg!r} names no dataset: add dataset=NAME after the colon, NAME one of "
            f"{choices} (e.g. :dataset={next(iter(datasets))},ipc=10)."
        )
    if named[-1] not in datasets:
        raise UserError(f"dataset={named[-1]!r} is not in this recipe's table; its datasets are {choices}.")
    config = config_lib.base_config()
    for dotted, value in {**settings, **datasets[named[-1]][0]}.items():
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        if last not in node:
            raise KeyError(f"the family table sets {dotted!r}, which base_config() lacks")
        node[last] = value
    if pool_default is None:
        return config_lib.apply_arg(config, arg)
    return config_lib.apply_pool_arg(config, arg, default=pool_default)


def sibling(recipe_file: str, spec: str) -> ml_collections.ConfigDict:
    """The config of `spec` = 'NAME.py[:ARG]', a recipe in the folder of `recipe_file` (the calling
    recipe's `__file__`): how one recipe builds on another. Unlocked, so the caller may change it."""
    name, _, arg = spec.partition(":")
    return sibling_module(recipe_file, name).get_config(arg)


def sibling_module(recipe_file: str, name: str):
    """The recipe module `name` ('dc.py') beside `recipe_file`, e.g. for its `SETTINGS` and `DATASETS`."""
    path = Path(recipe_file).parent / name
    if not path.is_file():
        raise UserError(f"{recipe_file!r} builds on {str(path)!r}, which does not exist: restore it.")
    return _import(path, f"--config={path}", name=f"{_MODULE_NAME}_{path.stem}")


# ---- overrides ----

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]*)(?:=(.*))?$", re.S)
_VALUE_ERROR = re.compile(r"^flag --(?:no)?config\.([\w.]+)=(.*?): ", re.S)


def check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """UserError for the first `--config.KEY=VALUE` in `argv` whose KEY the config lacks (naming the
    keys it has there, and the closest one), that goes below a plain value, or that sets a whole section
    to something other than a dict."""
    for arg in argv[1:]:
        match = _OVERRIDE.match(arg)
        if match:
            _check_key(config, match.group(1), match.group(2), arg)


def _check_key(config: ml_collections.ConfigDict, dotted: str, value: str | None, arg: str) -> None:
    node, walked = config, []
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            parent = ".".join(walked)
            raise UserError(
                f"{arg}: config.{parent} is a value ({node!r}), not a section with keys: set it with "
                f"--config.{parent}=VALUE."
            )
        if part not in node:
            where = f"config.{'.'.join(walked)}" if walked else "the config"
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            hint = f" Did you mean --config.{'.'.join([*walked, close[0]])}?" if close else ""
            raise UserError(
                f"{arg}: {where} has no key {part!r}; its keys are {', '.join(node.keys())}.{hint}"
            )
        node = node[part]
        walked.append(part)
    if isinstance(node, ml_collections.ConfigDict) and not _is_dict_literal(value):
        raise UserError(
            f"{arg}: config.{dotted} is a section, not a value: set one of its keys, e.g. "
            f"--config.{dotted}.{next(iter(node.keys()), 'KEY')}=..."
        )


def _is_dict_literal(text: str | None) -> bool:
    try:
        return isinstance(ast.literal_eval(text or ""), dict)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def explain_value_error(config: ml_collections.ConfigDict, message: str) -> str | None:
    """absl's 'flag --config.ipc=1.5: <parser detail>' as a message with the fix (the key's type and
    default, and an example), or None when `message` is not about a config key's value."""
    match = _VALUE_ERROR.match(message)
    if match is None:
        return None
    dotted, value = match.groups()
    try:
        current = config
        for part in dotted.split("."):
            current = current[part]
    except (KeyError, AttributeError, TypeError):
        return None
    kind = _KINDS.get(type(current), f"a {type(current).__name__}")
    example = str(current).lower() if isinstance(current, bool) else current
    return (
        f"--config.{dotted}={value!r} is not {kind}: config.{dotted} takes {kind} (default {current!r}), "
        f"e.g. --config.{dotted}={example}."
    )
