import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import cpu_convs
from ae_jax import metrics
from ae_jax import models
from configs import ae
from configs import cae


def _init(config, image_shape):
  model = models.create_model(config, image_shape)
  init = jax.jit(models.init_variables, static_argnums=0,
                 compiler_options=models.compile_once_options(model))
  return model, init(model, jax.random.PRNGKey(0))


@pytest.mark.parametrize('name, config, num_params, latent_shape', [
    ('AE', ae.get_config(), 419_120, (32,)),
    ('CAE', cae.get_config(), 725_633, (7, 7, 256)),
])
def test_mnist_models_have_the_original_sizes(name, config, num_params, latent_shape):
  model, variables = _init(config, (28, 28, 1))
  assert models.count_params(variables['params']) == num_params
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
  reconstruction, latent = jax.jit(
      model.apply, compiler_options=models.compile_once_options(model))(variables, images)
  assert reconstruction.shape == images.shape
  assert latent.shape == (3, *latent_shape)
  assert 0 <= reconstruction.min() and reconstruction.max() <= 1  # the sigmoid
  if name == 'AE':
    assert latent.min() >= 0  # ReLU latent, as in the original


@pytest.mark.parametrize('name', list(models.MODELS))
def test_every_model_keeps_the_contract_that_training_evaluation_and_studies_rely_on(name):
  """What models/__init__.py asks of a model, checked for each in MODELS (a new one too): its
  fields have a default and a check; its objective gives a loss per image and its PARTS in
  training, besides MSE, BCE and PSNR in evaluation; and an image's numbers do not depend on
  the other images of its batch, as evaluation pads its last batch with copies."""
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
  defaults = config_lib.default_config()
  for path in models.MODELS[name].FIELDS:
    assert config_lib._get(defaults, path) is not None, f'configs/default.py lacks {path}'
    assert path in config_lib.MODEL_FIELD_CHECKS, f'config_lib.MODEL_FIELD_CHECKS lacks {path}'
  config = config_lib.default_config()
  config.model.name = name
  config.model.features = (4, 8, 8, 8)
  config.dtype = 'bfloat16'  # from_config passes on the dtype and the axis name
  model = models.create_model(config, (8, 8, 1), axis_name='data')
  assert model.dtype == jnp.bfloat16 and model.axis_name == 'data'
  config.dtype = 'float32'
  model, variables = _init(config, (8, 8, 1))
  if models.has_prior(model):  # its prior's draws decode to images
    assert {'IW_SAMPLES', 'IW_IMAGES', 'IW_DECODES'} <= set(dir(model))
    decoded = model.apply(variables, jnp.zeros((2, model.latent_dim)), method='decode')
    assert decoded.shape == (2, 8, 8, 1)
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1))
  others = images.at[1:].set(jax.random.uniform(jax.random.PRNGKey(2), (3, 8, 8, 1)))
  objective = jax.jit(functools.partial(model.apply, method='objective'),
                      static_argnames=('train', 'mutable'),
                      compiler_options=models.compile_once_options(model))
  rngs = {'dropout': jax.random.PRNGKey(3), 'latent': jax.random.PRNGKey(4)}
  (loss, numbers), _ = objective(variables, images, images, train=True, rngs=rngs,
                                 mutable=('batch_stats',))
  assert loss.shape == (4,) and set(numbers) == set(models.objective_parts(model))
  loss, numbers = objective(variables, images, images, train=False, rngs=rngs)
  expected = set(models.objective_parts(model)) | {'mse', 'bce', 'psnr'}
  assert loss.shape == (4,) and set(numbers) == expected
  assert all(value.shape == (4,) for value in numbers.values())
  other_loss, other_numbers = objective(variables, others, others, train=False, rngs=rngs)
  assert float(other_loss[0]) == pytest.approx(float(loss[0]), rel=1e-5)
  for key, value in numbers.items():
    assert float(other_numbers[key][0]) == pytest.approx(float(value[0]), rel=1e-5), key


@pytest.mark.parametrize('name', list(models.MODELS))
def test_a_model_takes_uint8_images_and_names_the_fix_for_what_it_cannot_take(name):
  """From Python (using.md): uint8 images are what the data holds, and are read as training
  reads them; decode takes what embed gives; what would give a wrong answer or a flax
  traceback, images or latents, is one UserError."""
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.model.name = name
  config.model.features = (4, 8, 8, 8)
  model, variables = _init(config, (8, 8, 1))
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), np.uint8)
  floats = images.astype(np.float32) / 255
  jit = functools.partial(jax.jit, compiler_options=models.compile_once_options(model))
  embed = jit(functools.partial(model.apply, variables, method='embed'))
  # (XLA divides by multiplying by 1/255: a last bit apart from NumPy's division)
  np.testing.assert_allclose(embed(images), embed(floats), rtol=1e-5, atol=1e-6)
  objective = jit(functools.partial(model.apply, variables, method='objective',
                                    rngs={'latent': jax.random.PRNGKey(0)}))
  for got, expected in zip(jax.tree.leaves(objective(images, images)),
                           jax.tree.leaves(objective(floats, floats))):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # the targets too
  for bad, fix in [(images[0], r'add the batch axis: images\[None\]$'),
                   (images[0, ..., 0], r'add the batch and channel axes'),
                   (images[..., 0], r'add the channel axis: images\[\.\.\., None\]$'),
                   (images.reshape(3, 64), r'reshape them: images.reshape\(-1, 8, 8, 1\)'),
                   (np.zeros((3, 16, 16, 1), np.float32), 'resize them to 8x8$'),
                   (np.zeros((3, 4, 16, 1), np.float32), 'resize them to 8x8$'),
                   (np.zeros((3, 8, 8, 3), np.float32), 'on; make them grayscale$'),
                   (np.zeros((3, 6, 6, 3), np.float32), 'resize them to 8x8 and make them gray'),
                   (images.astype(np.int32), r'dtype int32: .* floats in \[0, 1\]'),
                   (images[:0], 'no images')]:
    with pytest.raises(UserError) as raised:
      embed(bad)
    assert re.search(fix, str(raised.value).splitlines()[0]), raised.value  # jit adds a note
  latents = embed(floats)
  assert latents.shape == (3, *model.latent_shape)
  decode = jit(functools.partial(model.apply, variables, method='decode'))
  reconstruct = jit(functools.partial(model.apply, variables, method='reconstruct'))
  np.testing.assert_allclose(decode(latents), reconstruct(floats), rtol=1e-5, atol=1e-6)
  dims = ', '.join(map(str, model.latent_shape))
  for bad, fix in [(latents[0], r'add the batch axis: latents\[None\]$'),
                   (np.zeros((3, 5), np.float32), rf'a batch \(N, {dims}\) .*that shape$'),
                   (latents[..., None], 'give them that shape$'),
                   (np.asarray(latents).astype(np.int32), 'dtype int32: the model decodes floats'),
                   (latents[:0], 'no latents')]:
    with pytest.raises(UserError) as raised:
      decode(bad)
    assert re.search(fix, str(raised.value).splitlines()[0]), raised.value
  if len(model.latent_shape) > 1:  # encode.sh's latents are flattened
    with pytest.raises(UserError, match=rf'reshape them: latents.reshape\(-1, {dims}\)'):
      decode(np.asarray(latents).reshape(3, -1))


@pytest.mark.parametrize('config', [ae.get_config(), cae.get_config()])
@pytest.mark.parametrize('image_shape', [(32, 32, 3), (30, 30, 1), (8, 8, 1)])
def test_models_follow_the_image_shape(config, image_shape):
  model, variables = _init(config, image_shape)
  reconstruction, _ = jax.jit(model.apply)(variables, jnp.zeros((2, *image_shape)))
  assert reconstruction.shape == (2, *image_shape)


def test_unknown_model_lists_the_choices():
  config = ae.get_config()
  config.model.name = 'GAN'
  with pytest.raises(UserError, match='AE, CAE, VAE, ConvVAE'):
    models.create_model(config, (28, 28, 1))


@pytest.mark.parametrize('image_shape', [(10, 14, 3)])  # odd sizes: the crop path too
@pytest.mark.parametrize('patch_bytes', [cpu_convs.PATCH_BYTES,  # 1: an image per chunk
                                         pytest.param(1, marks=pytest.mark.slow)])
def test_matmul_cae_computes_what_flax_convolutions_compute(image_shape, patch_bytes,
                                                             monkeypatch):
  """The fast formulation: same parameters, same outputs, same gradients, same batch stats."""
  monkeypatch.setattr(cpu_convs, 'PATCH_BYTES', patch_bytes)
  config = cae.get_config()
  config.model.features = (8, 16, 24, 32)
  config.model.conv = 'matmul'
  fast, variables = _init(config, image_shape)
  config.model.conv = 'xla'
  plain, plain_variables = _init(config, image_shape)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, plain_variables)

  images = jax.random.uniform(jax.random.PRNGKey(1), (4, *image_shape))

  def loss(params, model):
    (reconstruction, latent), updates = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, images, train=True,
        mutable=['batch_stats'])
    return jnp.mean((reconstruction - images) ** 2) + jnp.mean(latent), (reconstruction, updates)

  loss_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (fast_loss, (fast_out, fast_stats)), fast_grads = loss_and_grad(variables['params'], fast)
  (plain_loss, (plain_out, plain_stats)), plain_grads = loss_and_grad(variables['params'], plain)
  np.testing.assert_allclose(fast_out, plain_out, atol=1e-5)
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               fast_grads, plain_grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               fast_stats, plain_stats)
  # and in evaluation mode, with the running statistics (where the matmul CAE computes only the
  # pixels that survive the subsampling)
  trained = {'params': variables['params'], **fast_stats}
  for i in (0, 1):  # reconstructions and latents
    np.testing.assert_allclose(jax.jit(fast.apply)(trained, images)[i],
                               jax.jit(plain.apply)(trained, images)[i], atol=1e-5)


@pytest.mark.parametrize('layer, fast_layer, kwargs, channels, features', [
    (nn.Conv, cpu_convs.MatmulConv3x3, dict(kernel_size=(3, 3), padding='SAME'), 3, 7),
    # from 16 channels up: Winograd's F(2x2, 3x3), here on an odd height
    (nn.Conv, cpu_convs.MatmulConv3x3, dict(kernel_size=(3, 3), padding='SAME'), 16, 7),
    (nn.ConvTranspose, cpu_convs.MatmulConv3x3, dict(kernel_size=(3, 3), padding='SAME'), 16, 7),
    # few output channels: the nine shifted planes instead of patches
    (nn.Conv, cpu_convs.MatmulConv3x3, dict(kernel_size=(3, 3), padding='SAME'), 8, 1),
    (nn.ConvTranspose, cpu_convs.MatmulConv3x3, dict(kernel_size=(3, 3), padding='SAME'), 3, 7),
    (nn.ConvTranspose, cpu_convs.MatmulConvTranspose2x2,
     dict(kernel_size=(2, 2), strides=(2, 2), padding='VALID'), 3, 7),
])
def test_each_matmul_layer_equals_its_flax_layer(layer, fast_layer, kwargs, channels, features):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, channels))
  flax_layer = lambda x: layer(features, **kwargs).apply(variables, x)
  variables = layer(features, **kwargs).init(jax.random.PRNGKey(1), x)
  layout = cpu_convs.CHANNELS_FIRST
  fast = lambda x: layout.leave(fast_layer(features).apply(variables, layout.enter(x)))
  np.testing.assert_allclose(fast(x), flax_layer(x), atol=1e-5)
  # and the gradients with respect to the input (the parameters' are checked in the CAE above)
  grad = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)
  np.testing.assert_allclose(grad(fast), grad(flax_layer), atol=1e-5)


def test_dropout_is_inverted_and_off_in_evaluation():
  x = jnp.ones((64, 100))
  dropout = models.Dropout(0.25)
  y = dropout.apply({}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, float(np.float32(1 / 0.75))}
  assert abs(float((y == 0).mean()) - 0.25) < 0.02
  assert (dropout.apply({}, x, train=False) == x).all()


@pytest.mark.parametrize('chunks', [1, 3])
@pytest.mark.parametrize('stride', [1, 2])
def test_a_conv_made_chunk_by_chunk_has_flax_outputs_and_gradients(chunks, stride, monkeypatch):
  """Patches made a few images at a time, forward and again for the gradients: the same
  outputs, and the same gradients of the input and of the kernel, as flax's nn.Conv; with
  stride 2, as nn.Conv followed by the CAE's subsampling."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 4, 3))
  monkeypatch.setattr(cpu_convs, 'PATCH_BYTES', 9 * x.size * 4 // stride**2 // chunks)
  conv = nn.Conv(7, (3, 3), padding='SAME')
  variables = conv.init(jax.random.PRNGKey(1), x)
  layout = cpu_convs.CHANNELS_FIRST
  fast = lambda v, x: layout.leave(
      cpu_convs.MatmulConv3x3(7).apply(v, layout.enter(x), subsample=stride == 2))
  flax_conv = lambda v, x: conv.apply(v, x)[:, ::stride, ::stride]
  np.testing.assert_allclose(fast(variables, x), flax_conv(variables, x), atol=1e-5)
  grads = lambda f: jax.grad(lambda v, x: jnp.sum(jnp.sin(f(v, x))), argnums=(0, 1))(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads(jax.jit(fast)), grads(flax_conv))


# --- Mixed precision ------------------------------------------------------------------------

def _matmul_dtypes(jaxpr, found=None) -> set:
  """The operand dtypes of every matmul and convolution in `jaxpr` and the jaxprs inside it."""
  found = set() if found is None else found
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
      found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's
        if hasattr(sub, 'eqns'):
          _matmul_dtypes(sub, found)
  return found


# The CAE's layers, narrower: seconds on CPU.
PRECISION_MODELS = [('ae', {}), ('vae', {}), ('cae', {'model.features': (8, 16, 24, 32)})]


def _precision_setup(name, dtype, overrides, images, *, abstract=False):
  """(model, train state, train step) of configs/<name>.py computing in `dtype`; `abstract`: the
  state's shapes and dtypes alone, nothing compiled."""
  from conftest import small_config  # pylint: disable=g-import-not-at-top
  from ae_jax import train  # pylint: disable=g-import-not-at-top
  config = small_config(name, dtype=dtype, **overrides)
  model = models.create_model(config, images.shape[1:])
  tx = train.create_optimizer(config)
  create = functools.partial(train.create_train_state, model, tx, config.seed)
  state = jax.eval_shape(create) if abstract else jax.jit(
      create, compiler_options=models.compile_once_options(model))()
  step_fn = functools.partial(train.train_step, model=model, tx=tx,
                              noise_mean=config.noise.mean, noise_std=config.noise.std)
  return model, state, step_fn


def _small_images(count):
  import os  # pylint: disable=g-import-not-at-top
  from conftest import MNIST_SMALL  # pylint: disable=g-import-not-at-top
  from ae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.read_idx(
      os.path.join(MNIST_SMALL, 'train-images-idx3-ubyte.gz'))[:count, ..., None]


@pytest.mark.parametrize('name, overrides', PRECISION_MODELS)
def test_bfloat16_computes_the_float32_loss_with_float32_parameters(name, overrides):
  """config.dtype='bfloat16': every matmul and convolution of a training step (gradients
  included) in bfloat16; the parameters, the optimizer state and the loss in float32; the loss
  that of float32 within 1%; the latents that maps and probes read in float32."""
  images = _small_images(32)
  inputs = images / np.float32(255)
  losses, matmuls = {}, {}
  for dtype in ('float32', 'bfloat16'):
    model, state, step_fn = _precision_setup(name, dtype, overrides, images, abstract=True)
    matmuls[dtype] = _matmul_dtypes(jax.make_jaxpr(step_fn)(state, images).jaxpr)
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}

    @functools.partial(jax.jit, compiler_options=models.compile_once_options(model))
    def loss_and_latents(key, inputs, model=model):
      variables = models.init_variables(model, key)
      loss, _ = model.apply(variables, inputs, inputs, rngs={'latent': key}, method='objective')
      return loss, model.apply(variables, inputs, method='embed')

    loss, latents = loss_and_latents(jax.random.PRNGKey(0), inputs)
    assert loss.dtype == latents.dtype == jnp.float32
    losses[dtype] = np.asarray(loss)
  assert matmuls['bfloat16'] == {('bfloat16', 'bfloat16')}, matmuls
  assert matmuls['float32'] == {('float32', 'float32')}, matmuls
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.01)


@pytest.mark.parametrize('name', ['ae', 'vae'])
def test_bfloat16_validates_as_float32_does(name):
  """The loss alone, summed over 128 images, as training validates: bfloat16's is float32's
  within 1%. (XLA:CPU's YNNPACK fusions in JAX 0.11 and 0.12 made the AE's NaN; programs of a
  bfloat16 model ask for none.)"""
  images = _small_images(128)
  sums = {}
  for dtype in ('float32', 'bfloat16'):
    model, _, _ = _precision_setup(name, dtype, {}, images, abstract=True)
    step = functools.partial(metrics.eval_step, model=model, noise_mean=0.0, noise_std=0.0,
                             noisy=False, names=('loss',))
    variables = jax.jit(models.init_variables, static_argnums=0)(model, jax.random.PRNGKey(0))
    sums[dtype] = jax.jit(step, compiler_options=models.compiler_options(model))(
        variables, images, np.ones(len(images), bool), jax.random.PRNGKey(1))['loss']
  np.testing.assert_allclose(sums['bfloat16'], sums['float32'], rtol=0.01)


@pytest.mark.parametrize('name', list(models.MODELS))
def test_bfloat16_models_give_their_images_in_float32(name):
  """A model computing in bfloat16 reconstructs and decodes to float32 images, as in float32:
  its last layer and sigmoid in float32, or pixels near 1 (spaced 2^-8 in bfloat16) could come
  out a level off as uint8. Shapes and dtypes alone: nothing compiles."""
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.model.name = name
  config.model.features = (4, 8, 8, 8)
  config.dtype = 'bfloat16'
  model = models.create_model(config, (8, 8, 1))
  variables = jax.eval_shape(functools.partial(models.init_variables, model),
                             jax.random.PRNGKey(0))
  images = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  latents = jax.eval_shape(functools.partial(model.apply, method='embed'), variables, images)
  assert latents.dtype == jnp.float32
  for method, inputs in (('reconstruct', images), ('decode', latents)):
    out = jax.eval_shape(functools.partial(model.apply, method=method), variables, inputs)
    assert (out.shape, out.dtype) == ((2, 8, 8, 1), jnp.float32), method


@pytest.mark.slow  # the CAE's update compiles for a minute on 2 busy cores
@pytest.mark.parametrize('name, overrides', PRECISION_MODELS)
def test_bfloat16_trains_as_float32_does_with_float32_optimizer_state(name, overrides):
  """A few steps in bfloat16: the losses of float32's within 1%; parameters, optimizer state and
  batch statistics stay float32."""
  from ae_jax import train  # pylint: disable=g-import-not-at-top
  images = _small_images(96)
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    model, state, step_fn = _precision_setup(name, dtype, overrides, images)
    run = jax.jit(functools.partial(train.train_loop, step_fn=step_fn),
                  compiler_options=models.compiler_options(model))
    state, numbers = run(state, images, np.arange(96, dtype=np.int32).reshape(3, 32), 3)
    assert numbers['loss'].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    losses[dtype] = np.asarray(numbers['loss'])
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.01)
