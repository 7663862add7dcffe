"""A tiny study, end to end in about a minute on 2 cores (CI runs it): DM vs DM + model pool on digits.

  python -m jaxdd.main --mode=study --config=configs/studies/tiny_digits.py --workdir=studies/tiny_digits

Measures nothing worth reporting (3 iterations, 30-epoch evaluation on 100 test images, 2 seeds): it
exercises every part of a study (cells, resume, seen/unseen, paired intervals, the report).
"""

import ml_collections

from jaxdd.study import default_config


def get_config():
    study = default_config()
    study.recipe = "configs/dm.py:dataset=digits,ipc=1"
    study.overrides = ml_collections.ConfigDict(
        {
            "iterations": 3,
            "checkpoint_every": 1,
            "model": "ConvNetW32",
            "eval": {"epochs": 30, "augment": "none", "test_size": 100},
        }
    )
    study.variants = ml_collections.ConfigDict(
        {"dm": {}, "dm+pool": {"pool": {"preset": "custom", "custom": "main:0.5,MLP:0.5"}}}
    )
    study.reference = "dm"
    study.seeds = "0,1"
    study.archs = "ConvNetW32,MLP,ConvNetD1"
    study.num_nets = 2
    return study
