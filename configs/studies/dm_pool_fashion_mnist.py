"""Does the model pool help or hurt DM's cross-architecture transfer, and is the pixel-gradient scale of
the drawn networks the reason? DM vs DM + pool (main_similar) vs DM + pool with scale-safe steps
(pool.scale='main') on Fashion-MNIST, IPC 1, paired over 3 distillation seeds.

  python -m jaxdd.main --mode=study --config=configs/studies/dm_pool_fashion_mnist.py \\
    --workdir=studies/dm_pool_fashion_mnist

Asked by issue 15 (item 10): a session saw DM + pool lower the MLP + LeNet mean by about 5 points on two
of three seeds, and DM's pixel-gradient norm swing from 0.2 to 237 on iterations that drew a similar
ConvNet. The third variant rescales those iterations' pixel gradient to the main ConvNet's norm on
the same iteration (jaxdd.pool, "Scale-safe steps"): if the scale is the cause, it recovers DM's
numbers. Seen: ConvNet (and, for the pool, ConvNet's similar variants; none of them is evaluated);
unseen: MLP, LeNet, AlexNet, VGG11. Reduced protocol: 100 DM iterations (reference 20,000), evaluation
300 epochs without augmentation (DM's reference: 1000 with DSA), 3 networks per (set, architecture).
Cost on 2 cores: about 12 to 15 minutes per cell (distillation ~2 min, AlexNet's evaluation ~5-8 min),
9 cells; resumable, and the cells can run as separate jobs (--config.shard).
"""

import ml_collections

from jaxdd.study import default_config


def get_config():
    study = default_config()
    study.recipe = "configs/dm_fashion_mnist.py:ipc=1"
    study.overrides = ml_collections.ConfigDict(
        {"iterations": 100, "checkpoint_every": 25, "eval": {"epochs": 300, "augment": "none"}}
    )
    study.variants = ml_collections.ConfigDict(
        {
            "dm": {},
            "dm+pool": {"pool": {"preset": "main_similar"}},
            "dm+pool+scale": {"pool": {"preset": "main_similar", "scale": "main"}},
        }
    )
    study.reference = "dm"
    study.seeds = "0,1,2"
    study.archs = "ConvNet,MLP,LeNet,AlexNet,VGG11"
    study.num_nets = 3
    return study
