"""AlexNet / AlexNetBN of DC/DSA/DM (VICO-UoE/DatasetCondensation, ``networks.AlexNet``, ``AlexNetBN``).

A small-image AlexNet (Krizhevsky et al. 2012) as the reference writes it: conv5x5(128, padding 4 for
grayscale else 2) -> pool -> conv5x5(192, p2) -> pool -> conv3x3(256, p1) -> conv3x3(192, p1) ->
conv3x3(192, p1) -> pool -> Dense(classes); relu after every conv, 2x2 max-pools, BatchNorm after every
conv in AlexNetBN. At 28x28x1 and 32x32x3 the last map is 4x4x192 (the reference's 192·4·4).
"""

import flax.linen as nn
import jax

from jaxdd.models import layers
from jaxdd.models.conv import ConvOptions


class AlexNet(nn.Module):
    """``x [B, H, W, C] -> (logits, {'embedding': [B, h·w·192], 'feature_map': [B, h, w, 192]})``.

    h = H'/8 (floor at each pool), H' = H + 4 for grayscale else H. ``norm``: none or batchnorm;
    ``widths``: the five conv widths (the reference's by default; smaller ones make tiny test nets).
    """

    num_classes: int
    norm: str = "none"
    widths: tuple[int, ...] = (128, 192, 256, 192, 192)
    conv: ConvOptions = ConvOptions()  # how its convolutions are computed (`conv.ConvOptions`)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        first_padding = 4 if x.shape[-1] == 1 else 2
        # (kernel, padding, pool after) per conv
        plan = ((5, first_padding, True), (5, 2, True), (3, 1, False), (3, 1, False), (3, 1, True))
        for i, (width, (k, p, pool)) in enumerate(zip(self.widths, plan, strict=True)):
            x = layers.Conv2d(width, k, padding=p, conv=self.conv, name=f"conv{i}")(x)
            x = nn.relu(layers.make_norm(self.norm, name=f"norm{i}")(x, train))
            if pool:
                x = layers.pool2x2("maxpool", x)
        embedding = x.reshape(x.shape[0], -1)
        logits = layers.Dense(self.num_classes, name="classifier")(embedding)
        return logits, {"embedding": embedding, "feature_map": x}

    def min_image_size(self, channels: int) -> tuple[int, str]:
        """Smallest image side the net accepts, and why."""
        return (4 if channels == 1 else 8), "3 max-pools"
