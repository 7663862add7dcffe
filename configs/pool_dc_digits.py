"""DC gradient matching with a model pool ("Improve Cross-Architecture Generalization on Dataset
Distillation", the model-pool paper) on scikit-learn digits; the recipe argument is the pool preset.

  python -m jaxdd.main --config=configs/pool_dc_digits.py:main_similar \
      --workdir=runs/pool_dc_digits_similar
  python -m jaxdd.main --config=configs/pool_dc_digits.py:main_similar,ipc=1 --config.kd.enabled=True \
      --workdir=runs/pool_dc_digits_similar_ipc1_kd

Presets (DESIGN §4.4): main_similar (the paper's choice, the default), main_others, uniform, custom
(--config.pool.custom='ConvNet:0.5,AlexNet:0.5'); --config.pool.similar_depth=1 and
--config.pool.warmup=500 give the released code's variant. DC settings as configs/dc_digits.py: 1000
iterations, IPC 10, init noise, loops from the reference table; evaluation 300 epochs, no augmentation;
--config.kd.enabled=True adds knowledge-distillation columns (teacher ConvNet, α 0.5, τ 1.5).
No published number (scikit-learn digits is jaxdd's offline smoke-test set). Only
`main_similar` and custom pools of ConvNets, MLP, AlexNet or ResNet18BN run here: LeNet and VGG11 cannot
pool 8×8 images, so `main_others` and `uniform` are rejected before anything compiles.
"""

from jaxdd.config import apply_pool_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "digits"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18BN"  # no LeNet, VGG11 (8×8 too small), ResNet18 (IN)
    return apply_pool_arg(config, arg, default="main_similar")
