"""The figures' axes: where their tick labels sit on the images they label."""

import numpy as np
import pytest

from ae_jax import plots


@pytest.mark.parametrize('n, height, width', [(15, 28, 28), (5, 8, 12)])
def test_the_latent_grids_ticks_sit_on_the_centres_of_their_rows_and_columns(
    n, height, width, monkeypatch):
  axes = {}

  def keep(fig, path):
    del path
    axes['ax'] = fig.axes[0]

  monkeypatch.setattr(plots, '_save', keep)
  values = np.linspace(-1.5, 1.5, n)
  plots.latent_grid(np.zeros((n, n, height, width, 1), np.float32), values, 'unused.png', 't')
  ax = axes['ax']
  ticks = [0, n // 2, n - 1]
  np.testing.assert_allclose(ax.get_xticks(), [width * (k + 0.5) for k in ticks])
  np.testing.assert_allclose(ax.get_yticks(), [height * (k + 0.5) for k in ticks])
  # row 0 is the top, the largest z[1]
  assert [t.get_text() for t in ax.get_yticklabels()] == [
      f'{values[::-1][k]:.2f}' for k in ticks]


def test_a_studys_reconstructions_show_the_noisy_inputs_a_denoising_point_was_given(monkeypatch):
  drawn = {}
  monkeypatch.setattr(plots, '_save', lambda fig, path, tight=True: drawn.update(fig=fig))
  clean, noisy, out = (np.full((3, 4, 4, 1), v, np.float32) for v in (0.2, 0.5, 0.8))
  plots.study_reconstructions({
      (('noise.std', 0.0),): {'input': clean, 'reconstruction': out},
      (('noise.std', 0.3),): {'input': clean, 'noisy input': noisy, 'reconstruction': out},
  }, 'unused.png')
  rows = [ax.get_ylabel() for ax in drawn['fig'].axes[::3]]
  assert rows == ['input', 'noise.std=0.0', 'noise.std=0.3\nnoisy input', 'noise.std=0.3']
  assert drawn['fig'].axes[6].get_images()[0].get_array().mean() == 0.5
