"""DM (distribution matching; Zhao & Bilen, WACV 2023) on Fashion-MNIST, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dm_fashion_mnist.py:ipc=10 --workdir=runs/dm_fashion_mnist_ipc10

20,000 iterations, init real, batch_real 256, siamese DSA, SGD lr_img 1 momentum 0.5; evaluation: 1000
epochs with per-image DSA.
No published DM number for Fashion-MNIST (DESIGN §8 lists DC/DSA: IPC 10 82.3 / 84.6).
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "fashion_mnist"
    config.method = "dm"
    config.init = "real"
    config.iterations = 20000
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    return apply_arg(config, arg)
