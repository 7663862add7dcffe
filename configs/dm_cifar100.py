"""DM (distribution matching; Zhao & Bilen, WACV 2023) on CIFAR-100, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dm_cifar100.py:ipc=10 --workdir=runs/dm_cifar100_ipc10

20,000 iterations, init real, batch_real 256, siamese DSA, SGD lr_img 1 momentum 0.5; evaluation: 1000
epochs with per-image DSA.
Published (DM paper's table, not in DESIGN §8):
ConvNet IPC 1 11.4 ± 0.3, IPC 10 29.7 ± 0.3, IPC 50 43.6 ± 0.4.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "cifar100"
    config.method = "dm"
    config.init = "real"
    config.iterations = 20000
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    return apply_arg(config, arg)
