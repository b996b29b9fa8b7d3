"""The vocabulary every source speaks: a Split of images and labels, split names with tfds's
slicing syntax, and the splits a source hands back."""

import os
import re
from typing import NamedTuple

import numpy as np

from ae_jax import UserError

FOLDER_SPLITS = ('train', 'validation', 'test')  # the splits a folder or an .npz may hold


class Split(NamedTuple):
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray | None  # int32 (N,), or None for unlabelled data
  label_names: tuple[str, ...] | None = None  # names of the labels 0, 1, ...; None: the numbers
  note: str | None = None  # what the user may not expect of this data, for the data line
  files: tuple[str, ...] | None = None  # the file of each image, for data read from files


def select(split: Split, which) -> Split:
  """The examples `which` (a slice or index array) of `split`: images, labels and files."""
  files = None
  if split.files is not None:
    files = tuple(np.asarray(split.files, object)[which])
  return split._replace(images=rows(split.images, which),
                        labels=None if split.labels is None else split.labels[which], files=files)


_SPLIT = re.compile(r'^([\w-]+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


def resize_image(image: np.ndarray, size) -> np.ndarray:
  """(H, W, C) uint8 -> (size, size, C), or (height, width, C) for `size` (height, width), with
  PIL's antialiased bilinear filter."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width = (size, size) if isinstance(size, (int, np.integer)) else size
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR)).reshape(
      height, width, image.shape[-1])


def to_grayscale(images: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma, as PIL's convert('L') (the original's convert2grayscale) computes it:
  in 16-bit fixed point, so that both give the same pixels."""
  rgb = images.astype(np.uint32)
  luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
  return (luma >> 16).astype(np.uint8)[..., None]


def rows(images, which):
  """images[which] (a slice or index array), still on disk where `images` is."""
  return images.subset(which) if hasattr(images, 'subset') else images[which]


def parse_split(spec: str) -> tuple[str, str, str]:
  """'train[:80%]' -> ('train', '', '80%'): tfds's slicing syntax, for every source."""
  match = _SPLIT.match(spec.replace(' ', ''))
  if not match:
    raise UserError(f'cannot read the split {spec!r}: write a name, optionally sliced like '
                    "tfds: 'train', 'train[:1000]', 'train[10%:]'")
  name, start, stop = match.groups()
  return name, start or '', stop or ''


def take_slice(split: Split, spec: str) -> Split:
  """The part of `split` that the slice in `spec` (if any) selects."""
  _, start, stop = parse_split(spec)
  n = len(split.images)
  bound = lambda b: None if not b else (
      int(round(n * int(b[:-1]) / 100)) if b.endswith('%') else int(b))
  part = slice(bound(start), bound(stop))
  selected = select(split, part)
  if not len(selected.images):
    raise UserError(f'the split {spec!r} selects no images (the split has {n})')
  return selected


def check_not_empty(num_images: int, where: str, shape) -> None:
  """Refuses a file of no images (an export that failed, say), naming it."""
  if not num_images:
    raise UserError(f'{where} holds no images (an array of shape {tuple(shape)}): fill it, or '
                    'name another with --config.data.path')


def folder_path(data_config, what: str) -> str:
  folder = data_config.path
  if not folder or not os.path.isdir(folder):
    raise UserError(f'config.data.path={folder!r} is not a folder: with config.data.source='
                    f'{data_config.source!r} it must name a folder of {what}')
  return folder


def choose(splits: dict[str, Split], wanted, where) -> dict[str, Split]:
  """The splits that `wanted` names (sliced), plus the source's own validation split."""
  chosen = {}
  for role, spec in wanted.items():
    name = parse_split(spec)[0]
    if name in splits:
      chosen[role] = take_slice(splits[name], spec)
    elif role == 'train':
      raise UserError(f'{where} has no {name!r} split (config.data.train_split); it has '
                      f'{", ".join(splits)}: train on one, e.g. --config.data.train_split='
                      f"{next(iter(splits))} --config.data.test_split=''")
    # the default test split, 'test', is used where the data has one; another name, asked
    # for, is not dropped unsaid
    elif name != 'test':
      raise UserError(f'{where} has no {name!r} split (config.data.{role}_split); it has '
                      f"{', '.join(splits)}: name one of them, or '' for none")
  if 'validation' in splits and parse_split(wanted['train'])[0] != 'validation':
    chosen['validation'] = splits['validation']
  return chosen
