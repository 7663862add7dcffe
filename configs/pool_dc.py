"""DC gradient matching with a model pool ("Improve Cross-Architecture Generalization on Dataset
Distillation", the model-pool paper): configs/dc.py's settings and datasets, and a pool preset, the bare
item of the argument (main_similar without one).

  python -m jaxdd.main --config=configs/pool_dc.py:dataset=cifar10,main_similar \\
      --workdir=runs/pool_dc_cifar10_similar
  python -m jaxdd.main --config=configs/pool_dc.py:dataset=cifar10,main_similar,ipc=1 \\
      --config.kd.enabled=True --workdir=runs/pool_dc_cifar10_similar_ipc1_kd

Presets (DESIGN §4.4): main_similar (the paper's choice), main_others, uniform, custom
(--config.pool.custom='ConvNet:0.5,AlexNet:0.5'); --config.pool.similar_depth=1 and
--config.pool.warmup=500 give the released code's variant. IPC 10 unless the argument says;
--config.kd.enabled=True adds knowledge-distillation columns (teacher ConvNet, α 0.5, τ 1.5). On digits
only main_similar and custom pools of ConvNets, MLP, AlexNet or ResNet18BN run: LeNet and VGG11 cannot
pool 8×8 images, so main_others and uniform are rejected before anything compiles.
"""

from jaxdd.recipe import family_config, sibling_module

DC = sibling_module(__file__, "dc.py")
# Published (IPC 10, DC distilled on ConvNet, test accuracy % of MLP / LeNet / AlexNet / VGG11 / ResNet18;
# best τ of 13 on the test set, where jaxdd reports a fixed τ or one chosen on a validation split: DESIGN
# §4.5). None for the other datasets (DC alone: configs/dc.py).
PUBLISHED = {
    "cifar10": {
        "baseline": "27.4 / 22.2 / 20.6 / 30.4 / 15.6",
        "pool + KD": "30.0 / 24.9 / 25.4 / 33.9 / 21.5",
    }
}


def get_config(arg: str = ""):
    return family_config(arg, DC.SETTINGS, DC.DATASETS, pool_default="main_similar")
