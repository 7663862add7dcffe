"""DSA (Zhao & Bilen, ICML 2021): gradient matching with differentiable siamese augmentation, ConvNet,
the reference settings on every dataset of the table below; the dataset and the IPC come in the argument.

  python -m jaxdd.main --config=configs/dsa.py:dataset=cifar10,ipc=10 --workdir=runs/dsa_cifar10_ipc10
  python -m jaxdd.main --config=configs/dsa.py:dataset=digits,ipc=1 --workdir=runs/dsa_digits_ipc1

1000 iterations, init real, (outer_loop, inner_loop) from the reference table by IPC; the siamese
strategy of the dataset (gm.dsa_strategy 'dsa'); evaluation: 1000 epochs with per-image DSA. Any config
key may follow in the argument or come as --config.KEY=VALUE. configs/default.py is a short run of the
digits row.
"""

from jaxdd.recipe import DIGITS_EVAL, family_config

SETTINGS = {"method": "dsa", "init": "real", "iterations": 1000, "eval.augment": "dsa", "eval.epochs": 1000}
# the published ConvNet test accuracy, %, at IPC 1 / 10 / 50 (DSA paper; CIFAR-100 from the DSA and DM
# papers), after each dataset's own keys
DATASETS = {
    "mnist": ({}, "88.7 ± 0.6 / 97.8 ± 0.1 / 99.2 ± 0.1"),
    "fashion_mnist": ({}, "70.6 ± 0.6 / 84.6 ± 0.3 / 88.7 ± 0.2"),
    "cifar10": ({}, "28.8 ± 0.7 / 52.1 ± 0.5 / 60.6 ± 0.5"),
    "cifar100": ({}, "13.9 ± 0.3 / 32.3 ± 0.3 / 42.8 ± 0.4"),
    "digits": (DIGITS_EVAL, "none: jaxdd's offline smoke-test set"),
}


def get_config(arg: str = ""):
    return family_config(arg, SETTINGS, DATASETS)
