"""Orbax checkpoints under workdir/checkpoints: the best by validation loss and the two latest.

A checkpoint holds two items, so that evaluation reads only what it needs:
  variables: {'params', 'batch_stats'}, what `model.apply` takes;
  train:     {'opt_state', 'step', 'rng'}, the rest of the train state.
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed while saving leaves the previous checkpoints intact and no half-written one. A failed
write becomes a UserError that names the path and the fix; a checkpoint whose files are damaged
is passed over (and, by training, moved aside to STEP.damaged) for the newest one that reads.
The folder's metadata records the shape of the images the model was trained on, so that other
data can be read as the model takes it.
"""

import contextlib
import glob
import json
import logging
import os
import re
import shutil

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ae_jax import UserError
from ae_jax import WriteError
from ae_jax import cannot_write
from ae_jax import exception_chain
from ae_jax import find_os_error


ITEMS = ('variables', 'train')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')  # orbax needs an absolute path


def metadata_outdated(workdir: str, image_shape, num_train: int) -> bool:
  """Whether the folder's metadata records another image shape or number of training images
  than a run training there now: a convolutional model trains on at another shape, or a run
  starts afresh."""
  return (trained_image_shape(workdir) not in (None, tuple(image_shape))
          or trained_num_images(workdir) not in (None, num_train))


def create_manager(workdir: str, *, read_only: bool = False, image_shape=None,
                   background: float | None = None,
                   num_train: int | None = None) -> ocp.CheckpointManager:
  """The manager of workdir/checkpoints. `read_only`: for a reader (evaluation), which must not
  create the folder nor clean up temporary folders, one of which may be a save in progress.
  `image_shape`: the model's (H, W, C), kept in the folder's metadata (orbax writes it when the
  manager starts, where there is none), with `background`, the brightness of the training
  images' borders (given.background), and `num_train`, how many images an epoch takes."""
  if not read_only:
    set_aside_damaged_metrics(checkpoint_dir(workdir))  # or orbax's manager cannot start
  if image_shape is not None and metadata_outdated(workdir, image_shape, num_train):
    # orbax never replaces the file, so the old one goes
    if jax.process_index() == 0:
      os.remove(_root_metadata_path(workdir))
  val_loss = lambda metrics: metrics['val_loss']
  options = ocp.CheckpointManagerOptions(
      best_fn=val_loss, best_mode='min',  # for best_step()
      preservation_policy=checkpoint_managers.AnyPreservationPolicy([
          checkpoint_managers.LatestN(n=2),  # the newest that reads, if the last is damaged
          # reverse=True: BestN keeps the end of the sorted list, and a lower loss is better.
          checkpoint_managers.BestN(get_metric_fn=val_loss, reverse=True, n=1,
                                    keep_checkpoints_without_metrics=False),
      ]),
      cleanup_tmp_directories=not read_only,
      create=not read_only,
  )
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      metadata=None if image_shape is None else {
          'image_shape': [int(d) for d in image_shape],
          **({} if background is None else {'background': float(background)}),
          **({} if num_train is None else {'num_train': int(num_train)})},
      item_handlers={name: ocp.StandardCheckpointHandler() for name in ITEMS})


def trained_image_shape(workdir: str) -> tuple[int, ...] | None:
  """The (H, W, C) of the images the run's model was trained on; None where the checkpoints do
  not say (a run trained before they did, or none)."""
  # orbax's root metadata file, read as it is: a manager, even a read-only one, reads every
  # checkpoint's metrics on opening and fails on a damaged one, which evaluation passes over
  shape = _custom_metadata(workdir).get('image_shape')
  if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) for d in shape)):
    return None
  return tuple(shape)


def trained_background(workdir: str) -> float | None:
  """How bright the borders of the run's training images are, 0 to 1 (given.background); None
  where the checkpoints do not say."""
  background = _custom_metadata(workdir).get('background')
  return float(background) if isinstance(background, (int, float)) else None


def trained_num_images(workdir: str) -> int | None:
  """How many training images an epoch of the run took; None where the checkpoints do not say."""
  num_train = _custom_metadata(workdir).get('num_train')
  return num_train if isinstance(num_train, int) else None


def _custom_metadata(workdir: str) -> dict:
  try:
    with open(_root_metadata_path(workdir)) as f:
      metadata = json.load(f)['custom_metadata']
  except (OSError, ValueError, KeyError, TypeError):  # missing, it only costs the data's reading
    return {}
  return metadata if isinstance(metadata, dict) else {}


def _root_metadata_path(workdir: str) -> str:
  return os.path.join(checkpoint_dir(workdir), 'metadata', '_ROOT_METADATA')


def _tensorstore_os_error(error: BaseException) -> OSError | None:
  """tensorstore (orbax's array writer) reports a failed write as a ValueError whose text holds
  the path and the errno: 'Failed writing: "PATH": ... [os_error_code='28']'."""
  for e in exception_chain(error):
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code:
      path = re.search(r'Failed (?:writing|to open|to create)[^"]*"([^"]+)"', str(e))
      errno = int(code.group(1))
      return OSError(errno, os.strerror(errno), path.group(1) if path else None)
  return None


def _guarded(manager, fn, *args, **kwargs):
  """Calls an orbax method; a failed write (here, or in an earlier save's background thread)
  becomes a UserError that names the path, the reason, the fix and where a rerun resumes."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  (orbax wraps and re-raises)
    os_error = find_os_error(e) or _tensorstore_os_error(e)
    if os_error is None:
      raise
    # what the failed save left, so that the space it took is free again
    for tmp in glob.glob(os.path.join(manager.directory, '*.orbax-checkpoint-tmp*')):
      shutil.rmtree(tmp, ignore_errors=True)
    what = 'a checkpoint to'
    tmp = re.match(r'(.*?/(\d+)\.orbax-checkpoint-tmp)', os_error.filename or '')
    if tmp:  # the step's folder says more than a file deep inside it
      what = f'the checkpoint of step {tmp.group(2)} to'
      os_error = OSError(os_error.errno, os_error.strerror, tmp.group(1))
    raise cannot_write(os_error, what) from None


def check(manager: ocp.CheckpointManager) -> None:
  """Raises (a UserError) if a background save has failed: cheap, call it often."""
  _guarded(manager, manager.check_for_errors)


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the background saves, raising (a UserError) if one failed."""
  _guarded(manager, manager.wait_until_finished)


def close(manager: ocp.CheckpointManager) -> None:
  """Finishes the saves and closes the manager; after a failed save, closes it all the same."""
  try:
    _guarded(manager, manager.close)
  except Exception:  # pylint: disable=broad-except
    try:
      manager.close()  # orbax raises the same error again before closing its threads
    except Exception:  # pylint: disable=broad-except
      pass
    raise


@contextlib.contextmanager
def managed(workdir: str, image_shape=None, background=None, num_train=None):
  """create_manager(workdir, ...), closed on the way out; where an error is already on its way
  out, a second one from closing does not hide it. A failed write says where the same command
  resumes."""
  try:
    manager = create_manager(workdir, image_shape=image_shape, background=background,
                             num_train=num_train)
  except OSError as e:  # the folder, or orbax's metadata in it
    raise cannot_write(e, 'the checkpoints to') from None
  try:
    try:
      yield manager
    except BaseException:
      try:
        close(manager)
      except Exception:  # pylint: disable=broad-except
        pass
      raise
    close(manager)  # or the last save is lost
  except WriteError as e:  # of a checkpoint, the metrics or a figure: say where a rerun resumes
    latest = max(_step_folders(str(manager.directory)), default=None)
    raise UserError(f'{e}; then run the same command again: it resumes from '
                    + ('the start (no checkpoint was saved)' if latest is None else
                       f'the checkpoint of step {latest}')) from None


class _DropMessage(logging.Filter):
  def __init__(self, start: str):
    super().__init__()
    self.start = start

  def filter(self, record):
    return not str(record.msg).startswith(self.start)


@contextlib.contextmanager
def _without_log_message(start: str):
  """Orbax's log lines (absl's logger) that begin with `start` are dropped inside the block."""
  dropped = _DropMessage(start)
  logger = logging.getLogger('absl')
  logger.addFilter(dropped)
  try:
    yield
  finally:
    logger.removeFilter(dropped)


def save(manager: ocp.CheckpointManager, state, val_loss: float | None = None) -> None:
  """Starts saving `state` (saving goes on in the background); `val_loss` ranks it for 'best'.
  Without one (a save mid-epoch, at a signal), the checkpoint is the latest and never the best."""
  step = int(state.step)
  if step in manager.all_steps():
    return
  # orbax warns of a save without the metric it ranks by: here that is meant
  quiet = (_without_log_message('Requested `tracked_metric`') if val_loss is None else
           contextlib.nullcontext())
  with quiet:
    _save(manager, state, step, val_loss)


def one_copy(state):
  """`state` with each array replicated over this process's devices as its first device's copy.

  Orbax writes an array with several replicas replica-parallel: each device its own slice,
  made by a program compiled for each array shape and device (96 for the CAE on 8 devices,
  seconds at the first save). One process gains nothing by it; across processes it shares the
  writing out, so arrays there stay whole."""
  if jax.process_count() > 1:
    return state
  first = lambda x: (x.addressable_shards[0].data
                     if isinstance(x, jax.Array) and x.is_fully_replicated else x)
  return jax.tree.map(first, state)


def _items(state) -> dict:
  """A checkpoint's two items: the model's variables, which evaluation reads alone, and the
  rest of the train state."""
  return {'variables': {'params': state.params, 'batch_stats': state.batch_stats},
          'train': {'opt_state': state.opt_state, 'step': state.step, 'rng': state.rng}}


def _save(manager, state, step: int, val_loss: float | None) -> None:
  items = _items(one_copy(state))
  _guarded(
      manager, manager.save,
      step,
      args=ocp.args.Composite(**{name: ocp.args.StandardSave(item)
                                 for name, item in items.items()}),
      metrics=None if val_loss is None else {'val_loss': float(val_loss)})


# --- Reading, and what to do with a damaged checkpoint -------------------------------------

class Damaged(Exception):
  """A checkpoint with a missing, truncated or undecodable file; args: (step, what is wrong)."""


# tensorstore's status codes for files that are not there, too short, or not what they say
_TENSORSTORE_DAMAGE = {'NOT_FOUND': 'a file is missing', 'OUT_OF_RANGE': 'a file is truncated',
                       'DATA_LOSS': 'a file is corrupt'}


def _damage(error: BaseException) -> str | None:
  """What is damaged, where `error` says that a checkpoint's files are (None: not damage)."""
  for e in exception_chain(error):
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
      return f'a file is not valid JSON ({e})'
    if isinstance(e, FileNotFoundError):  # orbax's own names no file, and says which
      return f'{e.filename} is missing' if e.filename else f'a file is missing ({e})'
    if isinstance(e, EOFError):
      return 'a file is truncated'
    code = re.match(r'([A-Z_]+): ', str(e))
    if isinstance(e, ValueError) and code and code.group(1) in _TENSORSTORE_DAMAGE:
      where = re.search(r'local file "([^"]+)"', str(e))
      return _TENSORSTORE_DAMAGE[code.group(1)] + (f' in {where.group(1)}' if where else '')
  return None


def _step_folders(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory`, newest first."""
  if not os.path.isdir(directory):
    return []
  return sorted((int(name) for name in os.listdir(directory) if name.isdigit()), reverse=True)


def _val_loss(directory: str, step: int) -> float | None:
  """The validation loss that ranks the checkpoint of `step` (None: none was saved)."""
  path = os.path.join(directory, str(step), 'metrics', 'metrics')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return float(json.load(f)['val_loss'])
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise Damaged(step, f'{path} is not valid JSON ({e})') from None


def set_aside(directory: str, step: int, why: str) -> None:
  """Renames a damaged step folder to STEP.damaged, which orbax ignores, and says so."""
  if jax.process_index() == 0:
    try:
      os.replace(os.path.join(directory, str(step)), os.path.join(directory, f'{step}.damaged'))
    except OSError as e:
      raise UserError(f'the checkpoint of step {step} in {directory} is damaged ({why}), and '
                      f'cannot be moved aside ({e.strerror}): delete that step folder') from None
    print(f'skipped the checkpoint of step {step}: {why}; moved it to '
          f'{os.path.join(directory, f"{step}.damaged")}', flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'set aside {step}')


def set_aside_damaged_metrics(directory: str) -> None:
  """Sets aside the checkpoints whose metrics do not read, which orbax's manager cannot open."""
  for step in _step_folders(directory):
    try:
      _val_loss(directory, step)
    except Damaged as e:
      set_aside(directory, *e.args)


def _read(directory: str, step: int, name: str, target, *, check_only: bool = False):
  """Item `name` of the checkpoint of `step`, like the abstract `target`; Damaged if its files
  are; a UserError if it holds another model. `check_only`: reads the metadata alone."""
  path = epath.Path(directory) / str(step) / name
  handler = ocp.StandardCheckpointHandler()  # what the manager reads each item with
  try:
    metadata = handler.metadata(path)
    if metadata is None or metadata.tree is None:
      raise Damaged(step, f'the metadata in {path} does not read')
    _check_fits(metadata.tree, target, step, directory)
    if check_only:
      return None
    return handler.restore(path, args=ocp.args.StandardRestore(target))
  except (UserError, Damaged):
    raise
  except Exception as e:  # pylint: disable=broad-except
    damage = _damage(e)
    if damage is None:
      raise  # not damage: a bug, to be seen whole
    raise Damaged(step, damage) from None
  finally:
    handler.close()


def _train_state_items(state, sharding) -> dict:
  return {name: _abstract(item, sharding) for name, item in _items(state).items()}


def _read_train_state(directory: str, step: int, state, sharding):
  restored = {name: _read(directory, step, name, target)
              for name, target in _train_state_items(state, sharding).items()}
  return state.replace(**restored['variables'], **restored['train'])


def check_resumable(workdir: str, state) -> int | None:
  """The step that restore_latest would resume from (None: no checkpoint reads), or the
  UserError it would raise for a workdir whose newest checkpoint that reads holds another model
  (one of another image shape, say): called before a run writes anything, so that a refused run
  leaves the workdir's config and checkpoints as they were. Damage is left to restore_latest,
  which sets it aside."""
  directory = checkpoint_dir(workdir)
  for step in _step_folders(directory):
    try:
      for name, target in _train_state_items(state, None).items():
        _read(directory, step, name, target, check_only=True)
      return step
    except Damaged:
      continue
  return None


def restore_train_state(manager: ocp.CheckpointManager, step: int, state, sharding):
  """The train state saved at `step`, with the structure of `state`, placed with `sharding`."""
  try:
    return _read_train_state(str(manager.directory), step, state, sharding)
  except Damaged as e:
    raise UserError(f'the checkpoint of step {step} in {manager.directory} is damaged: '
                    f'{e.args[1]}') from None


def restore_latest(manager: ocp.CheckpointManager, state, sharding):
  """The newest train state in `manager`'s folder that reads, like `state`; damaged ones are
  set aside, with a line each. None where there is none."""
  directory = str(manager.directory)
  for step in _step_folders(directory):
    try:
      return _read_train_state(directory, step, state, sharding)
    except Damaged as e:
      set_aside(directory, *e.args)
      manager.reload()
  return None


def restore_variables(workdir: str, which: str, variables, sharding) -> tuple[int, dict]:
  """(step, the model variables saved there) for --checkpoint=`which`: 'best', 'latest' or a
  step number. 'best' and 'latest' fall back on the next checkpoint that reads, with a line
  for each that does not; an explicit step that does not read is a UserError. Writes nothing."""
  directory = checkpoint_dir(workdir)
  steps = _step_folders(directory)
  if not steps:
    raise UserError(f'no checkpoint in {directory}: train first with '
                    f'python -m ae_jax.main --config=... --workdir={workdir}')
  target = _abstract(variables, sharding)
  if which not in ('best', 'latest'):
    try:
      step = int(which)
    except ValueError:
      raise UserError(f'--checkpoint={which!r}: use best, latest or a step number') from None
    if step not in steps:
      raise UserError(f'no checkpoint of step {step} in {directory}; there are steps '
                      f'{", ".join(map(str, sorted(steps)))} (or use --checkpoint=best / latest)')
    try:
      return step, _read(directory, step, 'variables', target)
    except Damaged as e:
      raise UserError(f'the checkpoint of step {step} in {directory} is damaged: {e.args[1]}. '
                      'Use --checkpoint=latest or best, which fall back on the newest that reads'
                      ) from None
  order = steps
  if which == 'best':
    losses = {}
    for step in steps:
      try:
        losses[step] = _val_loss(directory, step)
      except Damaged as e:  # its weights may be intact: used where no ranked checkpoint reads
        losses[step] = None
        print(f'the validation loss of the checkpoint of step {step} cannot be read '
              f'({e.args[1]}): it is not ranked for --checkpoint=best, and read only where no '
              f'ranked checkpoint reads; --checkpoint={step} reads its weights')
    ranked = sorted((loss, step) for step, loss in losses.items() if loss is not None)
    order = [step for _, step in ranked] + [s for s in steps if losses[s] is None]
  for step in order:
    try:
      variables = _read(directory, step, 'variables', target)
    except Damaged as e:
      print(f'skipped the checkpoint of step {step}: {e.args[1]}')
      continue
    if which == 'best' and losses[step] is None:  # a run stopped in its first epoch, say
      print(f'no checkpoint ranked by validation loss reads: --checkpoint=best reads the newest, '
            f'of step {step}')
    return step, variables
  raise UserError(f'no checkpoint in {directory} can be read (each is named above): train '
                  'again, or restore the folder from a copy')


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  # simple=True: names alone (orbax names a NamedTuple's fields by dict keys, jax by attributes)
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(saved_tree, target, step, directory):
  """Refuses a checkpoint of another model before reading it, naming a parameter that differs."""
  saved, wanted = _shapes(saved_tree), _shapes(target)
  for key in sorted(saved.keys() | wanted.keys()):
    if saved.get(key) != wanted.get(key):
      describe = lambda shape: 'absent' if shape is None else f'of shape {shape}'
      raise UserError(
          f'the checkpoint of step {step} in {directory} does not fit this model: '
          f'{key} is {describe(saved.get(key))} there, {describe(wanted.get(key))} here. Was '
          'it trained with a different config.model, config.optimizer or image shape?')
