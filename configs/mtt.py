"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022), ConvNet (ConvNetD4 on 64×64
images), the reference's hyperparameters for each (dataset, IPC) of the table below; the dataset and the
IPC come in the argument.

  python -m jaxdd.main --config=configs/mtt.py:dataset=cifar10,ipc=10 --workdir=runs/mtt_cifar10_ipc10
  python -m jaxdd.main --config=configs/mtt.py:dataset=cifar100,ipc=1 --workdir=runs/mtt_cifar100_ipc1
  python -m jaxdd.main --config=configs/mtt.py:dataset=digits,ipc=1 --workdir=runs/mtt_digits_ipc1

The first run of a dataset trains its experts (buffer.py's step: mtt.num_experts networks, 50 epochs of
SGD lr 0.01, momentum 0, no weight decay, per-image DSA) and caches every epoch's parameters under
~/.cache/jaxdd/experts/<dataset>/<arch>/ for every later run (--config.mtt.train_experts=False refuses
to train them). Distillation: 5000 iterations from real images, `syn_steps` student steps of SGD with
the learnable step size (from `syn_lr_init`), pixels SGD lr_img momentum 0.5, step size SGD lr_lr
momentum 0.5. Evaluation: 1000 epochs with per-image DSA, the distillation architecture only (the
reference's eval_mode 'S').

The IPC picks the table row, so give it in the argument (`:dataset=cifar10,ipc=50`): a later
--config.ipc changes the IPC, not the row's settings (give those as --config.mtt.KEY=VALUE too). A
(dataset, IPC) without a row keeps the reference's argparse defaults (mtt.* in jaxdd.methods.mtt).

The set's students train with the learned step size α, as the reference evaluates (synset.npz's meta
'learned_lr'; the baselines keep eval.lr; --config.eval.learned_lr=False trains them with eval.lr too,
e.g. to compare with DC and DM under one protocol). The rows the reference ran with ZCA whitening turn
it on (`zca.enabled`: kornia's ZCA with ε 0.1 on pixels in [0, 1] in place of mean/std, fitted on the
training images, jaxdd.data.zca); their experts are trained and cached on the whitened images too.
--config.zca.enabled=False runs such a row on mean/std-normalised images instead.
"""

from jaxdd.config_lists import split_names
from jaxdd.recipe import DIGITS_EVAL, family_config

SETTINGS = {
    "method": "mtt",
    "ipc": 10,
    "init": "real",
    "iterations": 5000,
    "eval.archs": "ConvNet",
    "eval.augment": "dsa",
    "eval.epochs": 1000,
}
TINY_IMAGENET = {"model": "ConvNetD4", "eval.archs": "ConvNetD4"}
# A smoke test on scikit-learn's 8×8 digits (jaxdd's choice, not the reference's): few short experts.
DIGITS = {
    **DIGITS_EVAL,
    "iterations": 500,
    "mtt.num_experts": 5,
    "mtt.expert_train_epochs": 20,
    "mtt.max_start_epoch": 10,
    "mtt.expert_epochs": 2,
    "mtt.syn_steps": 20,
    "mtt.lr_img": 100.0,
}
# dataset: (its own keys; published ConvNet test accuracy, %, IPC 1 / 10 / 50: the MTT paper's Table 1)
DATASETS = {
    "cifar10": ({}, "46.3 ± 0.8 / 65.3 ± 0.7 / 71.6 ± 0.2 (whole set 84.8)"),
    "cifar100": ({}, "24.3 ± 0.3 / 40.1 ± 0.4 / 47.7 ± 0.2 (whole set 56.2)"),
    "tiny_imagenet": (TINY_IMAGENET, "8.8 ± 0.3 / 23.2 ± 0.2 / 28.0 ± 0.3 (whole set 37.6)"),
    "fashion_mnist": ({}, "none for MTT"),
    "digits": (DIGITS, "none: jaxdd's offline smoke-test set"),
}
# (dataset, IPC): (syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr, syn_lr_init, batch_syn
# (0: all), the reference ran it with ZCA: zca.enabled). The reference README's hyperparameter table (an
# image in GeorgeCazenavette/mtt-distillation's readme.md, line 95), as transcribed in its reproduction
# commands.
COLUMNS = ("syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr", "syn_lr_init", "batch_syn")
TABLE = {
    ("cifar10", 1): (50, 2, 2, 100.0, 1e-7, 0.01, 0, True),
    ("cifar10", 10): (30, 2, 20, 100.0, 1e-5, 0.001, 0, True),
    ("cifar10", 50): (30, 2, 40, 1000.0, 1e-5, 0.001, 0, False),
    ("cifar100", 1): (20, 3, 20, 1000.0, 1e-5, 0.01, 0, True),
    ("cifar100", 10): (20, 2, 20, 1000.0, 1e-5, 0.01, 0, False),
    ("cifar100", 50): (80, 2, 40, 1000.0, 1e-5, 0.01, 125, True),
    ("tiny_imagenet", 1): (10, 2, 10, 10000.0, 1e-4, 0.01, 0, False),
    ("tiny_imagenet", 10): (20, 2, 40, 10000.0, 1e-4, 0.01, 200, False),
    ("tiny_imagenet", 50): (20, 2, 40, 10000.0, 1e-4, 0.01, 300, False),
}


def row_settings(dataset: str, ipc: int) -> dict:
    """{'mtt.KEY': value, 'zca.enabled': whether the reference whitened} of the table row of (dataset,
    ipc); {} without a row."""
    row = TABLE.get((dataset, ipc))
    if row is None:
        return {}
    *values, whitened = row
    settings = {f"mtt.{key}": value for key, value in zip(COLUMNS, values, strict=True)}
    return {**settings, "zca.enabled": whitened}


def _named(arg: str, key: str, default):
    """The last `key=VALUE` of the recipe argument, as text; `default` when it names none."""
    values = [
        v.strip() for k, _, v in (item.partition("=") for item in split_names(arg or "")) if k.strip() == key
    ]
    return values[-1] if values else default


def get_config(arg: str = ""):
    dataset = _named(arg, "dataset", "")
    ipc = _named(arg, "ipc", str(SETTINGS["ipc"]))
    row = row_settings(dataset, int(ipc)) if ipc.isdigit() else {}
    return family_config(arg, {**SETTINGS, **row}, DATASETS)
