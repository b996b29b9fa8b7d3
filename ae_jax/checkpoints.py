"""Orbax checkpoints under workdir/checkpoints: the best by validation loss and the latest.

A checkpoint holds two items, so that evaluation reads only what it needs:
  variables: {'params', 'batch_stats'}, what `model.apply` takes;
  train:     {'opt_state', 'step', 'rng'}, the rest of the train state.
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed while saving leaves the previous checkpoints intact and no half-written one.
"""

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ae_jax import UserError


ITEMS = ('variables', 'train')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')  # orbax needs an absolute path


def create_manager(workdir: str, *, read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of workdir/checkpoints. `read_only`: for a reader (evaluation), which must not
  create the folder nor clean up temporary folders, one of which may be a save in progress."""
  val_loss = lambda metrics: metrics['val_loss']
  options = ocp.CheckpointManagerOptions(
      best_fn=val_loss, best_mode='min',  # for best_step()
      preservation_policy=checkpoint_managers.AnyPreservationPolicy([
          checkpoint_managers.LatestN(n=1),
          # reverse=True: BestN keeps the end of the sorted list, and a lower loss is better.
          checkpoint_managers.BestN(get_metric_fn=val_loss, reverse=True, n=1,
                                    keep_checkpoints_without_metrics=False),
      ]),
      cleanup_tmp_directories=not read_only,
      create=not read_only,
  )
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={name: ocp.StandardCheckpointHandler() for name in ITEMS})


def save(manager: ocp.CheckpointManager, state, val_loss: float | None = None) -> None:
  """Starts saving `state` (saving goes on in the background); `val_loss` ranks it for 'best'."""
  step = int(state.step)
  if step in manager.all_steps():
    return
  manager.save(
      step,
      args=ocp.args.Composite(
          variables=ocp.args.StandardSave(
              {'params': state.params, 'batch_stats': state.batch_stats}),
          train=ocp.args.StandardSave(
              {'opt_state': state.opt_state, 'step': state.step, 'rng': state.rng})),
      metrics=None if val_loss is None else {'val_loss': float(val_loss)})


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
  """'best', 'latest' or a step number -> a step that exists, or a UserError that says why not."""
  steps = manager.all_steps()
  where = manager.directory
  if not steps:
    raise UserError(f'no checkpoint in {where}: train first with '
                    f'python -m ae_jax.main --config=... --workdir={os.path.dirname(where)}')
  if which == 'latest':
    return manager.latest_step()
  if which == 'best':
    return manager.best_step()
  try:
    step = int(which)
  except ValueError:
    raise UserError(f'--checkpoint={which!r}: use best, latest or a step number') from None
  if step not in steps:
    raise UserError(f'no checkpoint of step {step} in {where}; there are steps '
                    f'{", ".join(map(str, steps))} (or use --checkpoint=best / latest)')
  return step


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _key_name(key) -> str:
  # orbax's metadata names a NamedTuple's fields as dict keys, jax as attributes
  for field in ('key', 'name', 'idx'):
    if hasattr(key, field):
      return str(getattr(key, field))
  return str(key)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {'/'.join(map(_key_name, path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(manager, step, name, target):
  """Refuses a checkpoint of another model before reading it, naming a parameter that differs."""
  saved, wanted = _shapes(manager.item_metadata(step)[name].tree), _shapes(target)
  for key in sorted(saved.keys() | wanted.keys()):
    if saved.get(key) != wanted.get(key):
      describe = lambda shape: 'absent' if shape is None else f'of shape {shape}'
      raise UserError(
          f'the checkpoint of step {step} in {manager.directory} does not fit this model: '
          f'{key} is {describe(saved.get(key))} there, {describe(wanted.get(key))} here. Was '
          'it trained with a different config.model, config.optimizer or image shape?')


def _restore(manager, step, items: dict):
  try:
    for name, target in items.items():
      _check_fits(manager, step, name, target)
    return manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(target) for name, target in items.items()}))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (damaged files: any reader error)
    raise UserError(
        f'the checkpoint of step {step} in {manager.directory} cannot be read '
        f'({type(e).__name__}: {str(e).splitlines()[0][:300]}); delete that step folder to '
        'fall back on an earlier checkpoint') from None


def restore_train_state(manager, step: int, state, sharding):
  """The train state saved at `step`, with the structure of `state`, placed with `sharding`."""
  restored = _restore(manager, step, {
      'variables': _abstract({'params': state.params, 'batch_stats': state.batch_stats},
                             sharding),
      'train': _abstract({'opt_state': state.opt_state, 'step': state.step, 'rng': state.rng},
                         sharding),
  })
  return state.replace(**restored['variables'], **restored['train'])


def restore_variables(manager, step: int, variables, sharding):
  """Only the model variables saved at `step` (what evaluation needs), like `variables`."""
  return _restore(manager, step, {'variables': _abstract(variables, sharding)})['variables']
