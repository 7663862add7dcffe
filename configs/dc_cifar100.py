"""DC gradient matching (Zhao et al., ICLR 2021) on CIFAR-100, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dc_cifar100.py:ipc=10 --workdir=runs/dc_cifar100_ipc10

1000 iterations, init noise, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 300 epochs, no augmentation.
Published (DC/DSA papers, ConvNet): IPC 1 12.8 ± 0.3, IPC 10 25.2 ± 0.3.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "cifar100"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    return apply_arg(config, arg)
