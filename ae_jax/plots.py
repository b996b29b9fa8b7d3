"""Every figure ae_jax draws, with matplotlib's object API (no pyplot, no global state)."""

import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np


def _save(fig: Figure, path: str) -> None:
  FigureCanvasAgg(fig)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=fig.dpi, bbox_inches='tight')
  os.replace(tmp, path)  # a viewer never sees a half-written figure


def loss_curve(rows: list[dict], path: str) -> None:
  """Train and validation loss per epoch, from the rows of metrics.jsonl."""
  fig = Figure(figsize=(6, 4), dpi=100)
  ax = fig.add_subplot()
  epochs = [r['epoch'] for r in rows]
  ax.plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
  ax.plot(epochs, [r['val_loss'] for r in rows], 's-', label='validation')
  ax.set_xlabel('epoch')
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(f'loss ({rows[0]["loss"]})' if rows else 'loss')
  ax.set_yscale('log')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  _save(fig, path)


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Stacks equal-length rows of images (each (N, H, W, C)) into one (R*H, N*W, C) image."""
  return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
