"""The gradient-matching loss of DC/DSA for one network and averaged over K stacked networks.

    L(S) = Σ_c D( ∇θ CE(f_θ(A(R_c)), c),  ∇θ CE(f_θ(A(S_c)), c) )

(Zhao, Mopuri & Bilen, ICLR 2021, eq. 8-10; DSA: Zhao & Bilen, ICML 2021). The real gradient is a
constant (`stop_gradient`), the synthetic one is differentiated again w.r.t. the pixels S. A is the
identity (DC) or one DSA op drawn with the class's key and applied siamese: the same op and parameters
to R_c and S_c.

How classes and networks are iterated is a performance choice, never a numerical one (results agree up
to float reassociation):
- classes: groups of `class_chunk` classes (0: all in one group) under one `vmap`, the groups either a
  `lax.map` (`class_loop='map'`: one copy of the graph) or unrolled in the traced program ('unroll':
  C / chunk copies, no while loop).
- networks: `vmap`, an unrolled loop ('loop') or `lax.map` ('map').
Measured on a 2-core CPU (benchmarks/results/bench_gradient_matching_*.md): one class at a time under
`lax.map` is the fastest and by far the leanest (0.8 GiB of temporaries for 10 Fashion-MNIST classes,
against 7-8 GiB unrolled or all in one vmap), once `models.conv` keeps weight gradients inside loops on
XLA:CPU's fast kernels.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd import augment, sharding, training
from jaxdd.data.real import RealData, sample_class_batch
from jaxdd.methods.matching_distance import distance

CLASS_LOOPS = ("map", "unroll")
NET_LOOPS = ("vmap", "loop", "map")


@dataclasses.dataclass(frozen=True)
class MatchOptions:
    """How the matching loss is computed (hashable: it may be a `jit` static argument).

    Attributes:
      batch_real: distinct real images per class per match. strategy: the DSA strategy applied siamese
        to each class's real and synthetic batch ('' for none, DC). metric: the distance D ('ours' |
        'mse' | 'cos', `matching_distance.METRICS`).
      class_chunk: classes per `vmap` group (0: all in one). class_loop: over the groups, 'map'
        (`lax.map`) | 'unroll'. parallel: over the K stacked networks, 'vmap' | 'loop' | 'map' (the
        stacked functions only). devices: the devices the classes are split over. These choose how the
        work is iterated, never its result.
    """

    batch_real: int
    strategy: str = ""
    metric: str = "ours"
    class_chunk: int = 0
    class_loop: str = "map"
    parallel: str = "vmap"
    devices: int = 1


def class_gradient(model: nn.Module, params, batch_stats, images: jax.Array, label) -> dict:
    """∇θ of the mean CE of images [B,H,W,C], all labelled `label`, in eval mode (frozen BN statistics)."""

    def loss(params):
        logits, _, _ = training.apply_model(model, params, batch_stats, images, train=False)
        return training.cross_entropy(logits, jnp.full(images.shape[:1], label, jnp.int32))

    return jax.grad(loss)(params)


def class_distance(
    model, params, batch_stats, real_c, syn_c, label, aug_key, options: MatchOptions
) -> jax.Array:
    """D(g_real, g_syn) of one class (`options.metric`); `aug_key` augments R_c and S_c identically with
    `options.strategy` (siamese DSA)."""
    if options.strategy:
        real_c = augment.augment(real_c, aug_key, strategy=options.strategy, siamese=True)
        syn_c = augment.augment(syn_c, aug_key, strategy=options.strategy, siamese=True)
    g_real = jax.lax.stop_gradient(class_gradient(model, params, batch_stats, real_c, label))
    g_syn = class_gradient(model, params, batch_stats, syn_c, label)
    return distance(g_real, g_syn, options.metric)


def over_classes(fn, labels: jax.Array, syn: jax.Array, *, chunk: int, loop: str):
    """fn(label, syn_c) for every class, outputs (a pytree) stacked on a leading class axis [C, ...].

    Groups of `chunk` classes (0: one group) go through one `vmap`; `loop` runs the groups as a
    `lax.map` or unrolled in the traced program.
    """
    num_classes = labels.shape[0]
    chunk = num_classes if chunk <= 0 else min(chunk, num_classes)
    if chunk > 1:
        group = jax.vmap(fn)
    else:  # no vmap of size 1
        group = lambda label, syn_c: jax.tree.map(lambda x: x[None], fn(label[0], syn_c[0]))
    concat = lambda *outs: jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
    if loop == "unroll" or num_classes == chunk:
        starts = range(0, num_classes, chunk)
        return concat(*_in_sequence(group, [(labels[s : s + chunk], syn[s : s + chunk]) for s in starts]))
    if loop != "map":
        raise ValueError(f"unknown class loop {loop!r}; valid: {', '.join(CLASS_LOOPS)}")
    full = num_classes - num_classes % chunk
    grouped = (labels[:full].reshape(-1, chunk), syn[:full].reshape(-1, chunk, *syn.shape[1:]))
    out = jax.lax.map(lambda xs: group(*xs), grouped)
    out = jax.tree.map(lambda x: x.reshape(full, *x.shape[2:]), out)
    if full < num_classes:
        out = concat(out, group(labels[full:], syn[full:]))
    return out


def _in_sequence(fn, inputs: list) -> list:
    """[fn(*x) for x in inputs], each call scheduled after the previous one has finished.

    An `optimization_barrier` ties call i+1's inputs to call i's outputs; without it XLA may interleave
    the unrolled calls and keep all their intermediates alive at once (7 GiB instead of 0.8 GiB for the
    matching of 10 Fashion-MNIST classes on CPU).
    """
    outs = []
    for args in inputs:
        if outs:
            args, _ = jax.lax.optimization_barrier((args, outs[-1]))
        outs.append(fn(*args))
    return outs


def _per_class(fn_of_class, key, real: RealData, batch_real: int):
    """(label, syn_c) -> fn_of_class(label, real_c, syn_c, aug_key), with class c's real batch and DSA
    key drawn from `fold_in(key, c)`."""

    def one_class(label, syn_c):
        real_key, aug_key = jax.random.split(jax.random.fold_in(key, label))
        real_c = sample_class_batch(real, label, real_key, batch_real)
        return fn_of_class(label, real_c, syn_c, aug_key)

    return one_class


def _every_class(one_class, images: jax.Array, num_classes: int, options: MatchOptions):
    """one_class(label, syn_c) for every class of the class-major images [C·ipc, H, W, C], stacked on a
    leading class axis, the classes split over `options.devices` devices."""
    syn = images.reshape(num_classes, -1, *images.shape[1:])
    labels = jnp.arange(num_classes, dtype=jnp.int32)
    chunk, loop = options.class_chunk, options.class_loop
    per_class = sharding.over_class_shards(
        lambda labels, syn: over_classes(one_class, labels, syn, chunk=chunk, loop=loop), options.devices
    )
    return per_class(labels, syn)


def matching_loss(
    model: nn.Module,
    params,
    batch_stats,
    images: jax.Array,
    real: RealData,
    key: jax.Array,
    options: MatchOptions,
) -> jax.Array:
    """Σ_c D for one network; images [C·ipc, H, W, C] class-major (a scalar, differentiable w.r.t. images).

    Class c's real batch (`options.batch_real` distinct images) and DSA key come from `fold_in(key, c)`:
    every network given the same key sees the same real batches and augmentations.
    `options.devices` > 1 splits the classes over that many devices (`sharding.over_class_shards`);
    `options.parallel` is not used (one network).
    """
    distance_c = lambda label, real_c, syn_c, aug_key: class_distance(
        model, params, batch_stats, real_c, syn_c, label, aug_key, options
    )
    one_class = _per_class(distance_c, key, real, options.batch_real)
    return jnp.sum(_every_class(one_class, images, real.num_classes, options))


def matching_loss_and_grad(
    model: nn.Module,
    params,
    batch_stats,
    images: jax.Array,
    real: RealData,
    key: jax.Array,
    options: MatchOptions,
) -> tuple[jax.Array, jax.Array]:
    """`matching_loss` and its gradient w.r.t. images [C·ipc, H, W, C], one class at a time.

    S_c enters only its own class's term, so ∂L/∂S_c = ∂D_c/∂S_c: each class is differentiated on its
    own, which lets XLA free a class's second-order residuals before the next class (one reverse pass
    over the whole sum keeps every class's alive: 7 GiB for 10 Fashion-MNIST classes unrolled on CPU).
    """
    value_and_grad_c = jax.value_and_grad(
        lambda syn_c, label, real_c, aug_key: class_distance(
            model, params, batch_stats, real_c, syn_c, label, aug_key, options
        )
    )
    one_class = _per_class(
        lambda label, real_c, syn_c, aug_key: value_and_grad_c(syn_c, label, real_c, aug_key),
        key,
        real,
        options.batch_real,
    )
    losses, grads = _every_class(one_class, images, real.num_classes, options)
    return jnp.sum(losses), grads.reshape(images.shape)


def over_nets(fn, stacked, parallel: str):
    """fn applied to each network of a stacked pytree (leading axis K); outputs stacked on axis 0."""
    if parallel == "vmap":
        return jax.vmap(fn)(stacked)
    if parallel == "map":
        return jax.lax.map(fn, stacked)
    if parallel == "loop":
        num = jax.tree.leaves(stacked)[0].shape[0]
        outs = _in_sequence(fn, [(jax.tree.map(lambda x, k=k: x[k], stacked),) for k in range(num)])
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    raise ValueError(f"unknown parallel {parallel!r}; valid: {', '.join(NET_LOOPS)}")


def _over_stacked(one_net_fn, model, nets: training.TrainState, images, real, key, options: MatchOptions):
    """one_net_fn(model, params, batch_stats, images, real, key, options) of each of the K stacked
    networks, iterated as `options.parallel` says; outputs stacked on axis 0."""
    return over_nets(
        lambda net: one_net_fn(model, net.params, net.batch_stats, images, real, key, options),
        nets,
        options.parallel,
    )


def stacked_matching_loss(
    model: nn.Module,
    nets: training.TrainState,
    images: jax.Array,
    real: RealData,
    key: jax.Array,
    options: MatchOptions,
) -> jax.Array:
    """The matching loss averaged over K stacked networks (`nets`: leading axis K), all with the same
    real batches and augmentations; the networks iterated as `options.parallel` says."""
    return jnp.mean(_over_stacked(matching_loss, model, nets, images, real, key, options))


def stacked_matching_loss_and_grad(
    model: nn.Module,
    nets: training.TrainState,
    images: jax.Array,
    real: RealData,
    key: jax.Array,
    options: MatchOptions,
) -> tuple[jax.Array, jax.Array]:
    """`stacked_matching_loss` and its gradient w.r.t. images, through `matching_loss_and_grad`."""
    losses, grads = _over_stacked(matching_loss_and_grad, model, nets, images, real, key, options)
    return jnp.mean(losses), jnp.mean(grads, axis=0)
