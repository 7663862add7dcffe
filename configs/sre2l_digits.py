"""SRe2L (squeeze, recover, relabel; Yin, Xing & Shen, NeurIPS 2023) on scikit-learn digits,
teacher ConvNetBN.

  python -m jaxdd.main --config=configs/sre2l_digits.py:ipc=10 --workdir=runs/sre2l_digits_ipc10

Squeeze: ConvNetBN trained on the real data (teachers.epochs, SGD), cached under
~/.cache/jaxdd/teachers/digits/ConvNetBN/
and reused (--config.teachers.train=False refuses to train one).
Recover: 1000 Adam iterations from noise (lr 0.25, betas 0.5/0.9, cosine), CE on random-resized-crop/flip
views + r_bn 0.01 × BatchNorm-statistics distance. Relabel: the table's 'arch+soft' columns, students
trained on the teacher's soft labels (KL at T 20, AdamW lr 1e-3, weight decay 0.01, cosine), beside
the hard-label columns of the standard protocol.
No published number (scikit-learn digits is jaxdd's offline smoke-test set).
"""

from jaxdd.config import apply_arg, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.dataset = "digits"
    config.ipc = 10
    config.method = "sre2l"
    config.model = "ConvNetBN"  # the teacher: SRe2L needs BatchNorm
    config.init = "noise"
    config.iterations = 1000
    config.eval.archs = "ConvNet,MLP,AlexNet,ResNet18BN"  # no LeNet, VGG11 (8×8 too small), ResNet18 (IN)
    return apply_arg(config, arg)
