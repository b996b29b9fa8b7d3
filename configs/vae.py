"""Variational autoencoder (Kingma and Welling): Dense 784-500-20 with a Gaussian latent and a
Bernoulli decoder, the shape of flax's examples/vae, so that results compare with it and with
published numbers.

  python -m ae_jax.main --config=configs/vae.py     # into runs/vae
  scripts/eval.sh                                   # -ELBO, its parts, -log p(x) (k=1000)
  scripts/generate.sh                               # samples, and a walk between two digits

On full Fashion-MNIST (`--config.data.source=idx --config.data.path=$FASHION`, 48,000 train /
12,000 validation images): test -ELBO 245.64 +- 0.17 nats after 10 epochs over three seeds (the
README's study; over seeds 28-55 245.54 +- 0.23, and flax's example code on the same data
245.48 +- 0.21: the same within chance, docs/studies.md), -log p(x) 242.3 (k=1000, seed 0),
about 3 s per epoch on 2 CPU cores.

Its beta-VAE: --config.model.beta=4. Its denoising variant: --config.noise.std=0.1. Binarized
MNIST, as the papers and flax's example use it: --config.data.name=binarized_mnist.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'VAE'
  config.model.hidden_dim = 500
  config.model.latent_dim = 20
  return config
