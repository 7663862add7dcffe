"""SRe2L (squeeze, recover, relabel; Yin, Xing & Shen, NeurIPS 2023) on Tiny ImageNet, teacher ResNet18BN.

  python -m jaxdd.main --config=configs/sre2l_tiny_imagenet.py:ipc=50 --workdir=runs/sre2l_tiny_imagenet_ipc50

Squeeze: ResNet18BN trained on the real data (teachers.epochs, SGD), cached under
~/.cache/jaxdd/teachers/tiny_imagenet/ResNet18BN/
and reused (--config.teachers.train=False refuses to train one).
Recover: 1000 Adam iterations from noise (lr 0.25, betas 0.5/0.9, cosine), CE on random-resized-crop/flip
views + r_bn 0.01 × BatchNorm-statistics distance. Relabel: the table's 'arch+soft' columns, students
trained on the teacher's soft labels (KL at T 20, AdamW lr 1e-3, weight decay 0.01, cosine), beside
the hard-label columns of the standard protocol.
Published (SRe2L paper, IPC 50, ResNet-18 student with soft labels): 41.1, compare the
ResNet18BN+soft column. As the reference, each recover batch holds one image per class
(sre2l.batch_ipc=1); the teacher trains 50 epochs, the students 100.
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "tiny_imagenet"
    config.ipc = 50
    config.method = "sre2l"
    config.model = "ResNet18BN"  # the teacher: SRe2L needs BatchNorm
    config.init = "noise"
    config.iterations = 1000
    config.sre2l.batch_ipc = 1  # one image per class per batch, as the reference recovers
    config.sre2l.relabel.epochs = 100
    config.teachers.epochs = 50
    config.eval.archs = "ResNet18BN,ConvNetD4"
    return apply_arg(config, arg)
