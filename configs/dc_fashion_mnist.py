"""DC gradient matching (Zhao et al., ICLR 2021) on Fashion-MNIST, ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dc_fashion_mnist.py:ipc=10 --workdir=runs/dc_fashion_mnist_ipc10

1000 iterations, init noise, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 300 epochs, no augmentation.
Published (DC paper, ConvNet): IPC 1 70.5 ± 0.6, IPC 10 82.3 ± 0.4, IPC 50 83.6 ± 0.4.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "fashion_mnist"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    return apply_arg(config, arg)
