"""flax's examples/vae (its models.py, its losses, train.py's recipe: Adam at 1e-3, batch 128,
one posterior sample in the test loss), trained on ae_jax's splits of the same data, so that
configs/vae.py's test -ELBO compares with flax's own code (docs/studies.md).

  python benchmarks/flax_vae.py --data_path=/usr/share/datasets/fashion-mnist --seeds=0,1,2

prints each seed's test loss after 10 epochs as flax's code scores it (one posterior draw), and
its mean over 30 draws, which ae_jax's figure in docs/studies.md is compared with. Each seed
takes about 45 s on 2 CPU cores.
"""

import argparse
import os
import sys
import time

import jax
from jax import random
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from ae_jax.input_pipeline import load_splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- flax's examples/vae/models.py and train.py, as published ------------------------------


class Encoder(nn.Module):
  latents: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(500, name='fc1')(x))
    return nn.Dense(self.latents, name='fc2_mean')(x), nn.Dense(self.latents, name='fc2_logvar')(x)


class Decoder(nn.Module):

  @nn.compact
  def __call__(self, z):
    return nn.Dense(784, name='fc2')(nn.relu(nn.Dense(500, name='fc1')(z)))


class VAE(nn.Module):
  latents: int = 20

  def setup(self):
    self.encoder, self.decoder = Encoder(self.latents), Decoder()

  def __call__(self, x, z_rng):
    mean, logvar = self.encoder(x)
    z = mean + random.normal(z_rng, logvar.shape) * jnp.exp(0.5 * logvar)
    return self.decoder(z), mean, logvar


@jax.vmap
def kl_divergence(mean, logvar):
  return -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar))


@jax.vmap
def binary_cross_entropy_with_logits(logits, labels):
  logits = nn.log_sigmoid(logits)
  return -jnp.sum(labels * logits + (1. - labels) * jnp.log(-jnp.expm1(logits)))


# --- training on ae_jax's splits ------------------------------------------------------------


def train_and_score(seed: int, epochs: int, train, test) -> tuple[float, float]:
  """(the test loss as flax's code reports it, its mean over 30 posterior draws)."""
  model = VAE(20)
  rng = random.PRNGKey(seed)
  rng, key = random.split(rng)
  params = model.init(key, jnp.ones((128, 784)), rng)['params']
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch, z_rng):
    def loss_fn(p):
      recon, mean, logvar = model.apply({'params': p}, batch, z_rng)
      return (binary_cross_entropy_with_logits(recon, batch).mean()
              + kl_divergence(mean, logvar).mean())
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def test_loss(params, z_rng):
    recon, mean, logvar = model.apply({'params': params}, test, z_rng)
    return (binary_cross_entropy_with_logits(recon, test).mean()
            + kl_divergence(mean, logvar).mean())

  rng, eval_rng = random.split(rng)
  order_rng = np.random.default_rng(seed)
  steps = len(train) // 128
  for _ in range(epochs):
    order = order_rng.permutation(len(train))
    for i in range(steps):
      rng, key = random.split(rng)
      params, opt_state = train_step(params, opt_state,
                                     jnp.asarray(train[order[i * 128:(i + 1) * 128]]), key)
  draws = [float(test_loss(params, random.PRNGKey(k))) for k in range(100, 130)]
  return float(test_loss(params, eval_rng)), float(np.mean(draws))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_path', required=True,
                      help='a folder of Fashion-MNIST (or MNIST) IDX files')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=int, default=10)
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config().data
  config.source, config.path = 'idx', args.data_path
  splits = load_splits(config)  # ae_jax's train split: 48,000 of the 60,000 training images
  train = splits['train'].images.reshape(-1, 784).astype(np.float32) / 255
  test = jnp.asarray(splits['test'].images.reshape(-1, 784).astype(np.float32) / 255)
  one_draw, expected = [], []
  for seed in [int(s) for s in args.seeds.split(',')]:
    start = time.time()
    loss, mean = train_and_score(seed, args.epochs, train, test)
    one_draw.append(loss)
    expected.append(mean)
    print(f'seed {seed}: test loss {loss:.2f} (mean of 30 draws {mean:.3f}), '
          f'{time.time() - start:.0f} s', flush=True)
  ddof = min(1, len(expected) - 1)
  print(f'{len(expected)} seeds: test loss {np.mean(one_draw):.2f} +- '
        f'{np.std(one_draw, ddof=ddof):.2f}, mean of 30 draws {np.mean(expected):.3f} +- '
        f'{np.std(expected, ddof=ddof):.3f}')


if __name__ == '__main__':
  main()
