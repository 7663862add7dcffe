"""VGG11 / VGG11BN of DC/DSA/DM (VICO-UoE/DatasetCondensation, ``networks.VGG``).

Simonyan & Zisserman 2015, configuration A, as the reference writes it for small images: eight 3x3
convs (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M; M = 2x2 max-pool), each followed by
instance norm (VGG11) or BatchNorm (VGG11BN) and relu, then one Dense(classes) on the flattened map.
The first conv pads grayscale inputs by 3 (28x28 -> 32x32), all others by 1. At the reference shapes
the last map is 1x1x512; a larger input (64x64 -> 2x2) gives a correspondingly larger classifier.
"""

import flax.linen as nn
import jax

from jaxdd.models import layers
from jaxdd.models.conv import ConvOptions


class VGG11(nn.Module):
    """``x [B, H, W, C] -> (logits, {'embedding': [B, h·w·512], 'feature_map': [B, h, w, 512]})``.

    h = H'/32 (floor at each pool), H' = H + 4 for grayscale else H. ``norm``: instancenorm or
    batchnorm; ``widths``: the four stage widths (reference 64, 128, 256, 512; smaller for tests).
    """

    num_classes: int
    norm: str = "instancenorm"
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    conv: ConvOptions = ConvOptions()  # how its convolutions are computed (`conv.ConvOptions`)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        w1, w2, w3, w4 = self.widths
        stages = ((w1,), (w2,), (w3, w3), (w4, w4), (w4, w4))
        i = 0
        for stage in stages:
            for width in stage:
                padding = 3 if i == 0 and x.shape[-1] == 1 else 1
                x = layers.Conv2d(width, 3, padding=padding, conv=self.conv, name=f"conv{i}")(x)
                x = nn.relu(layers.make_norm(self.norm, name=f"norm{i}")(x, train))
                i += 1
            x = layers.pool2x2("maxpool", x)
        embedding = x.reshape(x.shape[0], -1)
        logits = layers.Dense(self.num_classes, name="classifier")(embedding)
        return logits, {"embedding": embedding, "feature_map": x}

    def min_image_size(self, channels: int) -> tuple[int, str]:
        """Smallest image side the net accepts, and why."""
        return (28 if channels == 1 else 32), "5 max-pools"
