"""DM: distribution matching (Zhao & Bilen, WACV 2023), ConvNet (ConvNetD4 on 64×64 images), the
reference settings on every dataset of the table below; the dataset and the IPC come in the argument.

  python -m jaxdd.main --config=configs/dm.py:dataset=cifar10,ipc=10 --workdir=runs/dm_cifar10_ipc10
  python -m jaxdd.main --config=configs/dm.py:dataset=cifar10,ipc=100 --workdir=runs/dm_cifar10_ipc100

20,000 iterations, init real, batch_real 256, siamese DSA, SGD lr_img 1 momentum 0.5; evaluation: 1000
epochs with per-image DSA. CIFAR-10 leaves lr_img at AUTO: 1, and 10 from IPC 100 (the DM readme;
jaxdd.config.RULES), filled after every override, so --config.ipc=100 gets 10 too and an explicit
dm.lr_img (in the argument or as --config.dm.lr_img) wins; config.json records the value used.
"""

from jaxdd.config import AUTO
from jaxdd.recipe import DIGITS_EVAL, family_config

SETTINGS = {"method": "dm", "init": "real", "iterations": 20000, "eval.augment": "dsa", "eval.epochs": 1000}
TINY_IMAGENET = {"model": "ConvNetD4", "eval.archs": "ConvNetD4"}  # 64×64: the reference adds a 4th block
# dataset: (its own keys; published test accuracy, %, IPC 1 / 10 / 50: the DM paper's table, ConvNet,
# ConvNetD4 on Tiny ImageNet)
DATASETS = {
    "cifar10": ({"dm.lr_img": AUTO}, "26.0 ± 0.8 / 48.9 ± 0.6 / 63.0 ± 0.4"),
    "cifar100": ({}, "11.4 ± 0.3 / 29.7 ± 0.3 / 43.6 ± 0.4"),
    "tiny_imagenet": (TINY_IMAGENET, "3.9 ± 0.2 / 12.9 ± 0.4 / 24.1 ± 0.3"),
    "fashion_mnist": ({}, "none for DM (DC / DSA at IPC 10: 82.3 / 84.6)"),
    "digits": (DIGITS_EVAL, "none: jaxdd's offline smoke-test set"),
}


def get_config(arg: str = ""):
    return family_config(arg, SETTINGS, DATASETS)
