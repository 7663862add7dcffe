"""The offline default: the random-real baseline on scikit-learn's 8×8 digits, IPC 10, with a
cross-architecture table; a few minutes on a 2-core CPU, no download.

  python -m jaxdd.main --config=configs/default.py --workdir=runs/default

Architectures whose pooling cannot run on 8×8 images (LeNet, VGG11) are left out of the table.
"""

from jaxdd.config import base_config


def get_config():
    config = base_config()
    config.dataset = "digits"
    config.ipc = 10
    config.method = "random"
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18"
    config.eval.num_nets = 3
    config.eval.epochs = 300
    return config
