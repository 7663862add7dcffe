"""PyTorch-default building blocks (NHWC) shared by the reference model zoo.

The published distillation hyper-parameters (lr_img, lr_net, ...) were tuned on PyTorch's default
initialisation and normalisation settings, so every layer here reproduces them:

- Conv / Dense weights and biases ~ U(±1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))`` for weights,
  the matching bound for biases); fan_in = in_channels · kh · kw.
- Norm epsilon 1e-5; BatchNorm momentum 0.1 in PyTorch terms, running variance tracked unbiased.
- Instance norm is GroupNorm with one channel per group and an affine scale/bias, as in the reference.

Every kernel keeps its output axis last (Conv ``[kh, kw, in, out]``, Dense ``[in, out]``, the ConvNet
LayerNorm scale ``[H, W, C]``), the axis a per-output-row gradient distance groups by.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.models.conv import ConvOptions, conv2d

Array = jax.Array

EPSILON = 1e-5
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "leakyrelu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
    "swish": nn.swish,  # x * sigmoid(x), the model-pool paper's Swish
}
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLS = ("avgpool", "maxpool", "none")

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias initialiser for a layer with ``fan_in`` inputs: U(±1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` in NHWC: square kernel, symmetric integer ``padding``, PyTorch init.

    ``x [B, H, W, Cin] -> [B, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, features]``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    conv: ConvOptions = ConvOptions()  # how the convolution is computed (`conv.conv2d`)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, p = self.kernel_size, self.padding
        fan_in = k * k * x.shape[-1]
        kernel = self.param("kernel", torch_kernel_init, (k, k, x.shape[-1], self.features))
        # XLA:CPU gradient timings (B=128, 2 cores, grad wrt kernel and input): a padding wider than
        # (k-1)/2 given to the convolution is 11-15x slower than jnp.pad + VALID (3x3 pad 3 on
        # 28x28x1: 1800 vs 163 ms; 5x5 pad 4: 4970 vs 340 ms); `conv.conv2d` pads such widths first.
        y = conv2d(x, kernel, stride=self.stride, padding=p, options=self.conv)
        if self.use_bias:
            y = y + self.param("bias", torch_bias_init(fan_in), (self.features,))
        return y


class Dense(nn.Module):
    """``torch.nn.Linear``: ``x [B, Din] -> [B, features]``, kernel ``[Din, features]``, PyTorch init."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", torch_kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", torch_bias_init(x.shape[-1]), (self.features,))
        return x @ kernel + bias


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` over all axes but the last (channels).

    Train mode normalises with the batch mean and biased variance and updates the running averages
    (collection ``batch_stats``: ``mean``, ``var``) with weight ``1 - momentum`` on the batch value,
    the variance unbiased (×n/(n-1)) as PyTorch does; eval mode uses the running averages. When the
    collection ``bn_stats`` is mutable, the input's batch ``mean`` and biased ``var`` are stored there in
    either mode (SRe2L's feature-statistics loss reads them from a frozen teacher). ``axis_name`` makes
    the batch statistics global across a ``shard_map``/``pmap`` axis.
    """

    momentum: float = 0.9  # Flax convention: weight of the old running value (PyTorch momentum 0.1)
    epsilon: float = EPSILON
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        # every collection is mutable during init; bn_stats must not end up in the initial variables
        record = self.is_mutable_collection("bn_stats") and not self.is_initializing()
        if train or record:
            mean, var, n = self._batch_moments(x)
            if record:
                self.put_variable("bn_stats", "mean", mean)
                self.put_variable("bn_stats", "var", var)
        if train:
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * (n / jnp.maximum(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias

    def _batch_moments(self, x: Array) -> tuple[Array, Array, Array]:
        axes = tuple(range(x.ndim - 1))
        n = jnp.asarray(x.size // x.shape[-1], jnp.float32)
        mean = jnp.mean(x, axes)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
            n = jax.lax.psum(n, self.axis_name)
        var = jnp.mean(jnp.square(x - mean), axes)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
        return mean, var, n


def make_norm(kind: str, *, name: str) -> Callable[..., Array]:
    """A norm layer ``(x [B, H, W, C], train) -> same shape``, declared inside a compact method.

    ``kind``: ``instancenorm`` (GroupNorm, 1 channel per group), ``groupnorm`` (4 groups, as the
    reference), ``layernorm`` (over (H, W, C) with an elementwise affine of shape [H, W, C], as the
    reference's ``nn.LayerNorm([C, H, W])``), ``batchnorm`` or ``none``.
    """
    if kind == "none":
        return lambda x, train: x
    if kind == "batchnorm":
        bn = BatchNorm(name=name)
        return lambda x, train: bn(x, train=train)
    if kind == "instancenorm":
        layer = nn.GroupNorm(
            num_groups=None, group_size=1, epsilon=EPSILON, use_fast_variance=False, name=name
        )
    elif kind == "groupnorm":
        layer = nn.GroupNorm(num_groups=4, epsilon=EPSILON, use_fast_variance=False, name=name)
    elif kind == "layernorm":
        axes = (1, 2, 3)
        layer = nn.LayerNorm(
            epsilon=EPSILON, reduction_axes=axes, feature_axes=axes, use_fast_variance=False, name=name
        )
    else:
        raise ValueError(f"unknown norm {kind!r}; valid: {NORMS}")
    return lambda x, train: layer(x)


def pool2x2(kind: str, x: Array) -> Array:
    """2x2 pooling with stride 2, floor mode like PyTorch: ``[B, H, W, C] -> [B, H//2, W//2, C]``."""
    if kind == "avgpool":
        return nn.avg_pool(x, (2, 2), strides=(2, 2))
    if kind == "maxpool":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    if kind == "none":
        return x
    raise ValueError(f"unknown pooling {kind!r}; valid: {POOLS}")
