"""DM (distribution matching; Zhao & Bilen, WACV 2023) on scikit-learn digits, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dm_digits.py:ipc=10 --workdir=runs/dm_digits_ipc10

20,000 iterations, init real, batch_real 256, siamese DSA, SGD lr_img 1 momentum 0.5; evaluation: 1000
epochs with per-image DSA.
No published number (scikit-learn digits is jaxdd's offline smoke-test set).
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "digits"
    config.method = "dm"
    config.init = "real"
    config.iterations = 20000
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18BN"  # no LeNet, VGG11 (8×8 too small), ResNet18 (IN)
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    return apply_arg(config, arg)
