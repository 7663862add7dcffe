"""DM (distribution matching; Zhao & Bilen, WACV 2023) on Tiny ImageNet, ConvNetD4 (depth 4 for 64×64
images), reference settings.

  python -m jaxdd.main --config=configs/dm_tiny_imagenet.py:ipc=10 --workdir=runs/dm_tiny_imagenet_ipc10

20,000 iterations, init real, batch_real 256, siamese DSA, SGD lr_img 1 momentum 0.5; evaluation: 1000
epochs with per-image DSA.
Published (DM paper's table, not in DESIGN §8):
ConvNetD4 IPC 1 3.9 ± 0.2, IPC 10 12.9 ± 0.4, IPC 50 24.1 ± 0.3.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "tiny_imagenet"
    config.method = "dm"
    config.init = "real"
    config.iterations = 20000
    config.model = "ConvNetD4"  # 64×64 images: the reference adds a fourth block
    config.eval.archs = "ConvNetD4"
    config.eval.augment = "dsa"  # evaluation trains with per-image DSA, 1000 epochs
    config.eval.epochs = 1000
    return apply_arg(config, arg)
