import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import trace_cache
from ae_jax import train
from conftest import MNIST_SMALL
from conftest import run_module
from conftest import small_config


@pytest.fixture
def folder(tmp_path, monkeypatch):
  monkeypatch.setattr(trace_cache, 'FOLDER', str(tmp_path / 'traces'))
  monkeypatch.setattr(trace_cache, 'COUNTS', {'read': 0, 'traced': 0})
  return tmp_path / 'traces'


class Pair(NamedTuple):
  first: jax.Array
  second: jax.Array


def _traced_function():
  """A function with pytrees in and out, and the list of the times Python ran it."""
  traced = []

  def fun(state, batch, scale):
    traced.append(1)
    return Pair(state['w'] * scale + batch.sum(), state['w'].mean()), {'n': batch.shape[0]}
  return fun, traced


def _args():
  return {'w': jnp.arange(4.0)}, jnp.ones((3, 2)), 2.0


def test_a_second_compile_runs_the_stored_program_without_tracing(folder):
  fun, traced = _traced_function()
  first = trace_cache.jit_compile(fun, _args(), name='f', context='c')
  assert len(traced) == 1 and trace_cache.COUNTS == {'read': 0, 'traced': 1}
  assert len(os.listdir(folder)) == 1
  second = trace_cache.jit_compile(fun, _args(), name='f', context='c')
  assert len(traced) == 1 and trace_cache.COUNTS == {'read': 1, 'traced': 1}
  expected = jax.jit(fun)(*_args())
  for compiled in (first, second):
    out = compiled(*_args())
    assert isinstance(out[0], Pair)
    jax.tree.map(np.testing.assert_array_equal, out, expected)


def test_donated_arguments_are_donated(folder):
  fun, _ = _traced_function()
  for _ in range(2):  # traced, then read
    compiled = trace_cache.jit_compile(fun, _args(), name='f', donate_argnums=(0,))
    state, batch, scale = _args()
    compiled(state, batch, scale)
    assert state['w'].is_deleted() and not batch.is_deleted()
  assert trace_cache.COUNTS == {'read': 1, 'traced': 1}


def test_another_context_shape_or_source_traces_again(folder, monkeypatch):
  fun, traced = _traced_function()
  state, batch, scale = _args()
  trace_cache.jit_compile(fun, (state, batch, scale), name='f', context='a')
  trace_cache.jit_compile(fun, (state, batch, scale), name='f', context='b')
  trace_cache.jit_compile(fun, (state, jnp.ones((4, 2)), scale), name='f', context='a')
  trace_cache.jit_compile(fun, (state, batch.astype(jnp.int32), scale), name='f', context='a')
  assert trace_cache.COUNTS == {'read': 0, 'traced': 4}
  monkeypatch.setattr(trace_cache, 'environment', lambda: 'an edited ae_jax module')
  trace_cache.jit_compile(fun, (state, batch, scale), name='f', context='a')
  assert trace_cache.COUNTS == {'read': 0, 'traced': 5} and len(os.listdir(folder)) == 5


def test_the_key_holds_the_sources_of_ae_jax():
  sources = trace_cache.environment()
  assert jax.__version__ in sources and "('jax_enable_x64', False)" in sources
  assert len(sources.split("'")[1]) == 64  # the hash of every module's source


def test_a_damaged_file_is_traced_again_and_replaced(folder):
  fun, traced = _traced_function()
  trace_cache.jit_compile(fun, _args(), name='f')
  [name] = os.listdir(folder)
  (folder / name).write_bytes(b'not a traced program')
  compiled = trace_cache.jit_compile(fun, _args(), name='f')
  jax.tree.map(np.testing.assert_array_equal, compiled(*_args()), jax.jit(fun)(*_args()))
  trace_cache.jit_compile(fun, _args(), name='f')
  assert trace_cache.COUNTS == {'read': 1, 'traced': 2}


def test_a_folder_that_cannot_be_written_costs_only_the_trace(tmp_path, monkeypatch):
  (tmp_path / 'file').write_text('')
  monkeypatch.setattr(trace_cache, 'FOLDER', str(tmp_path / 'file' / 'traces'))
  monkeypatch.setattr(trace_cache, 'COUNTS', {'read': 0, 'traced': 0})
  fun, traced = _traced_function()
  for _ in range(2):
    compiled = trace_cache.jit_compile(fun, _args(), name='f')
    jax.tree.map(np.testing.assert_array_equal, compiled(*_args()), jax.jit(fun)(*_args()))
  assert trace_cache.COUNTS == {'read': 0, 'traced': 2}


def test_without_flatbuffers_to_serialize_with_it_costs_only_the_trace(folder, monkeypatch):
  def serialize(self, *args, **kwargs):
    raise ImportError("Please install 'flatbuffers' in order to use Exported serialization")
  monkeypatch.setattr(jax.export.Exported, 'serialize', serialize)
  fun, traced = _traced_function()
  for _ in range(2):
    compiled = trace_cache.jit_compile(fun, _args(), name='f')
    jax.tree.map(np.testing.assert_array_equal, compiled(*_args()), jax.jit(fun)(*_args()))
  assert trace_cache.COUNTS == {'read': 0, 'traced': 2} and not list(folder.glob('f-*'))


def test_what_jax_export_refuses_is_traced_as_usual(folder):
  def with_callback(x):
    return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype),
                             x)
  compiled = trace_cache.jit_compile(with_callback, (jnp.arange(3.0),), name='callback')
  np.testing.assert_array_equal(compiled(jnp.arange(3.0)), [0.0, 2.0, 4.0])
  assert trace_cache.COUNTS == {'read': 0, 'traced': 0} and not folder.exists()


def test_without_a_folder_it_compiles_as_jit_does(tmp_path, monkeypatch):
  monkeypatch.setattr(trace_cache, 'FOLDER', None)
  monkeypatch.setattr(trace_cache, 'COUNTS', {'read': 0, 'traced': 0})
  monkeypatch.chdir(tmp_path)
  fun, _ = _traced_function()
  compiled = trace_cache.jit_compile(fun, _args(), name='f')
  jax.tree.map(np.testing.assert_array_equal, compiled(*_args()), jax.jit(fun)(*_args()))
  assert trace_cache.COUNTS == {'read': 0, 'traced': 0} and not os.listdir(tmp_path)


def test_training_on_read_programs_gives_the_same_state(folder, tmp_path):
  config = small_config('dae', num_train=128)
  states = {}
  for run, stored in (('traced', None), ('traced and written', str(folder)),
                      ('read', str(folder))):
    trace_cache.FOLDER = stored
    states[run] = jax.device_get(train.train_and_evaluate(config, str(tmp_path / run)))
  assert trace_cache.COUNTS == {'read': 2, 'traced': 2}  # the init and the update
  for run in ('traced and written', 'read'):
    jax.tree.map(np.testing.assert_array_equal, states[run], states['traced'])


def test_the_same_config_on_images_of_another_shape_traces_the_init_again(folder, tmp_path):
  # the init takes no arguments, and config.data need not name the image shape: a .npy does not
  path = tmp_path / 'images.npy'
  config = small_config('ae', num_train=64, batch_size=16,
                        **{'data.source': 'arrays', 'data.path': str(path)})
  for size in (8, 10):
    np.save(path, np.random.default_rng(0).integers(0, 256, (80, size, size), np.uint8))
    state = train.train_and_evaluate(config, str(tmp_path / f'{size}x{size}'))
    assert state.params['decoder_output']['bias'].shape == (size * size,)
  assert trace_cache.COUNTS == {'read': 0, 'traced': 4}


def test_a_second_start_of_a_command_traces_nothing(tmp_path):
  flags = [f'--compilation_cache={tmp_path / "cache"}', '--config=configs/ae.py',
           '--config.data.source=idx', f'--config.data.path={MNIST_SMALL}',
           '--config.num_epochs=1']
  outputs = []
  for run in ('first', 'second'):
    result = run_module('ae_jax.main', f'--workdir={tmp_path / run}', *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    outputs.append(result.stdout.strip().splitlines()[-1])
  assert outputs[0].endswith('; 0 traced programs read from it, 2 traced'), outputs[0]
  assert outputs[1] == ('compilation cache: 4 programs read from it, 0 compiled; '
                        '2 traced programs read from it, 0 traced'), outputs[1]
