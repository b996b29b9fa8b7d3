"""Every figure ae_jax draws, with matplotlib's object API (no pyplot, no global state).

matplotlib is imported by the first figure, not with this module: training draws its first
figure after an epoch, and the import took 0.3 s of the 1.3 s that a start spent importing.
"""

import numpy as np

from ae_jax import replaced_atomically


def _figure(**kwargs):
  """matplotlib.figure.Figure(**kwargs)."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  return figure.Figure(**kwargs)


def _save(fig, path: str, tight: bool = True) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  FigureCanvasAgg(fig)
  with replaced_atomically(path) as tmp:  # a viewer never sees a half-written figure
    fig.savefig(tmp, dpi=fig.dpi, bbox_inches='tight' if tight else None)


def loss_curve(rows: list[dict], path: str) -> None:
  """Train and validation loss per epoch, from the rows of metrics.jsonl."""
  fig = _figure(figsize=(6, 4), dpi=100)
  # Fixed margins: a layout engine would double the cost of a figure redrawn every epoch.
  fig.subplots_adjust(left=0.16, right=0.97, bottom=0.12, top=0.96)
  ax = fig.add_subplot()
  epochs = [r['epoch'] for r in rows]
  ax.plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
  ax.plot(epochs, [r['val_loss'] for r in rows], 's-', label='validation')
  ax.set_xlabel('epoch')
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(f'loss ({rows[0]["loss"]})' if rows else 'loss')
  ax.set_yscale('log')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  _save(fig, path, tight=False)


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Stacks equal-length rows of images (each (N, H, W, C)) into one (R*H, N*W, C) image."""
  return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)


def _show(ax, image):
  image = np.clip(image, 0, 1)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=1)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


# The most columns reconstructions() draws: an axes each, whose layout takes about 7 s for 100
# columns and minutes for a few hundred; the commands refuse more.
MAX_COLUMNS = 100


def reconstructions(rows: dict[str, np.ndarray], column_titles, path: str, title: str) -> None:
  """One row of images per entry of `rows` ('input', 'noisy input', 'reconstruction'), one
  column per example: the original codebase's autoencoder_result.png."""
  num_rows, num_columns = len(rows), len(next(iter(rows.values())))
  # constrained: the title clears column titles of two lines
  fig = _figure(figsize=(1.2 * num_columns + 1.2, 1.3 * num_rows + 0.4), dpi=100,
                layout='constrained')
  axes = fig.subplots(num_rows, num_columns, squeeze=False)
  for r, (row_title, images) in enumerate(rows.items()):
    for c, image in enumerate(images):
      ax = axes[r, c]
      _show(ax, image)
      if c == 0:  # across, beside the row, so that labels of two lines keep to their row
        ax.set_ylabel(row_title, fontsize=9, rotation=0, ha='right', va='center')
      if r == 0 and column_titles is not None:
        ax.set_title(str(column_titles[c]), fontsize=8 if '\n' in str(column_titles[c]) else 10)
  fig.suptitle(title, fontsize=11)
  _save(fig, path)


def class_colours(num_classes: int) -> np.ndarray:
  import matplotlib  # pylint: disable=g-import-not-at-top
  if num_classes <= 10:
    return matplotlib.colormaps['tab10'](np.arange(num_classes))
  if num_classes <= 20:
    return matplotlib.colormaps['tab20'](np.arange(num_classes))
  return matplotlib.colormaps['turbo'](np.linspace(0, 1, num_classes))


def spread_out(points: np.ndarray, min_distance: float, seed: int = 0) -> list[int]:
  """Indices of points, visited in random order, at least `min_distance` from every point chosen
  before in x or in y: where square thumbnails of that size can go without overlapping."""
  chosen, chosen_points = [], np.empty((0, 2))
  for i in np.random.default_rng(seed).permutation(len(points)):
    if not chosen or np.min(np.max(np.abs(chosen_points - points[i]), 1)) >= min_distance:
      chosen.append(int(i))
      chosen_points = np.vstack([chosen_points, points[i]])
  return chosen


def tsne_map(embedding, images, labels, label_names, path: str, title: str) -> None:
  """The t-SNE scatter coloured by label, with thumbnails framed in their class colour: the
  original codebase's tsne_result.png."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  from matplotlib.offsetbox import AnnotationBbox  # pylint: disable=g-import-not-at-top
  from matplotlib.offsetbox import OffsetImage  # pylint: disable=g-import-not-at-top

  fig = _figure(figsize=(12, 11), dpi=100)
  ax = fig.add_subplot()
  ax.set_box_aspect(1)
  # The unit square, so that the thumbnail spacing does not depend on the embedding's scale.
  low, high = embedding.min(0), embedding.max(0)
  points = (embedding - low) / np.maximum(high - low, 1e-12)
  if labels is None:
    colours = np.array([[0.12, 0.47, 0.71, 1.0]])
    point_colours = np.repeat(colours, len(points), 0)
  else:
    num_classes = int(labels.max()) + 1
    colours = class_colours(num_classes)
    point_colours = colours[labels]
  ax.scatter(points[:, 0], points[:, 1], c=point_colours, s=4, alpha=0.5, linewidths=0)

  thumbnail_pixels = 30
  zoom = thumbnail_pixels / max(images.shape[1:3])
  margin = 0.03  # around the unit square, in its units
  box = ax.get_position()
  axes_pixels = min(box.width * fig.get_figwidth(), box.height * fig.get_figheight()) * fig.dpi
  framed_pixels = thumbnail_pixels * fig.dpi / 72 + 10  # OffsetImage counts points; + pad, frame
  for i in spread_out(points, min_distance=framed_pixels / axes_pixels * (1 + 2 * margin)):
    image = images[i]
    grey = image.shape[-1] == 1
    box = OffsetImage(image[..., 0] if grey else image, zoom=zoom,
                      cmap='gray_r' if grey else None)
    frame = 'grey' if labels is None else colours[labels[i]]
    ax.add_artist(AnnotationBbox(box, points[i], pad=0.15, frameon=True,
                                 bboxprops=dict(edgecolor=frame, linewidth=1.5)))
  if labels is not None:
    names = label_names or [str(c) for c in range(num_classes)]
    handles = [Line2D([], [], marker='o', linestyle='', color=colours[c], markersize=8,
                      label=names[c]) for c in range(num_classes)]
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False,
              title='label')
  ax.set_xlim(-margin, 1 + margin)
  ax.set_ylim(-margin, 1 + margin)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title)
  _save(fig, path)


def _point_label(point, sep: str = ', ') -> str:
  """((path, value), ...) -> 'noise.std=0.1, model.latent_dim=16'."""
  return sep.join(f'{path}={value}' for path, value in point) or 'all'


def study_number(summary: list[dict], axes, name: str, path: str) -> None:
  """A study's number against each grid axis (one panel each): the mean over seeds with error
  bars of one standard deviation; one line per setting of the other axes."""
  fig = _figure(figsize=(4.5 * max(len(axes), 1), 3.6), dpi=100)
  panels = fig.subplots(1, max(len(axes), 1), squeeze=False)[0]
  for ax, (axis, values) in zip(panels, axes):
    others = [p for p, _ in axes if p != axis]
    lines = {}
    for entry in summary:
      lines.setdefault(tuple((p, entry[f'config.{p}']) for p in others), []).append(entry)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    for other, entries in lines.items():
      entries = sorted(entries, key=lambda e: values.index(e[f'config.{axis}']))
      xs = [e[f'config.{axis}'] if numeric else values.index(e[f'config.{axis}'])
            for e in entries]
      ax.errorbar(xs, [e[name][0] for e in entries], yerr=[e[name][1] for e in entries],
                  marker='o', capsize=4, label=_point_label(other) if others else None)
    if not numeric:
      ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(axis)
    ax.set_ylabel(name)
    ax.grid(True, alpha=0.3)
    if others:
      ax.legend(fontsize=8)
  seeds = max(e['seeds'] for e in summary)
  fig.suptitle(f'{name}: mean and standard deviation over {seeds} seed(s)', fontsize=11)
  _save(fig, path)


def study_seeds(seeds: list, values: list, mean_std: tuple[float, float], name: str,
                path: str) -> None:
  """A study without a grid: each seed's number, their mean (`mean_std`, as the study's
  summary has it) as a line, one standard deviation either side shaded."""
  fig = _figure(figsize=(4.5, 3.6), dpi=100)
  ax = fig.subplots()
  mean, std = mean_std
  ax.axhspan(mean - std, mean + std, color='C0', alpha=0.15)
  ax.axhline(mean, color='C0', linewidth=1)
  ax.plot(range(len(values)), values, 'o', color='C0')
  ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
  ax.set_xlabel('seed')
  ax.set_ylabel(name)
  ax.grid(True, alpha=0.3)
  fig.suptitle(f'{name}: {len(values)} seed(s), their mean ± one standard deviation', fontsize=11)
  _save(fig, path)


def study_reconstructions(by_point: dict, path: str) -> None:
  """The same images reconstructed at every grid point of a study: one row per point, after
  a row of the noisy inputs where the point's member trains on noise."""
  first = next(iter(by_point.values()))
  rows = {'input': first['input']}
  for point, images in by_point.items():
    label = _point_label(point, sep='\n')
    if 'noisy input' in images:
      rows[f'{label}\nnoisy input'] = images['noisy input']
    rows[label] = images['reconstruction']
  reconstructions(rows, None, path, 'reconstructions at each grid point')


def image_grid_figure(images: np.ndarray, path: str, title: str) -> None:
  """Images (N, H, W, C) in a square-ish grid, without gaps: samples from a prior."""
  columns = int(np.ceil(np.sqrt(len(images))))
  rows = -(-len(images) // columns)
  padded = np.concatenate([images, np.zeros((rows * columns - len(images), *images.shape[1:]),
                                            images.dtype)])
  grid = image_grid(np.split(padded, rows))
  fig = _figure(figsize=(min(0.6 * columns + 1, 12), min(0.6 * rows + 1.2, 12.5)), dpi=100)
  ax = fig.add_subplot()
  _show(ax, grid)
  ax.set_title(title, fontsize=11)
  _save(fig, path)


def latent_grid(images: np.ndarray, values: np.ndarray, path: str, title: str) -> None:
  """A 2-D latent space decoded (Keras's VAE figure): images (n, n, H, W, C), row 0 at the top
  with the largest z2; `values`: the latent values of each axis, ascending."""
  n, _, height, width = images.shape[:4]
  grid = image_grid(list(images))
  fig = _figure(figsize=(8.5, 8), dpi=100)
  ax = fig.add_subplot()
  _show(ax, grid)
  ticks = [k for k in range(n) if k in (0, n // 2, n - 1)]
  ax.set_xticks([width * (k + 0.5) for k in ticks], [f'{values[k]:.2f}' for k in ticks])
  ax.set_yticks([height * (k + 0.5) for k in ticks], [f'{values[::-1][k]:.2f}' for k in ticks])
  ax.set_xlabel('z[0]')
  ax.set_ylabel('z[1]')
  ax.set_title(title, fontsize=11)
  _save(fig, path)


def score_histogram(groups: dict[str, np.ndarray], threshold: float, path: str, title: str,
                    xlabel: str) -> None:
  """Histograms of anomaly scores, one per group (the validation split, the scored split's
  classes), with the threshold as a vertical line."""
  fig = _figure(figsize=(7, 4), dpi=100)
  ax = fig.subplots()
  values = np.concatenate(list(groups.values()))
  bins = np.histogram_bin_edges(values, bins=60)
  for name, scores in groups.items():
    ax.hist(scores, bins=bins, alpha=0.5, density=True, label=f'{name} ({len(scores):,})')
  ax.axvline(threshold, color='k', linestyle='--', label=f'threshold {threshold:.4g}')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('density')
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  _save(fig, path)
