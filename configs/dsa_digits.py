"""DSA (Zhao & Bilen, ICML 2021) on scikit-learn digits: gradient matching with siamese augmentation,
ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dsa_digits.py:ipc=10 --workdir=runs/dsa_digits_ipc10

1000 iterations, init real, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 1000 epochs with per-image DSA.
No published number (scikit-learn digits is jaxdd's offline smoke-test set).
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "digits"
    config.method = "dsa"
    config.init = "real"
    config.iterations = 1000
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18BN"  # no LeNet, VGG11 (8×8 too small), ResNet18 (IN)
    return apply_arg(config, arg)
