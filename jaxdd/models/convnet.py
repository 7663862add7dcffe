"""ConvNet, the default network of dataset distillation, and its structured spec for model pools.

Reference: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021) and its code
(VICO-UoE/DatasetCondensation, ``networks.ConvNet``); the activation/norm/pooling variants and Swish are
from "Improve Cross-Architecture Generalization on Dataset Distillation" (the model-pool paper).

``depth`` blocks of [3x3 conv (width) -> norm -> activation -> 2x2 pool], then one linear classifier on
the flattened feature map. Grayscale inputs get padding 3 on the first conv (28x28 becomes 32x32 after
it), everything else padding 1. Default: width 128, depth 3, relu, instancenorm, avgpool.
"""

import dataclasses

import flax.linen as nn
import jax

from jaxdd.errors import UserError, is_int
from jaxdd.models import layers
from jaxdd.models.conv import ConvOptions

ACTIVATIONS = tuple(layers.ACTIVATIONS)


@dataclasses.dataclass(frozen=True)
class ConvNetSpec:
    """A ConvNet variant; the defaults are the reference ConvNet (128, 3, relu, instancenorm, avgpool).

    ``act`` ∈ relu, sigmoid, leakyrelu (slope 0.01), swish; ``norm`` ∈ instancenorm, batchnorm,
    layernorm, groupnorm (4 groups), none; ``pool`` ∈ avgpool, maxpool, none. Bad values raise UserError.
    """

    width: int = 128
    depth: int = 3
    act: str = "relu"
    norm: str = "instancenorm"
    pool: str = "avgpool"

    def __post_init__(self):
        for field, value, valid in (
            ("act", self.act, ACTIVATIONS),
            ("norm", self.norm, layers.NORMS),
            ("pool", self.pool, layers.POOLS),
        ):
            if value not in valid:
                raise UserError(
                    f"ConvNetSpec {field}={value!r} is not supported; choose one of {', '.join(valid)}."
                )
        for field, value in (("width", self.width), ("depth", self.depth)):
            if not is_int(value) or value < 1:
                raise UserError(f"ConvNetSpec {field}={value!r} must be a positive integer.")
        if self.norm == "groupnorm" and self.width % 4:
            raise UserError(
                f"ConvNetSpec width={self.width} must be divisible by 4 for groupnorm (4 groups)."
            )

    @classmethod
    def from_dict(cls, d: dict) -> "ConvNetSpec":
        """Build from a dict with (a subset of) the keys width, depth, act, norm, pool."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise UserError(
                f"ConvNet spec keys {unknown} are not supported; valid keys: {', '.join(fields)}."
            )
        return cls(**d)


class ConvNet(nn.Module):
    """``x [B, H, W, C] -> (logits [B, num_classes], out)``, the reference ConvNet.

    ``out = {'embedding': [B, h·w·width], 'feature_map': [B, h, w, width]}``. With pooling,
    h = H'/2**depth (floor at each pool), H' = H + 4 for C = 1 (the first conv pads by 3) else H; the
    embedding is the flattened feature map (DM's embedding, ``ConvNet.embed`` in the reference).
    """

    num_classes: int
    width: int = 128
    depth: int = 3
    act: str = "relu"
    norm: str = "instancenorm"
    pool: str = "avgpool"
    conv: ConvOptions = ConvOptions()  # how its convolutions are computed (`conv.ConvOptions`)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        grayscale = x.shape[-1] == 1
        for d in range(self.depth):
            padding = 3 if grayscale and d == 0 else 1
            x = layers.Conv2d(self.width, 3, padding=padding, conv=self.conv, name=f"conv{d}")(x)
            x = layers.make_norm(self.norm, name=f"norm{d}")(x, train)
            x = layers.ACTIVATIONS[self.act](x)
            x = layers.pool2x2(self.pool, x)
        embedding = x.reshape(x.shape[0], -1)
        logits = layers.Dense(self.num_classes, name="classifier")(embedding)
        return logits, {"embedding": embedding, "feature_map": x}

    def min_image_size(self, channels: int) -> tuple[int, str]:
        """Smallest image side the net accepts, and why."""
        if self.pool == "none":
            return 1, "no pooling"
        grow = 4 if channels == 1 else 0
        return max(2**self.depth - grow, 1), f"{self.depth} 2x2 poolings"

    @classmethod
    def from_spec(
        cls, spec: ConvNetSpec, *, num_classes: int, conv: ConvOptions = ConvOptions()
    ) -> "ConvNet":
        return cls(num_classes=num_classes, conv=conv, **dataclasses.asdict(spec))
