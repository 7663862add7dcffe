"""The offline default: DSA (gradient matching with siamese augmentation) on scikit-learn's 8×8 digits,
IPC 1, a short run with its cross-architecture table beside the random-real baseline; a few minutes on
a 2-core CPU, no download.

  python -m jaxdd.main --config=configs/default.py --workdir=runs/default

Shortened from configs/dsa.py:dataset=digits,ipc=1 (1000 iterations, 1000 evaluation epochs) so that a
newcomer sees the whole pipeline quickly: ITERATIONS iterations with the reference (outer, inner) loops
for IPC 1, evaluation with 3 networks per architecture, 300 epochs with per-image DSA. LeNet and VGG11
cannot pool 8×8 images; ResNet18 cannot see them either (instance norm of its last 1×1 map is zero: it
stayed at chance, 9.8%), and ResNet18BN is left out for time (a ResNet-18 took 115 s per evaluated set).
Measured on 2 cores: 2 min 11 s end to end, 100 iterations at 1.37 it/s; ConvNet 84.7 ± 0.4, MLP 79.6,
AlexNet 74.5 (random real: 65.9 / 64.3 / 56.0).
"""

from jaxdd.config import apply_arg
from jaxdd.recipe import sibling

ITERATIONS = 100


def get_config(arg: str = ""):
    config = sibling(__file__, "dsa.py:dataset=digits,ipc=1")
    config.iterations = ITERATIONS
    config.checkpoint_every = 10
    config.log_every = 5
    config.eval.archs = "ConvNet,MLP,AlexNet"
    config.eval.num_nets = 3
    config.eval.epochs = 300
    config.eval.baselines = "random"
    return apply_arg(config, arg)
