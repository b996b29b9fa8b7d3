"""flax's examples/vae (its models.py, its losses, train.py's recipe: Adam at 1e-3, batch 128,
one posterior sample in the test loss), trained on ae_jax's splits of the same data, so that
configs/vae.py's test -ELBO compares with flax's own code (docs/studies.md).

  python benchmarks/flax_vae.py --data_path=/usr/share/datasets/fashion-mnist --seeds=0,1,2

prints each seed's test loss after 10 epochs as flax's code scores it (one posterior draw), and
its mean over 30 draws, which ae_jax's figure in docs/studies.md is compared with. Each seed
takes about 45 s on 2 CPU cores.

--streams=ae_jax feeds flax's code the random streams of ae_jax's run of the same seed (its
initial parameters, its order of the batches, its latent draws) in place of its own, so that each
seed's test loss pairs with the study's (docs/studies.md).
"""

import argparse
import functools
import os
import sys
import time

import jax
from jax import random
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from ae_jax import models as ae_jax_models
from ae_jax import train as ae_jax_train
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

# ae_jax's VAE layers: flax's (part, layer)
AE_JAX_LAYERS = {'encoder_hidden': ('encoder', 'fc1'), 'encoder_mean': ('encoder', 'fc2_mean'),
                 'encoder_logvar': ('encoder', 'fc2_logvar'),
                 'decoder_hidden': ('decoder', 'fc1'), 'decoder_output': ('decoder', 'fc2')}


def from_ae_jax(params) -> dict:
  """ae_jax's VAE parameters under flax's example's names."""
  renamed = {'encoder': {}, 'decoder': {}}
  for ours, (part, layer) in AE_JAX_LAYERS.items():
    renamed[part][layer] = params[ours]
  return renamed


def loss_given_noise(params, x, eps):
  """train_step's loss with the latent noise `eps` in place of VAE's random.normal(z_rng)."""
  mean, logvar = Encoder(20).apply({'params': params['encoder']}, x)
  logits = Decoder().apply({'params': params['decoder']}, mean + eps * jnp.exp(0.5 * logvar))
  return (binary_cross_entropy_with_logits(logits, x).mean()
          + kl_divergence(mean, logvar).mean())


def ae_jax_streams(seed: int, tx):
  """(initial parameters, epoch -> batch order, step -> latent noise) of ae_jax's run of
  `seed` with configs/vae.py."""
  from configs import vae  # pylint: disable=import-outside-toplevel
  model = ae_jax_models.create_model(vae.get_config(), (28, 28, 1))
  state = jax.jit(functools.partial(ae_jax_train.create_train_state, model, tx, seed))()
  zeros = jnp.zeros((128, 20))

  @jax.jit
  def latent_noise(step):
    rngs = {'latent': ae_jax_train.step_rngs(state.rng, step)['latent']}
    return model.apply({}, zeros, zeros, rngs=rngs, method='sample_latent')

  def order(epoch, num_examples):
    return ae_jax_train.epoch_permutation(seed, epoch, num_examples)

  return from_ae_jax(state.params), order, latent_noise


def train_and_score(seed: int, epochs: int, train, test, streams: str = 'flax'
                    ) -> tuple[float, float]:
  """(the test loss as flax's code reports it, its mean over 30 posterior draws)."""
  model = VAE(20)
  rng = random.PRNGKey(seed)
  rng, key = random.split(rng)
  params = model.init(key, jnp.ones((128, 784)), rng)['params']
  tx = optax.adam(1e-3)
  order_rng = np.random.default_rng(seed)
  order = lambda epoch, num_examples: order_rng.permutation(num_examples)
  latent_noise = None
  if streams == 'ae_jax':
    params, order, latent_noise = ae_jax_streams(seed, tx)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch, z_rng, eps=None):
    def loss_fn(p):
      if eps is not None:
        return loss_given_noise(p, batch, eps)
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
  steps = len(train) // 128
  for epoch in range(epochs):
    batches = order(epoch, len(train))
    for i in range(steps):
      rng, key = random.split(rng)
      eps = None if latent_noise is None else latent_noise(epoch * steps + i)
      params, opt_state = train_step(params, opt_state,
                                     jnp.asarray(train[batches[i * 128:(i + 1) * 128]]), key, eps)
  draws = [float(test_loss(params, random.PRNGKey(k))) for k in range(100, 130)]
  return float(test_loss(params, eval_rng)), float(np.mean(draws))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_path', required=True,
                      help='a folder of Fashion-MNIST (or MNIST) IDX files')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--streams', choices=('flax', 'ae_jax'), default='flax',
                      help="whose random streams train: flax's code's own, or ae_jax's run of "
                      'the same seed (its initial parameters, batch order and latent draws)')
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
    loss, mean = train_and_score(seed, args.epochs, train, test, args.streams)
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
