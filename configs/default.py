"""The offline default: DSA (gradient matching with siamese augmentation) on scikit-learn's 8×8 digits,
IPC 10, a short run with its cross-architecture table beside the random-real baseline; a few minutes on
a 2-core CPU, no download.

  python -m jaxdd.main --config=configs/default.py --workdir=runs/default

Shortened from configs/dsa_digits.py (1000 iterations, 1000 evaluation epochs) so that a newcomer sees
the whole pipeline quickly: ITERATIONS iterations with the reference (outer, inner) loops for IPC 10,
evaluation with 3 networks per architecture, 300 epochs with per-image DSA. LeNet and VGG11 cannot pool
8×8 images, so the table covers ConvNet, MLP, AlexNet and ResNet18.
"""

from jaxdd.config import apply_arg, base_config

ITERATIONS = 40


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "digits"
    config.ipc = 10
    config.method = "dsa"
    config.init = "real"
    config.iterations = ITERATIONS
    config.checkpoint_every = 10
    config.log_every = 5
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18"
    config.eval.num_nets = 3
    config.eval.epochs = 300
    config.eval.augment = "dsa"
    config.eval.baselines = "random"
    return apply_arg(config, arg)
