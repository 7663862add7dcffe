"""DC: gradient matching (Zhao, Mopuri & Bilen, ICLR 2021), ConvNet, the reference settings on every
dataset of the table below; the dataset and the IPC come in the argument.

  python -m jaxdd.main --config=configs/dc.py:dataset=cifar10,ipc=10 --workdir=runs/dc_cifar10_ipc10
  python -m jaxdd.main --config=configs/dc.py:dataset=fashion_mnist,ipc=1 --workdir=runs/dc_fashion_mnist_ipc1

1000 iterations, init noise, (outer_loop, inner_loop) from the reference table by IPC (1, 10, 20, 30,
40, 50: gradient_matching.LOOPS; another IPC needs --config.gm.outer_loop and inner_loop); evaluation:
300 epochs, no augmentation. Any config key may follow in the argument (`dataset=mnist,ipc=1,seed=2`)
or come as --config.KEY=VALUE. configs/pool_dc.py adds the model pool to these settings.
"""

from jaxdd.recipe import DIGITS_EVAL, family_config

SETTINGS = {"method": "dc", "init": "noise", "iterations": 1000}
# dataset: (its own keys; the published ConvNet test accuracy, %, at IPC 1 / 10 / 50: DC paper, CIFAR-100
# from the DSA paper)
DATASETS = {
    "mnist": ({}, "91.7 ± 0.5 / 97.4 ± 0.2 / 98.8 ± 0.2"),
    "fashion_mnist": ({}, "70.5 ± 0.6 / 82.3 ± 0.4 / 83.6 ± 0.4"),
    "cifar10": ({}, "28.3 ± 0.5 / 44.9 ± 0.5 / 53.9 ± 0.5"),
    "cifar100": ({}, "12.8 ± 0.3 / 25.2 ± 0.3 / –"),
    "digits": (DIGITS_EVAL, "none: jaxdd's offline smoke-test set"),
}


def get_config(arg: str = ""):
    return family_config(arg, SETTINGS, DATASETS)
