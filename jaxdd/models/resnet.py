"""ResNet18 / ResNet18BN / ResNet18BN_AP of DC/DSA/DM (VICO-UoE/DatasetCondensation, ``networks.ResNet``,
``ResNet_AP``).

He et al. 2016, the CIFAR-style ResNet-18 the reference uses: a 3x3 stem conv (64, stride 1, padding 1,
no bias, for every channel count) -> norm -> relu, four stages of two BasicBlocks (64, 128, 256, 512;
the first block of stages 2-4 halves the resolution), then the classifier. Norm: instance norm
(ResNet18) or BatchNorm (ResNet18BN, ResNet18BN_AP). Convolutions have no bias.

- ``downsample='stride'`` (ResNet18, ResNet18BN): stride-2 3x3 conv in the block and a stride-2 1x1
  projection shortcut; the classifier sees the global mean of the last map. The reference's
  ``avg_pool2d(out, 4)`` is that global mean at 28x28 and 32x32 (4x4 maps); unlike it, this also runs
  at 64x64 (Tiny-ImageNet) and 8x8.
- ``downsample='avgpool'`` (ResNet18BN_AP): a stride-1 conv followed by 2x2 average pooling, and a
  1x1 conv -> 2x2 average pool -> norm shortcut; the classifier sees the flattened last map (3x3x512 at
  28x28, 4x4x512 at 32x32, as the reference's hard-coded sizes).
"""

import flax.linen as nn
import jax

from jaxdd.models import layers
from jaxdd.models.conv import ConvOptions


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual: ``[B, H, W, Cin] -> [B, H/stride, W/stride, features]``."""

    features: int
    stride: int
    norm: str
    downsample: str
    conv: ConvOptions = ConvOptions()  # how its convolutions are computed (`conv.ConvOptions`)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        avgpool = self.downsample == "avgpool"
        conv_stride = 1 if avgpool else self.stride
        out = layers.Conv2d(
            self.features, 3, stride=conv_stride, padding=1, use_bias=False, conv=self.conv, name="conv1"
        )(x)
        out = nn.relu(layers.make_norm(self.norm, name="norm1")(out, train))
        if avgpool and self.stride != 1:
            out = layers.pool2x2("avgpool", out)
        out = layers.Conv2d(self.features, 3, padding=1, use_bias=False, conv=self.conv, name="conv2")(out)
        out = layers.make_norm(self.norm, name="norm2")(out, train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = layers.Conv2d(
                self.features, 1, stride=conv_stride, use_bias=False, conv=self.conv, name="shortcut_conv"
            )(x)
            if avgpool:
                shortcut = layers.pool2x2("avgpool", shortcut)
            shortcut = layers.make_norm(self.norm, name="shortcut_norm")(shortcut, train)
        return nn.relu(out + shortcut)


class ResNet18(nn.Module):
    """``x [B, H, W, C] -> (logits, {'embedding': [B, D], 'feature_map': [B, h, w, 512]})``.

    ``stride``: h = ceil(H/8), D = 512 (global mean). ``avgpool``: h = floor(H/8) (floor at each pool),
    D = h·w·512. ``widths``: the four stage widths (reference 64, 128, 256, 512; smaller for tests).
    """

    num_classes: int
    norm: str = "instancenorm"
    downsample: str = "stride"
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    conv: ConvOptions = ConvOptions()  # how its convolutions are computed (`conv.ConvOptions`)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = layers.Conv2d(self.widths[0], 3, padding=1, use_bias=False, conv=self.conv, name="stem_conv")(x)
        x = nn.relu(layers.make_norm(self.norm, name="stem_norm")(x, train))
        for stage, width in enumerate(self.widths):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    width, stride, self.norm, self.downsample, self.conv, name=f"layer{stage + 1}_{block}"
                )(x, train=train)
        embedding = x.reshape(x.shape[0], -1) if self.downsample == "avgpool" else x.mean(axis=(1, 2))
        logits = layers.Dense(self.num_classes, name="classifier")(embedding)
        return logits, {"embedding": embedding, "feature_map": x}

    def min_image_size(self, channels: int) -> tuple[int, str]:
        """Smallest image side the net accepts, and why."""
        if self.downsample == "avgpool":
            return 8, "3 average-pool downsamplings"
        if self.norm == "instancenorm":
            # below 9x9 the last stage's map is 1x1, and instance norm of a single pixel is 0: every
            # image gets the same embedding and the net stays at chance (ResNet18BN has no such limit)
            return 9, "instance norm of the last stage's 1x1 map is zero for every image; ResNet18BN works"
        return 1, "strided convolutions with padding"
