"""The models, and the one place that makes them from a config.

  autoencoders.py  AE (dense) and CAE (convolutional): a reconstruction loss
  vae.py           VAE (dense) and ConvVAE: the negative ELBO, with beta-VAE's weight
  objectives.py    per-example losses, PSNR, likelihoods and the Gaussian KL
  layers.py        the images a model takes; dropout and random draws that do not depend on
                   the device layout; flax's convolution layers, which cpu_convs.py replaces
                   on CPUs

Every model takes images of shape (batch, height, width, channels), floats in [0, 1] or uint8
(layers.model_input), and has
  objective(inputs, targets, train) -> (per-example loss, {name: per-example number}): in
    training the numbers named by PARTS, in evaluation those and MSE, BCE and PSNR
  reconstruct(inputs) -> images;  embed(inputs) -> latents;  encode;  decode(latents) -> images,
    where decode(embed(x)) is reconstruct(x) and checks its latents (layers.model_latents)
  image_shape, latent_shape (one image's latent), PARTS, loss_name (what the loss is, in titles
    and logs)
and a model with a prior (the VAEs: `log_weights`, the importance-weighted bound's weights)
also `latent_dim`, latents that decode from N(0, I) draws, an encode that gives the
posterior's (mean, logvar), IW_SAMPLES, IW_IMAGES and IW_DECODES. Training, evaluation, the
maps and the study call these, and know no model by name.

A new model is a class with them, a `from_config(config, image_shape, **kwargs)` that passes
on `axis_name`, `dtype` (and `convs`, where FIELDS has model.conv), and the config fields it
reads (FIELDS), added to MODELS; a field
of its own needs a default in configs/default.py and a check in
config_lib.MODEL_FIELD_CHECKS. tests/test_models.py checks each model in MODELS for this. An
image's numbers are its own: evaluation pads its last batch with copies of an image and
averages under a mask, so a term over the whole batch (an MMD) would change with the padding
and the device count. Random draws take the 'latent' rng through layers.draw_for_global_batch,
so that they do not depend on the device layout.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import UserError
from ae_jax import cpu_convs
from ae_jax.models import layers
from ae_jax.models import objectives
from ae_jax.models.autoencoders import AE
from ae_jax.models.autoencoders import CAE
from ae_jax.models.layers import Dropout
from ae_jax.models.layers import draw_for_global_batch
from ae_jax.models.vae import ConvVAE
from ae_jax.models.vae import VAE
from ae_jax.models.vae import importance_weighted_nll

MODELS = {'AE': AE, 'CAE': CAE, 'VAE': VAE, 'ConvVAE': ConvVAE}
DTYPES = ('float32', 'bfloat16')


def create_model(config, image_shape, *, axis_name=None) -> nn.Module:
  """The model that `config.model.name` names, for images of `image_shape` (H, W, C), computing
  in config.dtype (parameters and losses stay float32)."""
  name = config.model.name
  if name not in MODELS:
    raise UserError(
        f'unknown model {name!r}: config.model.name must be one of {", ".join(MODELS)}')
  cls = MODELS[name]
  kwargs = dict(axis_name=axis_name, dtype=jnp.dtype(config.get('dtype', 'float32')))
  if 'model.conv' in cls.FIELDS:
    kwargs['convs'] = conv_layers(config.model)
  return cls.from_config(config, tuple(int(d) for d in image_shape), **kwargs)


def conv_kind(model_config) -> str:
  """How a convolutional model computes its convolutions: config.model.conv, with 'auto' the
  matmuls of cpu_convs.py on CPUs and XLA's convolutions elsewhere. The one place that chooses."""
  if model_config.conv != 'auto':
    return model_config.conv
  return 'matmul' if jax.default_backend() == 'cpu' else 'xla'


def conv_layers(model_config) -> layers.Convs:
  return cpu_convs.MATMUL_CONVS if conv_kind(model_config) == 'matmul' else layers.XLA_CONVS


def has_prior(model: nn.Module) -> bool:
  """Whether the model has a prior (the VAEs): latents that decode from N(0, I) draws, a
  posterior to encode to, and the importance-weighted bound (log_weights)."""
  return hasattr(model, 'log_weights')


def compiler_options(model: nn.Module) -> dict:
  """What a program that runs `model` asks of XLA: its convolution layers may ask, and a model
  computing in bfloat16 on CPUs asks for no YNNPACK fusions."""
  convs = getattr(model, 'convs', None)
  options = convs.compiler_options() if convs is not None else {}
  if jnp.dtype(getattr(model, 'dtype', jnp.float32)) == jnp.bfloat16:
    options = {**options, **_cpu_bfloat16_options()}
  return options


# XLA:CPU's YNNPACK fusions in JAX 0.11 and 0.12 compute bfloat16 dense layers followed by a
# loss wrongly: the AE's validation MSE came out NaN, for a different share of the examples
# each run. Without them it is the MSE computed op by op; JAX 0.10's fusions were right.
NO_YNN_FUSIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def _cpu_bfloat16_options() -> dict:
  return cpu_convs.on_cpus_where_known(NO_YNN_FUSIONS)


def compile_once_options(model: nn.Module) -> dict:
  """compiler_options(model) for code that runs once (the init, a figure's few images), which
  needs no optimizing: XLA:CPU compiles the CAE's init in a quarter of the time at level 0."""
  return {**compiler_options(model), 'xla_backend_optimization_level': 0}


def jit_method(model: nn.Module, method: str):
  """(variables, x) -> model.apply(variables, x, method=method), compiled for code that runs
  once on a few inputs (a figure's images, a few latents)."""
  return jax.jit(functools.partial(model.apply, method=method),
                 compiler_options=compile_once_options(model))


def eval_batch_size(model: nn.Module) -> int | None:
  """The largest evaluation batch worth its memory for `model`'s layers (None: any)."""
  convs = getattr(model, 'convs', None)
  return convs.eval_batch_size if convs is not None else None


def init_variables(model: nn.Module, rng) -> dict:
  """The model's variables ({'params': ..., 'batch_stats': ...}) for one dummy batch.

  Jit it (with compile_once_options(model)) or call it inside a jitted function.
  """
  dummy = jnp.zeros((1, *model.image_shape), jnp.float32)
  variables = model.init({'params': rng}, dummy, train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def objective_parts(model: nn.Module) -> tuple[str, ...]:
  """The names of the numbers that `model`'s objective reports in training besides its loss,
  in the order people read them (a VAE's nelbo, reconstruction and kl; none for the AE)."""
  return model.PARTS


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


__all__ = ['AE', 'CAE', 'ConvVAE', 'DTYPES', 'Dropout', 'MODELS', 'VAE', 'compile_once_options',
           'compiler_options', 'conv_kind', 'conv_layers', 'count_params', 'create_model',
           'draw_for_global_batch', 'eval_batch_size', 'has_prior', 'importance_weighted_nll',
           'init_variables', 'objective_parts', 'objectives']
