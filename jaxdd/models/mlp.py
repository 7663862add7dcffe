"""MLP of the DC/DSA/DM cross-architecture evaluation (VICO-UoE/DatasetCondensation, ``networks.MLP``).

Flatten -> Dense(128) -> relu -> Dense(128) -> relu -> Dense(num_classes). The reference hard-codes the
input size (784 for grayscale, 3072 otherwise); here the first layer takes whatever H·W·C it is given,
which is the same at the reference shapes 28x28x1 and 32x32x3.
"""

import flax.linen as nn
import jax

from jaxdd.models import layers


class MLP(nn.Module):
    """``x [B, H, W, C] -> (logits [B, num_classes], {'embedding': [B, hidden]})``; no spatial feature map."""

    num_classes: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(layers.Dense(self.hidden, name="fc1")(x))
        embedding = nn.relu(layers.Dense(self.hidden, name="fc2")(x))
        logits = layers.Dense(self.num_classes, name="fc3")(embedding)
        return logits, {"embedding": embedding}

    def min_image_size(self, channels: int) -> tuple[int, str]:
        """Smallest image side the net accepts, and why."""
        return 1, "fully connected"
