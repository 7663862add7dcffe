"""SRe2L: squeeze, recover, relabel (Yin, Xing & Shen, NeurIPS 2023), the teacher a BatchNorm network,
on every dataset of the table below; the dataset (and the IPC, 10 unless the row says) in the argument.

  python -m jaxdd.main --config=configs/sre2l.py:dataset=cifar10,ipc=10 --workdir=runs/sre2l_cifar10_ipc10
  python -m jaxdd.main --config=configs/sre2l.py:dataset=tiny_imagenet,ipc=50 \\
      --workdir=runs/sre2l_tiny_imagenet_ipc50

Squeeze: the teacher (config.model) trained on the real data (teachers.epochs, SGD), cached under
~/.cache/jaxdd/teachers/<dataset>/<teacher>/ and reused (--config.teachers.train=False refuses to train
one). Recover: 1000 Adam iterations from noise (lr 0.25, betas 0.5/0.9, cosine), CE on
random-resized-crop/flip views + r_bn 0.01 × BatchNorm-statistics distance. Relabel: the table's
'arch+soft' columns, students trained on the teacher's soft labels (KL at T 20, AdamW lr 1e-3, weight
decay 0.01, cosine), beside the hard-label columns of the standard protocol.
"""

from jaxdd.recipe import DIGITS_EVAL, family_config

SETTINGS = {"ipc": 10, "method": "sre2l", "model": "ConvNetBN", "init": "noise", "iterations": 1000}
TINY_IMAGENET = {
    "ipc": 50,
    "model": "ResNet18BN",
    "sre2l.batch_ipc": 1,  # one image per class per recover batch, as the reference
    "sre2l.relabel.epochs": 100,
    "teachers.epochs": 50,
    "eval.archs": "ResNet18BN,ConvNetD4",
}
# dataset: (its own keys, the published number). The paper reports ImageNet-scale sets only.
DATASETS = {
    "tiny_imagenet": (TINY_IMAGENET, "IPC 50, ResNet-18 student with soft labels: 41.1 (ResNet18BN+soft)"),
    "cifar10": ({}, "none with this teacher"),
    "cifar100": ({}, "none with this teacher"),
    "fashion_mnist": ({}, "none"),
    "digits": (DIGITS_EVAL, "none: jaxdd's offline smoke-test set"),
}


def get_config(arg: str = ""):
    return family_config(arg, SETTINGS, DATASETS)
