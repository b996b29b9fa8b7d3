"""How the convolutional models run fast on CPUs: their convolutions as matmuls over
channels-first activations (config.model.conv = 'matmul', what 'auto' picks on CPUs), given to
the models as MATMUL_CONVS; and what their programs ask of XLA:CPU.

XLA:CPU runs convolutions inside a loop body very slowly (jax-ml/jax#12868) and its backward
convolutions slowly everywhere, while its matmuls run near the CPU's peak. These modules compute
exactly what the flax layers named in their docstrings compute, with the same parameters, as
matmuls (tests/test_models.py checks outputs and gradients).

Activations are (channels, batch, height, width) here: each convolution is then `weights @
patches` with the long batch*height*width axis last and contiguous in every operand. The model
moves the channels axis once on the way in and once on the way out (CHANNELS_FIRST).

A 3x3 convolution takes one of three ways (conv3x3): from 16 input channels up, Winograd's
F(2x2, 3x3), which needs 16 products per 2x2 output pixels where patches need 36; to a few output
channels, one matmul over the padded pixels and a sum of nine shifted planes; otherwise patches
(im2col), nine times the input, made a few images at a time and again for the gradients
(PATCH_BYTES). Asked for the subsampled output only (evaluation), a convolution computes just
the pixels that the subsampling keeps, with patches, which then do less work than Winograd's
tiles. benchmarks/README.md has the measurements behind each choice.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax.models import layers


CHANNELS_FIRST = layers.Layout(
    enter=lambda x: jnp.moveaxis(x, -1, 0), leave=lambda x: jnp.moveaxis(x, 0, -1),
    feature_axis=0, subsample=lambda x: x[:, :, ::2, ::2])


# A 3x3 kernel's taps in a flax kernel's (row, column) order.
OFFSETS = [(dy, dx) for dy in range(3) for dx in range(3)]


def _pad(x):
  """(..., H, W) -> (..., H + 2, W + 2): one pixel of zeros around each image."""
  return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])


def _window(padded, offset, height, width, stride=1):
  """The (height, width) window at `offset` of a 1-pixel padded (..., H + 2, W + 2) array, every
  `stride`-th pixel of it in each direction."""
  dy, dx = offset
  return padded[..., dy:dy + height:stride, dx:dx + width:stride]


def conv3x3(x, kernel, stride=1):
  """(C, B, H, W) -> (F, B, H, W): the zero-padded 3x3 correlation of nn.Conv(padding='SAME')
  with a flax kernel of shape (3, 3, C, F), without the bias; with `stride` 2, only its pixels
  that x[:, :, ::2, ::2] keeps, computed alone."""
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  if 4 * features <= channels:
    # Few output channels (the CAE's last layer, 32 -> 1): multiply every padded pixel by the
    # nine taps and add the nine shifted planes. That takes (H+2)(W+2)/HW times the multiplies
    # of patches, but writes and reads 9F planes where patches take 9C (4 times faster here).
    taps = kernel.reshape(9, channels, features)
    planes = taps.transpose(0, 2, 1).reshape(9 * features, channels) @ _pad(x).reshape(
        channels, -1)
    planes = planes.reshape(9, features, batch, height + 2, width + 2)
    return sum(_window(planes[k], offset, height, width, stride)
               for k, offset in enumerate(OFFSETS))
  if stride == 1 and channels >= WINOGRAD_MIN_CHANNELS:
    return winograd_conv3x3(x, kernel)
  patch_bytes = 9 * x.size * x.dtype.itemsize // stride**2
  chunks = next(n for n in range(1, batch + 1)
                if batch % n == 0 and (patch_bytes // n <= PATCH_BYTES or n == batch))
  return _chunked_conv3x3(x, kernel, chunks, stride)


# Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2016) makes each 2x2 block of output pixels from the 4x4 input tile around it
# with 16 products per pair of channels instead of 36: 16 matmuls (F, C) @ (C, B*H*W/4), between
# additions. It is faster than patches for each of the CAE's 3x3 convolutions from 32 channels
# up. The first convolution (1 channel) keeps patches, whose matmuls are 9 times less thin; 16 is
# a round threshold below the CAE's 32, not a tuned one. With stride 2 patches do less work.
# Autodiff keeps the transformed inputs, 4 times a layer's input, for the kernel's gradient (a
# custom VJP that made them again in the backward pass took more memory, and longer).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_KERNEL = ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1))  # the paper's G


def _winograd_input(d):
  """B^T d: the input transform along one axis of the tiles, for their four rows (or
  columns)."""
  d0, d1, d2, d3 = d
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _winograd_output(m):
  """A^T m: the output transform along one axis of the tiles, four rows (or columns) to two."""
  m0, m1, m2, m3 = m
  return [m0 + m1 + m2, m1 - m2 - m3]


def winograd_conv3x3(x, kernel):
  """(C, B, H, W) -> (F, B, H, W): conv3x3 by F(2x2, 3x3), the same correlation up to float
  rounding (~1e-6)."""
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  tiles_y, tiles_x = -(-height // 2), -(-width // 2)
  # Zeros around the images, and one more row or column where a size is odd.
  padded = jnp.pad(x, [(0, 0), (0, 0), (1, 2 * tiles_y + 1 - height),
                       (1, 2 * tiles_x + 1 - width)])
  rows = _winograd_input([padded[:, :, i:i + 2 * tiles_y:2] for i in range(4)])
  data = [_winograd_input([r[..., j:j + 2 * tiles_x:2] for j in range(4)]) for r in rows]
  g = jnp.asarray(WINOGRAD_KERNEL, kernel.dtype)
  weights = jnp.einsum('ai,ijcf,bj->abfc', g, kernel, g)  # G g G^T, (4, 4, F, C)
  # 16 matmuls rather than one batched matmul over a stack of the tiles, which XLA:CPU runs
  # much slower (a CAE training step 0.90-1.14 s against 0.68 s).
  products = [[(weights[a, b] @ data[a][b].reshape(channels, -1)).reshape(
      features, batch, tiles_y, tiles_x) for b in range(4)] for a in range(4)]
  columns = [_winograd_output([products[a][b] for a in range(4)]) for b in range(4)]
  y = jnp.stack([jnp.stack(_winograd_output([columns[b][p] for b in range(4)]))
                 for p in range(2)])  # (2, 2, F, B, tiles_y, tiles_x): pixel (p, q) of each tile
  y = y.transpose(2, 3, 4, 0, 5, 1).reshape(features, batch, 2 * tiles_y, 2 * tiles_x)
  return y[:, :, :height, :width]


# A layer's patch tensor, 9 times its input, is made at most this large at a time: its images
# are taken in `chunks` groups, forward and again in the backward pass, instead of keeping the
# patches of the whole batch for the gradients; the chunks' matmuls then work in the caches, and
# a training step's temporaries take about half the memory.
PATCH_BYTES = 8 << 20


def _patches(x, stride=1):
  """(C, B, H, W) -> (9C, B*H*W / stride**2): the 3x3 patches (im2col) of the zero-padded input
  at every `stride`-th pixel, taps in OFFSETS order."""
  channels, _, height, width = x.shape
  padded = _pad(x)
  patches = jnp.stack([_window(padded, offset, height, width, stride) for offset in OFFSETS])
  return patches.reshape(9 * channels, -1)


def _split(x, chunks):
  """(C, B, H, W) -> (C, B / chunks, chunks, H, W): chunk i holds images i, i + chunks, ...

  The chunk axis is the minor part of the batch axis, so that a batch sharded over devices
  stays sharded the same way in every chunk."""
  channels, batch, height, width = x.shape
  return x.reshape(channels, batch // chunks, chunks, height, width)


def _for_each_chunk(chunks, body, init):
  """fori_loop(0, chunks, body, init), without a loop for one chunk."""
  return body(0, init) if chunks == 1 else jax.lax.fori_loop(0, chunks, body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _chunked_conv3x3(x, kernel, chunks, stride):
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  weights = kernel.reshape(9 * channels, features).T
  parts = _split(x, chunks)
  height, width = -(-height // stride), -(-width // stride)

  def body(i, y):
    part = jax.lax.dynamic_index_in_dim(parts, i, axis=2, keepdims=False)
    y_part = (weights @ _patches(part, stride)).reshape(features, -1, height, width)
    return jax.lax.dynamic_update_index_in_dim(y, y_part, i, axis=2)

  y = jnp.zeros((features, batch // chunks, chunks, height, width), x.dtype)
  return _for_each_chunk(chunks, body, y).reshape(features, batch, height, width)


def _chunked_conv3x3_forward(x, kernel, chunks, stride):
  return _chunked_conv3x3(x, kernel, chunks, stride), (x, kernel)


def _chunked_conv3x3_backward(chunks, stride, residuals, dy):
  """The kernel's and the input's gradients, with the patches made again chunk by chunk."""
  x, kernel = residuals
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  weights = kernel.reshape(9 * channels, features)
  x_parts, dy_parts = _split(x, chunks), _split(dy, chunks)

  def body(i, carry):
    dweights, dx = carry
    x_part = jax.lax.dynamic_index_in_dim(x_parts, i, axis=2, keepdims=False)
    dy_part = jax.lax.dynamic_index_in_dim(dy_parts, i, axis=2, keepdims=False)
    dy_part = dy_part.reshape(features, -1)
    patches, patches_vjp = jax.vjp(functools.partial(_patches, stride=stride), x_part)
    dweights = dweights + jnp.matmul(dy_part, patches.T, preferred_element_type=jnp.float32)
    dx_part, = patches_vjp(weights @ dy_part)
    return dweights, jax.lax.dynamic_update_index_in_dim(dx, dx_part, i, axis=2)

  init = (jnp.zeros((features, 9 * channels), jnp.float32), jnp.zeros_like(x_parts))
  dweights, dx = _for_each_chunk(chunks, body, init)
  dkernel = dweights.T.reshape(kernel.shape).astype(kernel.dtype)
  return dx.reshape(x.shape), dkernel


_chunked_conv3x3.defvjp(_chunked_conv3x3_forward, _chunked_conv3x3_backward)


def conv_transpose2x2(x, kernel):
  """(C, B, H, W) -> (F, B, 2H, 2W): nn.ConvTranspose(strides=(2, 2), padding='VALID') with a
  flax kernel of shape (2, 2, C, F), without the bias. Each input pixel makes its own 2x2 block
  of the output: one matmul, then depth-to-space."""
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  # flax's transposed convolution uses the kernel flipped in space.
  weights = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(4 * features, channels)
  y = (weights @ x.reshape(channels, -1)).reshape(2, 2, features, batch, height, width)
  return y.transpose(2, 3, 4, 0, 5, 1).reshape(features, batch, 2 * height, 2 * width)


def _params(module: nn.Module, x, size: int):
  """(x, kernel, bias) in the module's dtype: flax's Conv / ConvTranspose parameters, a kernel
  of shape (size, size, C, features) and a bias, for channels-first `x`."""
  kernel = module.param('kernel', nn.initializers.lecun_normal(),
                        (size, size, x.shape[0], module.features))
  bias = module.param('bias', nn.initializers.zeros_init(), (module.features,))
  return nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)


class MatmulConv3x3(nn.Module):
  """nn.Conv(features, (3, 3), padding='SAME') on channels-first activations; `subsample`: only
  the output pixels that CHANNELS_FIRST.subsample keeps, computed alone.

  Also flax's nn.ConvTranspose(features, (3, 3), padding='SAME'): with stride 1 and no kernel
  transposition it computes the same correlation.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, subsample: bool = False):
    x, kernel, bias = _params(self, x, size=3)
    return conv3x3(x, kernel, stride=2 if subsample else 1) + bias[:, None, None, None]


class MatmulConvTranspose2x2(nn.Module):
  """nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID') on channels-first
  activations."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = _params(self, x, size=2)
    return conv_transpose2x2(x, kernel) + bias[:, None, None, None]


# --- What the models are given -------------------------------------------------------------

# XLA's older fusion emitters compile the CAE's update in two thirds of the time and run it as
# fast. Not for the dense models, which run slower with them (so they go with these layers).
FUSION_EMITTERS_OFF = {'xla_cpu_use_fusion_emitters': False}


def on_cpus_where_known(options: dict) -> dict:
  """`options` where JAX computes on CPUs and this XLA has them (an XLA without an option
  refuses every program that asks for it); else none."""
  if jax.default_backend() != 'cpu':
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
  except Exception:  # pylint: disable=broad-except  (XLA's error for an unknown option)
    return {}
  return dict(options)


@functools.cache
def compiler_options() -> dict:
  """What programs of a model with these layers ask of XLA: its older fusion emitters on CPUs."""
  return on_cpus_where_known(FUSION_EMITTERS_OFF)


# These layers evaluate as fast in batches of 64 as in larger ones, and their temporaries then
# take 1/16 of the memory a batch of 1,000 takes (the Winograd products of the second
# convolution, 4 times its 28x28x64 output, are the largest). Accelerators evaluate larger
# batches best, and XLA's layers are not capped.
EVAL_BATCH_SIZE = 64

MATMUL_CONVS = layers.Convs(
    conv3x3=MatmulConv3x3, conv_transpose3x3=MatmulConv3x3,
    conv_transpose2x2=MatmulConvTranspose2x2, layout=CHANNELS_FIRST,
    compiler_options=compiler_options, eval_batch_size=EVAL_BATCH_SIZE)
