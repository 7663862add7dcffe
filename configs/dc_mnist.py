"""DC gradient matching (Zhao et al., ICLR 2021) on MNIST, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dc_mnist.py:ipc=10 --workdir=runs/dc_mnist_ipc10

1000 iterations, init noise, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 300 epochs, no augmentation.
Published (DC paper, ConvNet): IPC 1 91.7 ± 0.5, IPC 10 97.4 ± 0.2, IPC 50 98.8 ± 0.2.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "mnist"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    return apply_arg(config, arg)
