"""The PyTorch original's AE and CAE, trained the way it trains them, and a VAE of the shape of
flax's example (PyTorch's examples/vae recipe), for the benchmark.

Per step: zero_grad, forward, the loss against the clean image (MSELoss; for the VAE binary
cross-entropy on logits summed over pixels plus the closed-form KL, averaged over the batch),
backward, Adam step, on tensors already in memory (the original's per-image DataLoader is slower
still). Torch's default threads. Needs `pip install -e .[bench]`.
"""

import time

import numpy as np
import torch
from torch import nn


class AE(nn.Module):

  def __init__(self, image_shape=(1, 28, 28), hidden=256, latent=32, dropout=0.1):
    super().__init__()
    size = int(np.prod(image_shape))
    self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, latent), nn.ReLU())
    self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, size), nn.Sigmoid(),
                                 nn.Unflatten(1, image_shape))

  def forward(self, x):
    latent = self.encoder(x)
    return self.decoder(latent), latent

  def loss(self, inputs, clean):
    return nn.functional.mse_loss(self(inputs)[0], clean)

  def eval_sum(self, clean):
    """The summed squared error: the MSE's numerator."""
    return nn.functional.mse_loss(self(clean)[0], clean, reduction='sum')


class VAE(nn.Module):
  """Dense 784-500-20(x2)-500-784 (flax's examples/vae, PyTorch's examples/vae)."""

  def __init__(self, size=784, hidden=500, latent=20):
    super().__init__()
    self.hidden, self.mean, self.logvar = (nn.Linear(size, hidden), nn.Linear(hidden, latent),
                                           nn.Linear(hidden, latent))
    self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, size))

  def nelbo(self, inputs, clean):
    """The single-sample negative ELBO of each image, in nats."""
    h = torch.relu(self.hidden(inputs.flatten(1)))
    mean, logvar = self.mean(h), self.logvar(h)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    logits = self.decoder(z)
    reconstruction = nn.functional.binary_cross_entropy_with_logits(
        logits, clean.flatten(1), reduction='none').sum(1)
    kl = 0.5 * (logvar.exp() + mean ** 2 - 1 - logvar).sum(1)
    return reconstruction + kl

  def loss(self, inputs, clean):
    return self.nelbo(inputs, clean).mean()

  def eval_sum(self, clean):
    return self.nelbo(clean, clean).sum()


class CAE(nn.Module):

  def __init__(self, channels=1):
    super().__init__()
    block = lambda conv, features: [conv, nn.BatchNorm2d(features), nn.ReLU()]
    self.encoder = nn.Sequential(
        *block(nn.Conv2d(channels, 32, 3, padding=1), 32),
        *block(nn.Conv2d(32, 64, 3, padding=1), 64),
        *block(nn.Conv2d(64, 128, 3, padding=1), 128),
        nn.MaxPool2d(1, 2),
        *block(nn.Conv2d(128, 256, 3, padding=1), 256),
        nn.MaxPool2d(1, 2))
    self.decoder = nn.Sequential(
        *block(nn.ConvTranspose2d(256, 128, 3, padding=1), 128),
        *block(nn.ConvTranspose2d(128, 64, 2, stride=2), 64),
        *block(nn.ConvTranspose2d(64, 32, 2, stride=2), 32),
        nn.ConvTranspose2d(32, channels, 3, padding=1), nn.Sigmoid())

  def forward(self, x):
    latent = self.encoder(x)
    return self.decoder(latent), latent

  loss, eval_sum = AE.loss, AE.eval_sum


def create(name: str) -> nn.Module:
  return {'AE': AE, 'CAE': CAE, 'VAE': VAE}[name]()


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def train_steps(model, optimizer, images: torch.Tensor, order: np.ndarray, batch_size: int,
                noise_std: float) -> float:
  """Trains on images[order] in batches; returns the mean loss."""
  model.train()
  total, steps = 0.0, 0
  for start in range(0, len(order) - batch_size + 1, batch_size):
    clean = images[order[start:start + batch_size]]
    inputs = clean + noise_std * torch.randn_like(clean) if noise_std > 0 else clean
    optimizer.zero_grad()
    loss = model.loss(inputs, clean)
    loss.backward()
    optimizer.step()
    total += loss.item()
    steps += 1
  return total / steps


@torch.no_grad()
def evaluate(model, images: torch.Tensor, batch_size: int) -> float:
  """The mean MSE over pixels (the VAE: the negative ELBO over images)."""
  model.eval()
  total = 0.0
  for start in range(0, len(images), batch_size):
    total += model.eval_sum(images[start:start + batch_size]).item()
  return total / (len(images) if isinstance(model, VAE) else images.numel())


def epoch_seconds(name: str, images: np.ndarray, num_train: int, batch_size: int,
                  noise_std: float, seed: int = 0) -> dict:
  """One epoch on `num_train` images plus validation on the rest, as the original runs it."""
  torch.manual_seed(seed)
  data = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
  train, validation = data[:num_train], data[num_train:]
  model = create(name)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  order = np.random.default_rng(seed).permutation(num_train)
  start = time.perf_counter()
  loss = train_steps(model, optimizer, train, order, batch_size, noise_std)
  train_seconds = time.perf_counter() - start
  val_loss = evaluate(model, validation, batch_size)
  return {'train_seconds': train_seconds, 'seconds': time.perf_counter() - start,
          'train_loss': loss, 'val_loss': val_loss}
