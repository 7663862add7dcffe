"""Does trajectory matching transfer better than DC and DM? DC vs DM vs MTT on Fashion-MNIST, IPC 1,
paired over 5 distillation seeds, one evaluation protocol for all three.

  python -m jaxdd.main --mode=study --config=configs/studies/mtt_fashion_mnist.py \\
    --workdir=studies/mtt_fashion_mnist

Asked by issue 19 ("Measure and report"). Every variant distils with ConvNet (seen); MLP, LeNet,
AlexNet, VGG11 and ConvNetBN are unseen; the headline is the unseen mean, paired against DC. Each
variant starts from its own recipe (the study's `recipe` key in a variant):
  - dc: configs/dc.py, its whole 1000 iterations (the reference's);
  - dm: configs/dm.py, 200 iterations (reference 20,000: reduced, as in the MetaDD study);
  - mtt: configs/mtt.py with the CIFAR-10 IPC-1 row of the reference's table (no Fashion-MNIST row
    exists: expert_epochs 2, max_start_epoch 2, lr_img 100, lr_lr 1e-7, α from 0.01) but syn_steps 10
    (the row's 50 costs ~45 s per iteration on 2 CPU cores: an unrolled student step with its
    second-order backward takes ~0.8 s at IPC 1, benchmarks/results/bench_mtt.md), 200 iterations
    (reference 5000), and a reduced expert buffer: 3 experts × 4 epochs (the reference: 100 experts × 50
    epochs), trained once and cached (~/.cache/jaxdd/experts). The student's steps are unrolled
    (`mtt.unroll`, remat 'none'): on these CPUs 3.5× faster than the default scan with remat 'none' and
    4.5× faster than with 'sqrt' at 10 steps, for ~430 MiB of scratch memory
    (benchmarks/results/bench_mtt_unroll.md); the gradient is the scan's.
Evaluation: 300 epochs without augmentation, 3 networks per (set, architecture), eval.lr 0.01 for every
set (eval.learned_lr False: MTT's learned step size is not used here, so the three methods share one
protocol; `--mode=evaluate --config.eval.learned_lr=True` on an mtt cell gives the reference's).
Cost on 2 cores, estimated from single measurements: the expert buffer ~30 min; 15 cells, each
distillation plus an evaluation of ~8 min (DC ~10 min, DM ~7 min, MTT ~8 min at ~2 s per iteration
unrolled, against ~30 min with the scan): about 3.5 hours, resumable across sessions (--config.cell,
--config.shard split it into jobs).
"""

import ml_collections

from jaxdd.study import default_config

MTT_FASHION_MNIST_IPC1 = {  # the reference's CIFAR-10 IPC-1 row, a shorter unroll and the reduced buffer
    "syn_steps": 10,
    "expert_epochs": 2,
    "max_start_epoch": 2,
    "lr_img": 100.0,
    "lr_lr": 1e-7,
    "syn_lr_init": 0.01,
    "num_experts": 3,
    "expert_train_epochs": 4,
    "remat": "none",  # with unroll: straight-line steps keep every step's activations anyway
    "unroll": True,
}


def get_config():
    study = default_config()
    study.recipe = "configs/mtt.py:dataset=fashion_mnist,ipc=1"
    study.overrides = ml_collections.ConfigDict(
        {
            "checkpoint_every": 50,
            "eval": {"epochs": 300, "augment": "none", "learned_lr": False},
        }
    )
    study.variants = ml_collections.ConfigDict(
        {
            "dc": {"recipe": "configs/dc.py:dataset=fashion_mnist,ipc=1"},
            "dm": {"recipe": "configs/dm.py:dataset=fashion_mnist,ipc=1", "iterations": 200},
            "mtt": {"iterations": 200, "mtt": MTT_FASHION_MNIST_IPC1},
        }
    )
    study.reference = "dc"
    study.seeds = "0,1,2,3,4"
    study.archs = "ConvNet,AlexNet,VGG11,MLP,LeNet,ConvNetBN"
    study.num_nets = 3
    return study
