"""jaxdd's DC outer iteration against the same iteration in PyTorch, timed alternately in one process.

  python -m benchmarks.bench_torch_dc [--ipc 1,10] [--outers 1,2] [--repeats 3] [--quick]

The PyTorch side is written here from the DC paper (Zhao, Mopuri & Bilen, ICLR 2021, Algorithm 1) to do
exactly what `jaxdd.methods.gradient_matching.outer_step` does (DESIGN §4.1): a fresh reference ConvNet
(width 128, depth 3, instance norm = GroupNorm(C, C, affine), ReLU, 2x2 average pooling, linear head;
padding 3 on the first conv of grayscale images); `outer_loop` times { per class c, the CE gradient of
the network on `batch_real` real images (a constant) against the one on the class's synthetic images
(`create_graph=True`), distance 'ours' (per-output-row cosine distance summed over the weight tensors,
biases and norm parameters excluded); one SGD(lr 0.1, momentum 0.5) pixel step on the loss summed over
classes; unless last, `inner_loop` epochs of SGD(lr 0.01) of the network on the synthetic set in
shuffled batches of 256 }. tests/test_torch_dc.py checks that both give the same losses and pixels.

Fashion-MNIST shapes (10 classes, 28x28x1, random arrays as the real set, 300 per class), batch_real
256. jaxdd runs its compiled `outer_step` (`lower().compile()`, compile_s) with the CPU defaults of
`gradient_matching.BACKEND_DEFAULTS` ('auto' settings); PyTorch runs eagerly with as many intra-op
threads as the process has cores, on --torch-device (cpu unless told; 'auto': CUDA where torch sees a
GPU, its TF32 settings in the notes). The two alternate --repeats times; 'seconds' is the best run. IPC 1
runs the reference iteration (outer 1, inner 1); a larger IPC runs --outers outer-loop steps with the
reference's inner epochs, and with 1 and 2 the reference iteration (O matches + O-1 inner trainings, O
the reference's outer_loop) is extrapolated as O·m + (O-1)·t from m = t(outer 1) and t = t(outer 2) -
2m, as bench_gradient_matching does. images/s counts the real and synthetic images matched: outer ·
classes · (batch_real + ipc) per second. Without torch (`pip install -e '.[bench]'`) the torch rows are
recorded as skipped. Results: benchmarks/results/bench_torch_dc[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import ml_collections
import numpy as np

from benchmarks.bench_gradient_matching import Variant
from benchmarks.common import (
    add_output_arguments,
    add_real_set_arguments,
    real_set_from_args,
    reference_iteration_s,
    use_quick_real_set,
    write_results,
)
from jaxdd.config import resolve_backend
from jaxdd.methods import gradient_matching as gm

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the optional `bench` extra: the torch rows are then recorded as skipped
    torch = F = None

NOT_INSTALLED = "skipped: torch is not installed (pip install -e '.[bench]')"


def torch_convnet(num_classes: int, image_shape, *, width: int = 128, depth: int = 3):
    """The reference ConvNet in PyTorch (NCHW): [B, C, H, W] -> logits [B, num_classes]; see jaxdd's
    `models.ConvNet` (image_shape is (H, W, C), as jaxdd's)."""
    height, _, channels = image_shape
    layers = []
    for d in range(depth):
        padding = 3 if channels == 1 and d == 0 else 1
        layers += [
            torch.nn.Conv2d(channels if d == 0 else width, width, 3, padding=padding),
            torch.nn.GroupNorm(width, width, affine=True),  # instance norm, as the reference
            torch.nn.ReLU(),
            torch.nn.AvgPool2d(2, 2),
        ]
    side = height + (4 if channels == 1 else 0)
    for _ in range(depth):
        side //= 2
    layers += [torch.nn.Flatten(), torch.nn.Linear(width * side * side, num_classes)]
    return torch.nn.Sequential(*layers)


def load_jaxdd_params(net, params) -> None:
    """Copies a jaxdd ConvNet's `params` (conv kernels [kh, kw, in, out], NHWC-flattened classifier)
    into `torch_convnet`'s layers, in place."""
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net if isinstance(m, torch.nn.GroupNorm)]
    as_tensor = lambda x: torch.from_numpy(np.array(x, np.float32))
    with torch.no_grad():
        for d, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
            conv.weight.copy_(as_tensor(params[f"conv{d}"]["kernel"]).permute(3, 2, 0, 1))
            conv.bias.copy_(as_tensor(params[f"conv{d}"]["bias"]))
            norm.weight.copy_(as_tensor(params[f"norm{d}"]["scale"]))
            norm.bias.copy_(as_tensor(params[f"norm{d}"]["bias"]))
        linear = net[-1]
        width = convs[-1].out_channels
        side = round((linear.in_features // width) ** 0.5)
        kernel = as_tensor(params["classifier"]["kernel"])  # rows ordered (h, w, c); torch's (c, h, w)
        linear.weight.copy_(
            kernel.reshape(side, side, width, -1).permute(3, 2, 0, 1).reshape(-1, width * side**2)
        )
        linear.bias.copy_(as_tensor(params["classifier"]["bias"]))


def distance_ours(g_real, g_syn):
    """Σ over weight tensors (≥ 2 dims, viewed as (out, rest)) of Σ_rows (1 − cos); 1-D tensors count 0."""
    total = 0.0
    for real, syn in zip(g_real, g_syn, strict=True):
        if real.dim() < 2:
            continue
        real, syn = real.reshape(real.shape[0], -1), syn.reshape(syn.shape[0], -1)
        cos = (real * syn).sum(-1) / (real.norm(dim=-1) * syn.norm(dim=-1) + 1e-6)
        total = total + (1.0 - cos).sum()
    return total


def matching_loss(net, syn, real_by_class, *, ipc: int, batch_real: int, generator):
    """Σ_c D(∇θ CE(real_c), ∇θ CE(syn_c)) for syn [C·ipc, C, H, W] (class-major), differentiable
    w.r.t. syn; real_by_class: one [n_c, C, H, W] tensor per class, `batch_real` drawn without
    replacement."""
    params = list(net.parameters())
    total = 0.0
    for c, real in enumerate(real_by_class):
        real_c = real[torch.randperm(real.shape[0], generator=generator)[:batch_real].to(real.device)]
        loss_real = F.cross_entropy(net(real_c), _labels(c, batch_real, syn.device))
        g_real = torch.autograd.grad(loss_real, params)
        syn_c = syn[c * ipc : (c + 1) * ipc]
        loss_syn = F.cross_entropy(net(syn_c), _labels(c, ipc, syn.device))
        g_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        total = total + distance_ours([g.detach() for g in g_real], g_syn)
    return total


def _labels(c: int, n: int, device=None):
    return torch.full((n,), c, dtype=torch.long, device=device)


def outer_iteration(net, syn, pixel_opt, real_by_class, settings: gm.Settings, *, generator) -> list[float]:
    """One DC outer iteration on `net` (trained in place) and the synthetic leaf tensor `syn` [C·ipc, C,
    H, W] (stepped by `pixel_opt`); returns Σ_c D of every match."""
    num_classes = len(real_by_class)
    ipc = syn.shape[0] // num_classes
    labels = torch.arange(num_classes, device=syn.device).repeat_interleave(ipc)
    net_opt = torch.optim.SGD(net.parameters(), lr=settings.lr_net)
    losses = []
    for ol in range(settings.outer_loop):
        loss = matching_loss(
            net, syn, real_by_class, ipc=ipc, batch_real=settings.batch_real, generator=generator
        )
        (syn.grad,) = torch.autograd.grad(loss, [syn])  # the pixels only, as jaxdd differentiates
        pixel_opt.step()
        losses.append(float(loss))
        if ol == settings.outer_loop - 1:
            break
        images = syn.detach()
        for _ in range(settings.inner_loop):
            order = torch.randperm(images.shape[0], generator=generator).to(images.device)
            for start in range(0, images.shape[0], settings.batch_train):
                idx = order[start : start + settings.batch_train]
                net_opt.zero_grad()
                F.cross_entropy(net(images[idx]), labels[idx]).backward()
                net_opt.step()
    return losses


def pixel_optimizer(syn, settings: gm.Settings):
    return torch.optim.SGD([syn], lr=settings.lr_img, momentum=settings.momentum_img)


class TorchVariant:
    """The PyTorch DC iteration of one configuration on the NCHW copy of the real set on `device` (a
    torch device name, 'cpu' or 'cuda'), and its timings."""

    def __init__(self, real, settings: gm.Settings, *, ipc: int, width: int, depth: int, device: str = "cpu"):
        self.settings, self.width, self.depth, self.device = settings, width, depth, device
        self.image_shape, self.num_classes = tuple(real.image_shape), real.num_classes
        images = torch.from_numpy(np.array(real.train_images)).permute(0, 3, 1, 2).contiguous().to(device)
        starts, counts = np.asarray(real.class_start), np.asarray(real.class_count)
        self.real_by_class = [images[s : s + n] for s, n in zip(starts, counts, strict=True)]
        self.generator = torch.Generator().manual_seed(0)
        height, width_px, channels = self.image_shape
        self.syn = torch.randn(self.num_classes * ipc, channels, height, width_px, generator=self.generator)
        self.syn = self.syn.to(device).requires_grad_(True)
        self.pixel_opt = pixel_optimizer(self.syn, settings)
        self.times: list[float] = []

    def run(self) -> float:
        """Seconds of one outer iteration with a fresh network (its creation included, as jaxdd's)."""
        start = time.perf_counter()
        net = torch_convnet(self.num_classes, self.image_shape, width=self.width, depth=self.depth)
        outer_iteration(
            net.to(self.device), self.syn, self.pixel_opt, self.real_by_class, self.settings,
            generator=self.generator,
        )  # fmt: skip
        if self.device != "cpu":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - start)
        return self.times[-1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", default="1,10", help="comma-separated IPCs (outer/inner from gm.LOOPS)")
    parser.add_argument("--outers", default="1,2", help="outer-loop steps timed for IPC > 1")
    add_real_set_arguments(parser)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch-device", default="cpu", help="'cpu', 'cuda', or 'auto' (cuda if available)")
    add_output_arguments(
        parser, name="bench_torch_dc", quick_help="smoke run: 8x8 images, width-8 depth-1 net, 3 classes, -O0"
    )
    args = parser.parse_args(argv)
    if args.quick:
        use_quick_real_set(args)
        args.repeats = 1
        args.width, args.depth, args.name = 8, 1, args.name + "_quick"
        jax.config.update("jax_disable_most_optimizations", True)  # compilation dominates a smoke run
    real = real_set_from_args(args)
    threads = _cores()
    device = args.torch_device
    if torch is not None:
        torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"

    pairs = []  # (info, jaxdd Variant, TorchVariant | None)
    for ipc in (int(i) for i in args.ipc.split(",")):
        ref_outer, inner = gm.loops_for_ipc(ipc)
        for outer in [ref_outer] if ipc == 1 else [int(o) for o in args.outers.split(",")]:
            config = ml_collections.ConfigDict(
                {
                    "devices": 0,
                    "method": "dc",
                    "dataset": "fashion_mnist",
                    "ipc": ipc,
                    "init": "noise",
                    "seed": 0,
                }
            )
            config.model = {"width": args.width, "depth": args.depth}
            config.gm = gm.default_config()
            config.gm.update(outer_loop=outer, inner_loop=inner, batch_real=args.batch_real)
            resolve_backend(config)  # the backend's choices, as a run's
            info = {"ipc": ipc, "outer": outer, "inner": inner}
            print("compiling", info, flush=True)
            jaxdd_variant = Variant(config, real, info)
            settings = gm.settings_from_config(
                config, min_class_count=real.min_class_count, num_classes=real.num_classes
            )
            jaxdd_variant.settings = settings  # the resolved 'auto' choices, for the notes
            torch_variant = None
            if torch is not None:
                torch_variant = TorchVariant(
                    real, settings, ipc=ipc, width=args.width, depth=args.depth, device=device
                )
            pairs.append((info, jaxdd_variant, torch_variant))
    for _ in range(args.repeats):
        for info, jaxdd_variant, torch_variant in pairs:
            print(f"{info} jaxdd: {jaxdd_variant.run():.2f} s", flush=True)
            if torch_variant is not None:
                print(f"{info} torch: {torch_variant.run():.2f} s", flush=True)

    rows = _rows(pairs, args, threads)
    s = pairs[0][1].settings
    notes = (
        f"DC, ConvNet width {args.width} depth {args.depth} (instance norm, ReLU, avg pool) on "
        f"{args.classes} classes of {args.shape.replace(',', 'x')} random images ({args.per_class}/class), "
        f"batch_real {args.batch_real}. jaxdd: compiled `outer_step` on {jax.default_backend()}, the "
        f"backend's defaults (parallel {s.parallel}, class_chunk {s.class_chunk}, class_loop "
        f"{s.class_loop}), XLA's own thread pool. torch "
        f"{torch.__version__ if torch is not None else '(not installed)'}: eager on {device}, {threads} "
        f"intra-op threads (set to the core count){_tf32_note(device)}. 'seconds': best of {args.repeats} "
        "alternating runs of one outer iteration; jaxdd_over_torch > 1 means jaxdd is slower. "
        "ref_iteration_s: the reference iteration extrapolated from outer 1 and 2."
    )
    columns = list(dict.fromkeys(c for row in rows for c in row))
    path = write_results(args.name, rows, columns=columns, notes=notes, out_dir=args.out_dir)
    for row in rows:
        print(row)
    print(path)


def _tf32_note(device: str) -> str:
    """On CUDA, whether torch computes float32 convolutions and matmuls in TF32 (its defaults: convolutions
    yes, matmuls no), as XLA does by default on the GPU."""
    if torch is None or device == "cpu":
        return ""
    return (
        f", TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
        f"TF32 matmuls {torch.backends.cuda.matmul.allow_tf32}"
    )


def _rows(pairs, args, threads: int) -> list[dict]:
    """One row per (ipc, outer, framework), with the ratio of the pair and the extrapolated iteration."""
    best = {}
    for info, jaxdd_variant, torch_variant in pairs:
        key = (info["ipc"], info["outer"])
        best[key, "jaxdd"] = min(jaxdd_variant.times)
        if torch_variant is not None:
            best[key, "torch"] = min(torch_variant.times)
    rows = []
    for info, jaxdd_variant, torch_variant in pairs:
        key = (info["ipc"], info["outer"])
        matched = info["outer"] * args.classes * (args.batch_real + info["ipc"])
        ratio = None
        if (key, "torch") in best and not jaxdd_variant.error:
            ratio = best[key, "jaxdd"] / best[key, "torch"]
        for framework, variant in (("jaxdd", jaxdd_variant), ("torch", torch_variant)):
            row = {**info, "framework": framework}
            if variant is None:
                rows.append({**row, "threads": "-", "seconds": NOT_INSTALLED})
                continue
            row["threads"] = threads if framework == "torch" else "xla"
            row["compile_s"] = round(jaxdd_variant.compile_s, 1) if framework == "jaxdd" else "-"
            if framework == "jaxdd" and jaxdd_variant.error:
                rows.append({**row, "seconds": "failed", "error": jaxdd_variant.error})
                continue
            seconds = best[key, framework]
            row.update(runs=len(variant.times), seconds=round(seconds, 3))
            row["images_per_s"] = round(matched / seconds, 1)
            if ratio is not None:
                row["jaxdd_over_torch"] = round(ratio, 2)
            one = best.get(((info["ipc"], 1), framework))
            if info["outer"] == 2 and one is not None:
                outer_ref = gm.loops_for_ipc(info["ipc"])[0]
                row["ref_iteration_s"] = round(reference_iteration_s(outer_ref, one, seconds), 1)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
