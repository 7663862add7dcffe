"""DC gradient matching with a model pool ("Improve Cross-Architecture Generalization on Dataset
Distillation", the model-pool paper) on CIFAR-10; the recipe argument is the pool preset.

  python -m jaxdd.main --config=configs/pool_dc_cifar10.py:main_similar \
      --workdir=runs/pool_dc_cifar10_similar
  python -m jaxdd.main --config=configs/pool_dc_cifar10.py:main_similar,ipc=1 --config.kd.enabled=True \
      --workdir=runs/pool_dc_cifar10_similar_ipc1_kd

Presets (DESIGN §4.4): main_similar (the paper's choice, the default), main_others, uniform, custom
(--config.pool.custom='ConvNet:0.5,AlexNet:0.5'); --config.pool.similar_depth=1 and
--config.pool.warmup=500 give the released code's variant. DC settings as configs/dc_cifar10.py: 1000
iterations, IPC 10, init noise, loops from the reference table; evaluation 300 epochs, no augmentation;
--config.kd.enabled=True adds knowledge-distillation columns (teacher ConvNet, α 0.5, τ 1.5).
Published (model-pool paper, IPC 10, DC on ConvNet -> MLP / LeNet / AlexNet / VGG11 / ResNet18):
baseline 27.4 / 22.2 / 20.6 / 30.4 / 15.6; pool + KD 30.0 / 24.9 / 25.4 / 33.9 / 21.5 (best τ of 13 on
the test set; jaxdd reports a fixed τ, or one chosen on a validation split: DESIGN §4.5).
"""

from jaxdd.config import apply_pool_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "cifar10"
    config.method = "dc"
    config.init = "noise"
    config.iterations = 1000
    return apply_pool_arg(config, arg, default="main_similar")
