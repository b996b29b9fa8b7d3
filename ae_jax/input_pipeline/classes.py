"""Training on some classes only: config.data.classes, or its complement config.data.
held_out_classes. The train and validation splits keep the chosen classes; the test split keeps
every class, so that an anomaly detector trained on the rest can be scored on the held-out ones.
"""

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import select

FIELDS = ('classes', 'held_out_classes')


def asked(data_config) -> tuple[str, str] | None:
  """(the field, its text) of the one class field that is set, or None."""
  asked = [(f, data_config.get(f)) for f in FIELDS if data_config.get(f) not in (None, '')]
  if len(asked) > 1:
    raise UserError('config.data.classes and config.data.held_out_classes are both set: give '
                    'the classes to train on, or the classes to leave out, not both')
  return asked[0] if asked else None


def parse(text: str, field: str, present: list[int], label_names) -> list[int]:
  """'0,3' or 'Sneaker,Bag' -> sorted label numbers, each one the data has."""
  names = list(label_names or [])
  numbered = any(n.strip().isdigit() for n in names)  # class folders 3/ and 7/: names alone
  shown = ', '.join((names[i] if numbered else f'{i} ({names[i]})') if i < len(names) else str(i)
                    for i in present)
  chosen = set()
  for part in str(text).split(','):
    part = part.strip()
    if part in names:
      label = names.index(part)
    elif numbered:  # '1' is no class of folders 3/ and 7/, not the second
      label = None
    else:
      try:
        label = int(part)
      except ValueError:
        label = None
    if label is None or label not in present:
      raise UserError(f'config.data.{field}={text!r}: the data has no class {part!r}; it has '
                      f'{shown}')
    chosen.add(label)
  return sorted(chosen)


def held_out(data_config, labels: np.ndarray | None, label_names=None) -> list[int] | None:
  """The labels that training leaves out (sorted), given every label of the data; None where
  config.data trains on every class."""
  which = asked(data_config)
  if which is None:
    return None
  field, text = which
  if labels is None:
    raise UserError(f'config.data.{field}={text!r}: the data has no labels to choose classes by')
  present = sorted(set(np.unique(labels).tolist()))
  chosen = parse(text, field, present, label_names)
  out = chosen if field == 'held_out_classes' else [c for c in present if c not in chosen]
  if len(out) == len(present):
    raise UserError(f'config.data.{field}={text!r} leaves no class to train on: keep at least one')
  return out


def _keep(split: Split, out: list[int]) -> Split:
  return select(split, np.flatnonzero(~np.isin(split.labels, out)))


def keep_classes(splits: dict[str, Split], data_config) -> dict[str, Split]:
  """The splits with the train and validation images of the held-out classes removed."""
  if asked(data_config) is None:
    return splits
  labels = [s.labels for s in splits.values() if s.labels is not None]
  if len(labels) < len(splits):
    held_out(data_config, None)  # raises: no labels
  out = held_out(data_config, np.concatenate(labels), splits['train'].label_names)
  kept = dict(splits)
  for role in ('train', 'validation'):
    kept[role] = _keep(splits[role], out)
    if not len(kept[role].images):
      raise UserError(f'the {role} split has no images of the classes config.data trains on: '
                      'choose other classes')
  return kept
