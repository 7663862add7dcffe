"""DSA (Zhao & Bilen, ICML 2021) on CIFAR-100: gradient matching with siamese augmentation,
ConvNet, reference settings.

  python -m jaxdd.main --config=configs/dsa_cifar100.py:ipc=10 --workdir=runs/dsa_cifar100_ipc10

1000 iterations, init real, (outer_loop, inner_loop) from the
reference table by IPC; evaluation: 1000 epochs with per-image DSA.
Published (DSA/DM papers, ConvNet): IPC 1 13.9 ± 0.3, IPC 10 32.3 ± 0.3, IPC 50 42.8 ± 0.4.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "cifar100"
    config.method = "dsa"
    config.init = "real"
    config.iterations = 1000
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    return apply_arg(config, arg)
