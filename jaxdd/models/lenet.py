"""LeNet of the DC/DSA/DM cross-architecture evaluation (VICO-UoE/DatasetCondensation, ``networks.LeNet``).

LeCun et al. 1998, as the reference writes it: conv5x5(6, padding 2 for grayscale else 0) -> relu ->
maxpool2 -> conv5x5(16) -> relu -> maxpool2 -> Dense(120) -> relu -> Dense(84) -> relu -> Dense(classes).
At 28x28x1 and 32x32x3 the last feature map is 5x5x16 (the reference's hard-coded 16·5·5); other sizes
get a first dense layer sized to their feature map.
"""

import flax.linen as nn
import jax

from jaxdd.models import layers
from jaxdd.models.conv import ConvOptions


class LeNet(nn.Module):
    """``x [B, H, W, C] -> (logits, {'embedding': [B, 84], 'feature_map': [B, h, w, 16]})``.

    h = ((H - 4) // 2 - 4) // 2 for RGB, (H // 2 - 4) // 2 for grayscale.
    """

    num_classes: int
    conv: ConvOptions = ConvOptions()  # how its convolutions are computed (`conv.ConvOptions`)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        padding = 2 if x.shape[-1] == 1 else 0
        x = layers.pool2x2(
            "maxpool", nn.relu(layers.Conv2d(6, 5, padding=padding, conv=self.conv, name="conv1")(x))
        )
        x = layers.pool2x2("maxpool", nn.relu(layers.Conv2d(16, 5, conv=self.conv, name="conv2")(x)))
        feature_map = x
        x = nn.relu(layers.Dense(120, name="fc1")(x.reshape(x.shape[0], -1)))
        embedding = nn.relu(layers.Dense(84, name="fc2")(x))
        logits = layers.Dense(self.num_classes, name="fc3")(embedding)
        return logits, {"embedding": embedding, "feature_map": feature_map}

    def min_image_size(self, channels: int) -> tuple[int, str]:
        """Smallest image side the net accepts, and why."""
        return (12 if channels == 1 else 16), "two 5x5 convolutions and two 2x2 max-pools"
