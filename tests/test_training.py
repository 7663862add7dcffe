"""Training steps against independent expectations: PyTorch's SGD rule by hand, step counts, masking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import training
from jaxdd.evaluation import EvalProtocol, protocol_optimizer


def test_protocol_optimizer_follows_pytorch_sgd_with_coupled_weight_decay_and_step_decay():
    protocol = EvalProtocol(epochs=4, batch_size=2, lr=0.1, momentum=0.9, weight_decay=0.01)
    tx = protocol_optimizer(protocol, num_images=3)  # 2 steps per epoch, lr ×0.1 from step 4
    params = {"w": jnp.array([1.0, -2.0])}
    grads = [np.array([0.5, 0.25]) * (i + 1) for i in range(8)]
    state = tx.init(params)
    p, buf = np.array([1.0, -2.0]), np.zeros(2)
    for step, g in enumerate(grads):
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        d = g + 0.01 * p  # torch.optim.SGD: weight decay added to the gradient,
        buf = 0.9 * buf + d  # then momentum (first step: buf = d),
        p = p - (0.1 if step < 4 else 0.01) * buf  # then the learning rate.
        np.testing.assert_allclose(params["w"], p, rtol=1e-5)


class _Linear(nn.Module):
    """The model contract in miniature: returns (logits, {'embedding': ...})."""

    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train=False):
        flat = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(flat), {"embedding": flat}


def test_train_epochs_takes_ceil_n_over_batch_steps_per_epoch():
    model, tx = _Linear(), optax.sgd(0.1)
    tx_counted = optax.chain(tx, optax.scale_by_schedule(lambda count: 1.0))
    state = training.init_train_state(model, jax.random.PRNGKey(0), (2, 2, 1), tx_counted)
    images = jnp.ones((5, 2, 2, 1))
    labels = jnp.array([0, 1, 0, 1, 0])
    state, losses = training.train_epochs(
        model, tx_counted, state, images, labels, jax.random.PRNGKey(1), epochs=3, batch_size=2
    )
    assert losses.shape == (3,)
    assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 3 * 3  # 2 full + 1 partial per epoch
    assert training.steps_per_epoch(5, 2) == 3 and training.steps_per_epoch(4, 2) == 2


def test_training_lowers_the_loss():
    model, tx = _Linear(), optax.sgd(0.5)
    state = training.init_train_state(model, jax.random.PRNGKey(0), (2, 2, 1), tx)
    images = jnp.concatenate([jnp.ones((4, 2, 2, 1)), -jnp.ones((4, 2, 2, 1))])
    labels = jnp.array([0] * 4 + [1] * 4)
    _, losses = training.train_epochs(
        model, tx, state, images, labels, jax.random.PRNGKey(1), epochs=20, batch_size=4
    )
    assert losses[-1] < 0.1 * losses[0]


def test_a_loop_of_single_epochs_over_epoch_keys_trains_the_same_network_as_train_epochs():
    model, tx = _Linear(), optax.sgd(0.1, momentum=0.9)
    state = training.init_train_state(model, jax.random.PRNGKey(0), (2, 2, 1), tx)
    images = jax.random.normal(jax.random.PRNGKey(2), (7, 2, 2, 1))
    labels = jnp.array([0, 1, 0, 1, 1, 0, 1])
    key = jax.random.PRNGKey(1)
    whole, losses = training.train_epochs(model, tx, state, images, labels, key, epochs=3, batch_size=3)
    looped, looped_losses = state, []
    for index, epoch_key in enumerate(training.epoch_keys(key, 3)):
        looped, loss = training.train_one_epoch(
            model, tx, looped, images, labels, epoch_key, index, batch_size=3
        )
        looped_losses.append(loss)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), whole.params, looped.params
    )
    np.testing.assert_allclose(losses, looped_losses, rtol=1e-5)
    assert not np.allclose(whole.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_predict_correct_counts_only_real_images_when_padding():
    model = _Linear()
    params = {"Dense_0": {"kernel": jnp.zeros((4, 2)), "bias": jnp.array([1.0, 0.0])}}  # always predicts 0
    images = jnp.zeros((7, 2, 2, 1))
    labels = jnp.array([0, 1, 0, 1, 1, 0, 1])  # three zeros
    correct = training.predict_correct(model, params, {}, images, labels, batch_size=3)  # padded to 9
    assert int(correct) == 3
