"""DC gradient matching (Zhao et al., ICLR 2021) on CIFAR-10, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dc_cifar10.py:ipc=10 --workdir=runs/dc_cifar10_ipc10

1000 iterations, init noise, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 300 epochs, no augmentation.
Published (DC paper, ConvNet): IPC 1 28.3 ± 0.5, IPC 10 44.9 ± 0.5, IPC 50 53.9 ± 0.5.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "cifar10"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    return apply_arg(config, arg)
