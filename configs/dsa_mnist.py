"""DSA (Zhao & Bilen, ICML 2021) on MNIST: gradient matching with siamese augmentation,
ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dsa_mnist.py:ipc=10 --workdir=runs/dsa_mnist_ipc10

1000 iterations, init real, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 1000 epochs with per-image DSA.
Published (DSA paper, ConvNet): IPC 1 88.7 ± 0.6, IPC 10 97.8 ± 0.1, IPC 50 99.2 ± 0.1.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "mnist"
    config.method = "dsa"
    config.init = "real"
    config.iterations = 1000
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    return apply_arg(config, arg)
