"""What a run writes for people to read: metrics.jsonl and TensorBoard event files.

The event files are written with TensorBoard's own record format and protos, without
TensorFlow, which takes seconds to import and is not otherwise needed unless tfds reads data.
"""

from concurrent import futures
import io
import json
import os
import socket
import time

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import replaced_atomically


class SummaryWriter:
  """Writes scalars and images to a TensorBoard event file in `logdir`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}'
    self._file = open(os.path.join(logdir, name), 'wb')
    self._writer = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event):
    self._writer.write(event.SerializeToString())

  def _summary(self, step, value):
    event = event_pb2.Event(wall_time=time.time(), step=int(step))
    event.summary.value.append(value)
    self._write(event)

  def scalar(self, tag: str, value: float, step: int):
    self._summary(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

  def image(self, tag: str, image: np.ndarray, step: int):
    """`image`: (H, W) or (H, W, C) with values in [0, 1]."""
    import matplotlib.image  # pylint: disable=g-import-not-at-top
    image = np.clip(np.asarray(image, np.float32), 0, 1)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image, cmap='gray', vmin=0, vmax=1, format='png')
    encoded = summary_pb2.Summary.Image(
        height=image.shape[0], width=image.shape[1], colorspace=4,
        encoded_image_string=buffer.getvalue())
    self._summary(step, summary_pb2.Summary.Value(tag=tag, image=encoded))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def write_hparams(logdir: str, hparams: dict, metrics: dict) -> None:
  """A run's settings and final numbers for TensorBoard's HParams view: the session start that
  names the settings, the numbers as scalars, and the session end."""
  from tensorboard.plugins.hparams import api_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import metadata  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top

  def plugin_summary(tag, data):
    value = summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))
    value.tensor.dtype = 1  # an empty float tensor, as tensorboard's own summaries write it
    return value

  start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
  for name, value in hparams.items():
    if isinstance(value, bool):
      start.hparams[name].bool_value = value
    elif isinstance(value, (int, float)):
      start.hparams[name].number_value = float(value)
    else:
      start.hparams[name].string_value = str(value)
  end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
  try:
    writer = SummaryWriter(logdir)
    writer._summary(0, plugin_summary(  # pylint: disable=protected-access
        metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
            session_start_info=start)))
    for name, value in metrics.items():
      writer.scalar(f'study/{name}', value, 0)
    writer._summary(0, plugin_summary(  # pylint: disable=protected-access
        metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(
            session_end_info=end)))
    writer.close()
  except OSError as e:
    raise cannot_write(e, 'the TensorBoard hparams to', logdir) from None


def write_png(path: str, image: np.ndarray) -> None:
  """An image ((H, W) or (H, W, C), values in [0, 1]) as a PNG file, replaced atomically."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = np.clip(np.asarray(image, np.float32), 0, 1)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  with replaced_atomically(path) as tmp:
    matplotlib.image.imsave(tmp, image, cmap='gray', vmin=0, vmax=1, format='png')


def read_metrics(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_metrics(path: str, rows: list[dict]) -> None:
  """Rewrites metrics.jsonl with `rows`, atomically, so that a crash never leaves half a file."""
  with replaced_atomically(path) as tmp, open(tmp, 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


class RunLog:
  """What a training run writes for people: metrics.jsonl, loss_curve.png and TensorBoard events.

  Writing happens on one background thread, so that training does not wait for the figure; a
  failure there is raised in the training loop at the next call. Only one process of a
  multi-process run writes (`enabled`).
  """

  def __init__(self, workdir: str, start_step: int, enabled: bool = True):
    self._workdir = workdir
    self._metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self._partial_path = os.path.join(workdir, 'partial_epoch.json')
    self._curve_path = os.path.join(workdir, 'loss_curve.png')
    # Rows from after the checkpoint a run resumes from belong to work that was lost.
    self.rows = [r for r in read_metrics(self._metrics_path) if r['step'] <= start_step]
    self._enabled = enabled
    try:
      self._writer = SummaryWriter(workdir) if enabled else None
    except OSError as e:
      raise cannot_write(e, 'the TensorBoard events to') from None
    self._executor = futures.ThreadPoolExecutor(max_workers=1)
    self._pending = []

  def _result(self, future):
    try:
      return future.result()
    except OSError as e:
      if not e.filename:  # TensorBoard's writer names no file: the workdir is where it wrote
        e.filename = self._workdir
      raise cannot_write(e, 'the metrics, figures or TensorBoard events to') from None

  def _submit(self, fn, *args):
    for done in [f for f in self._pending if f.done()]:
      self._pending.remove(done)
      self._result(done)
    if self._enabled:
      self._pending.append(self._executor.submit(fn, *args))

  def save_partial_epoch(self, step: int, numbers: dict[str, list[float]]) -> None:
    """The numbers of the current epoch's steps up to `step` ({'loss': [...], ...}), the step of
    the checkpoint that an interrupted run saves mid-epoch, so that the resumed epoch's means
    count them."""
    if self._enabled:
      try:
        with replaced_atomically(self._partial_path) as tmp, open(tmp, 'w') as f:
          json.dump({'step': step, 'numbers': {name: [float(v) for v in values]
                                               for name, values in numbers.items()}}, f)
      except OSError as e:
        raise cannot_write(e, 'the partial epoch to', self._partial_path) from None

  def partial_epoch(self, step: int) -> dict[str, list[float]]:
    """The numbers save_partial_epoch saved at `step` (none where it saved another step)."""
    try:
      with open(self._partial_path) as f:
        saved = json.load(f)
    except (OSError, ValueError):
      return {}
    if saved.get('step') != step:
      return {}
    return saved['numbers'] if 'numbers' in saved else {'loss': list(saved.get('losses', []))}

  def train_numbers(self, first_step: int, numbers: dict) -> None:
    """The numbers of steps first_step, first_step + 1, ... (numbered from 1): train/loss, and
    train/NAME for each part of the objective."""
    def write():
      for name, values in numbers.items():
        for i, value in enumerate(values):
          self._writer.scalar(f'train/{name}', value, first_step + i)
    self._submit(write)

  def epoch(self, row: dict, figures: dict[str, np.ndarray]) -> None:
    """An epoch's row of metrics.jsonl, and its figures ({'reconstructions': image, ...}: a
    PNG each in the workdir and an image each in TensorBoard)."""
    self.rows.append(row)
    rows = list(self.rows)

    def write():
      from ae_jax import plots  # pylint: disable=g-import-not-at-top  (matplotlib, on this thread)
      write_metrics(self._metrics_path, rows)
      if os.path.exists(self._partial_path):
        os.remove(self._partial_path)  # its epoch is complete
      plots.loss_curve(rows, self._curve_path)
      step = row['step']
      self._writer.scalar('val/loss', row['val_loss'], step)
      for name, value in row.items():
        if name.startswith('val_') and name != 'val_loss':
          self._writer.scalar(f'val/{name[4:]}', value, step)
      self._writer.scalar('train/epoch_loss', row['train_loss'], step)
      self._writer.scalar('train/images_per_sec', row['images_per_sec'], step)
      for name, image in figures.items():
        self._writer.image(f'val/{name}', image, step)
        write_png(os.path.join(self._workdir, f'{name}.png'), image)
      self._writer.flush()
    self._submit(write)

  def close(self, quietly: bool = False) -> None:
    """Waits for everything to be written; `quietly`: without raising what failed."""
    self._executor.shutdown(wait=True)
    try:
      for f in self._pending:
        self._result(f)
      if self._writer:
        try:
          self._writer.close()
        except OSError as e:
          raise cannot_write(e, 'the TensorBoard events to') from None
    except UserError:
      if not quietly:
        raise
