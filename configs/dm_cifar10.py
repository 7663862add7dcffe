"""DM (distribution matching; Zhao & Bilen, WACV 2023) on CIFAR-10, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dm_cifar10.py:ipc=10 --workdir=runs/dm_cifar10_ipc10

20,000 iterations, init real, batch_real 256, siamese DSA, SGD lr_img 1 momentum 0.5 (the DM readme:
lr_img 10 from IPC 100, which this recipe applies when the IPC comes in its argument, e.g.
`dm_cifar10.py:ipc=100`; with --config.ipc=100 pass --config.dm.lr_img=10 as well); evaluation: 1000
epochs with per-image DSA.
Published (DM paper, ConvNet): IPC 1 26.0 ± 0.8, IPC 10 48.9 ± 0.6, IPC 50 63.0 ± 0.4.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "cifar10"
    config.method = "dm"
    config.init = "real"
    config.iterations = 20000
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    config = apply_arg(config, arg)
    config.dm.lr_img = 10.0 if config.ipc >= 100 else 1.0
    return apply_arg(config, arg)  # an explicit dm.lr_img in the argument wins
