"""2-D convolution (NHWC, HWIO) whose derivatives of every order are convolutions XLA:CPU runs fast.

Why: for a weight gradient JAX emits a convolution with permuted dimension labels
(`f01b_i01o->01bf`). Outside loops XLA:CPU rewrites it into the canonical `b01f_01io->b01f` form that
its Eigen kernels handle; inside a `while` body (`lax.scan`, `lax.map`, `fori_loop`) it does not, and
falls back to a generic loop nest: 40-60x slower (ConvNet SGD step, 2-core CPU, jax 0.10.2: 0.31 s
outside a scan versus 15.6 s inside one; benchmarks/bench_conv.py). `canonical_conv` states every
derivative itself, as a canonical convolution of transposed operands, recursively, so first- and
second-order gradients inside a scan stay on the fast kernels. Values are those of
`lax.conv_general_dilated` (tests/test_models.py compares up to the second order).

`ConvOptions` holds every choice: the implementation, 'canonical' (the CPU's) or XLA's own lowering
('lax', on GPU/TPU, where cuDNN and TPU convolutions take any labels), and the measured size thresholds
of the canonical path. It is a frozen dataclass and an attribute of every model (`layers.Conv2d`), so
it is part of the jit cache key of every program that holds a model; a run takes it from `config.conv`,
whose 'auto' implementation `jaxdd.config` resolves from the backend once (`BACKEND_IMPLEMENTATION`)
and records in config.json.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections

from jaxdd.errors import UserError, is_int

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

_LABELS = ("NHWC", "HWIO", "NHWC")
IMPLEMENTATIONS = ("canonical", "lax")
BACKEND_IMPLEMENTATION = {"cpu": "canonical", "gpu": "lax", "tpu": "lax"}


@dataclasses.dataclass(frozen=True)
class ConvOptions:
    """How `conv2d` computes a convolution and its derivatives (`config.conv`; the defaults are the
    values measured on the 2-core CPU, benchmarks/bench_conv.py and bench_profile.py).

    implementation: 'canonical' (`canonical_conv`) or 'lax' (`lax.conv_general_dilated`); the fields
      below apply to 'canonical' only.
    small_output_pixels, small_kernel_pixels: outputs of at most this many pixels, from kernels of at
      most this many, are computed as shifted slices + one matrix product: XLA:CPU's convolution
      kernels are ~40x slower on such maps (VGG11's 3x3 512->512 conv on a 2x2 map, batch 10: 0.43 s
      forward against 0.011 s on a 4x4 map), while the product is one well-shaped GEMM. The kernel bound
      keeps weight gradients (whose "kernel" is the whole output gradient map) from unrolling into
      hundreds of slices.
    im2col_columns: in `weight_gradient`, windows side by side up to this width form one product.
    product_weight_gradient_rows: weight gradients over at least this many output pixels (batch × map)
      are matrix products (`weight_gradient`): 1.2-2.2x faster than the convolution from 16,384 (batch
      256 on 8x8 maps) up, mixed below (0.6-1.4x at batch 10).
    """

    implementation: str = "canonical"
    small_output_pixels: int = 9
    small_kernel_pixels: int = 16
    im2col_columns: int = 128
    product_weight_gradient_rows: int = 16384

    def __post_init__(self):
        if self.implementation not in IMPLEMENTATIONS:
            raise UserError(
                f"conv.implementation={self.implementation!r}; valid: {', '.join(IMPLEMENTATIONS)} ('auto' "
                "in a config is resolved by jaxdd.config.validate: the backend's choice)."
            )
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            if not is_int(value) or value < 0:
                raise UserError(f"conv.{field.name}={value!r} must be an integer ≥ 0.")


def backend_implementation(backend: str) -> str:
    """The measured implementation of `backend` ('cpu', 'gpu', 'tpu'; another: XLA's own, 'lax')."""
    return BACKEND_IMPLEMENTATION.get(backend, "lax")


def default_config() -> ml_collections.ConfigDict:
    """The `config.conv` defaults: `ConvOptions`' fields, the implementation 'auto' (the backend's)."""
    return ml_collections.ConfigDict({**dataclasses.asdict(ConvOptions()), "implementation": "auto"})


def options_from_config(config: ml_collections.ConfigDict) -> ConvOptions:
    """The run's `ConvOptions` from `config.conv` (resolved: no 'auto'); the defaults for a config without
    that section (tools build partial configs)."""
    section = config.get("conv")
    return ConvOptions() if section is None else ConvOptions(**section)


def _lax_conv(x: Array, w: Array, pads: Pads, options: ConvOptions) -> Array:
    (kh, kw) = w.shape[:2]
    out_h = x.shape[1] + sum(pads[0]) - kh + 1
    out_w = x.shape[2] + sum(pads[1]) - kw + 1
    if out_h * out_w <= options.small_output_pixels and kh * kw <= options.small_kernel_pixels:
        return _slices_dot_conv(x, w, pads, out_h, out_w)
    return jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_LABELS)


def _shifted_windows(x: Array, pads: Pads, kernel: tuple[int, int], out: tuple[int, int]) -> list[Array]:
    """The kh·kw windows [B, out_h, out_w, Ci] of the zero-padded x read by each kernel offset (i, j), in
    kernel row, column order (as w's): the columns of im2col."""
    (kh, kw), (out_h, out_w) = kernel, out
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return [x[:, i : i + out_h, j : j + out_w] for i in range(kh) for j in range(kw)]


def _slices_dot_conv(x: Array, w: Array, pads: Pads, out_h: int, out_w: int) -> Array:
    """The same convolution as im2col: the shifted windows side by side on the channel axis times w as a
    [kh·kw·Ci, Co] matrix."""
    (kh, kw, ci, co) = w.shape
    windows = _shifted_windows(x, pads, (kh, kw), (out_h, out_w))
    return jnp.concatenate(windows, axis=-1) @ w.reshape(kh * kw * ci, co)


def canonical_conv(x: Array, w: Array, pads: Pads, options: ConvOptions = ConvOptions()) -> Array:
    """Stride-1 convolution x [B,H,W,Ci] * w [kh,kw,Ci,Co] with zero padding `pads` ((top, bottom),
    (left, right)) -> [B, H+top+bottom-kh+1, W+left+right-kw+1, Co], its thresholds from `options`.

    A padding wider than the kernel's half is applied with `jnp.pad` first: the convolution's own wide
    padding is 11-15x slower on XLA:CPU (see `layers.Conv2d`).
    """
    (kh, kw) = w.shape[:2]
    if pads[0][0] > (kh - 1) // 2 or pads[0][1] > (kh - 1) // 2 or max(pads[1]) > (kw - 1) // 2:
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        pads = ((0, 0), (0, 0))
    return _conv(x, w, pads, options)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: Array, w: Array, pads: Pads, options: ConvOptions) -> Array:
    return _lax_conv(x, w, pads, options)


def _conv_fwd(x, w, pads, options):
    return _lax_conv(x, w, pads, options), (x, w)


def _conv_bwd(pads, options, residuals, g):
    """dx: g padded to a full correlation with the flipped, in/out-swapped kernel, through
    `canonical_conv` again; dw: `weight_gradient`'s products for at least
    `options.product_weight_gradient_rows` output pixels (batch × map), else `canonical_conv` too."""
    x, w = residuals
    (kh, kw) = w.shape[:2]
    (top, bottom), (left, right) = pads
    # a padding wider than kernel - 1 yields output rows that read only zeros: crop g's border instead
    dx_pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    dx = _crop_or_pad(g, dx_pads, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), options)
    if g.shape[0] * g.shape[1] * g.shape[2] >= options.product_weight_gradient_rows:
        return dx, weight_gradient(x, g, pads, (kh, kw), options)
    # x's channels as the batch and its batch as the features, g as the kernel
    dw = canonical_conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pads, options)
    return dx, dw.transpose(1, 2, 0, 3)


def weight_gradient(
    x: Array, g: Array, pads: Pads, kernel: tuple[int, int], options: ConvOptions = ConvOptions()
) -> Array:
    """∂/∂w of Σ conv(x, w, pads)·g for x [B,H,W,Ci] and g [B,oh,ow,Co] -> [kh,kw,Ci,Co], as matrix
    products of the shifted windows x[:, i:i+oh, j:j+ow] (as [B·oh·ow, Ci]) with g (as [B·oh·ow, Co]):
    one product per kernel offset (i, j), or, when the windows side by side are narrow (at most
    `options.im2col_columns` columns: a first layer's few input channels), one product of all of them,
    which reads g once instead of kh·kw times.

    As a convolution this is one with a tiny output (the kernel) and a huge window (g's map), which
    XLA:CPU runs 2-3x slower than these products (28x28 ConvNet layers, batch 256; benchmarks/
    bench_profile.py found it ~45% of a DC iteration). Its derivatives are slices, pads and products.
    """
    (kh, kw), ci = kernel, x.shape[-1]
    rows = g.reshape(-1, g.shape[-1])
    windows = [window.reshape(-1, ci) for window in _shifted_windows(x, pads, kernel, g.shape[1:3])]
    if kh * kw * ci <= options.im2col_columns:
        return (jnp.concatenate(windows, axis=1).T @ rows).reshape(kh, kw, ci, g.shape[-1])
    return jnp.stack([window.T @ rows for window in windows]).reshape(kh, kw, ci, g.shape[-1])


def _crop_or_pad(x: Array, pads: Pads, w: Array, options: ConvOptions) -> Array:
    """canonical_conv(x, w, pads) where a negative pad crops x instead."""
    crop = tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in pads)
    if any(c for pair in crop for c in pair):
        x = x[:, crop[0][0] : x.shape[1] - crop[0][1], crop[1][0] : x.shape[2] - crop[1][1]]
    return canonical_conv(x, w, tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads), options)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(
    x: Array, w: Array, *, stride: int = 1, padding: int = 0, options: ConvOptions = ConvOptions()
) -> Array:
    """`torch.nn.functional.conv2d` in NHWC/HWIO with a symmetric integer padding, computed as
    `options` says.

    x [B,H,W,Ci], w [k,k,Ci,Co] -> [B, (H+2p-k)//s+1, (W+2p-k)//s+1, Co].
    """
    pads = ((padding, padding), (padding, padding))
    if options.implementation == "lax":
        k = w.shape[0]
        if padding > (k - 1) // 2:  # wide conv padding is slow on XLA:CPU, harmless elsewhere
            x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
            pads = ((0, 0), (0, 0))
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=_LABELS)
    if stride == 1:
        return canonical_conv(x, w, pads, options)
    if w.shape[0] == 1 and padding == 0:  # a strided 1x1 convolution reads every stride-th pixel
        return canonical_conv(x[:, ::stride, ::stride], w, pads, options)
    # stride s: every s-th output of the stride-1 convolution (s² the work of these few layers,
    # ResNet's downsampling convolutions, against a 40x slower strided weight gradient in loops)
    return canonical_conv(x, w, pads, options)[:, ::stride, ::stride]
