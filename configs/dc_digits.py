"""DC gradient matching (Zhao et al., ICLR 2021) on scikit-learn digits, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dc_digits.py:ipc=10 --workdir=runs/dc_digits_ipc10

1000 iterations, init noise, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 300 epochs, no augmentation.
No published number (scikit-learn digits is jaxdd's offline smoke-test set).
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "digits"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18BN"  # no LeNet, VGG11 (8×8 too small), ResNet18 (IN)
    return apply_arg(config, arg)
