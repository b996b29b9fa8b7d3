"""The training command as a user runs it: its errors are one line, and it resumes."""

import os
import subprocess
import sys
import time

import pytest

from conftest import MNIST_SMALL
from conftest import ROOT
from conftest import assert_one_line_error
from conftest import run_module
from conftest import run_script

SMALL = ['--config.data.source=idx', f'--config.data.path={MNIST_SMALL}',
         '--config.data.train_split=train[:160]', '--config.batch_size=32']


def _train(workdir, *flags, config='configs/ae.py', **kwargs):
  return run_module('ae_jax.main', f'--config={config}', f'--workdir={workdir}', *flags, **kwargs)


_assert_one_line_error = assert_one_line_error


@pytest.mark.parametrize('flag, fragments', [
    ('--config.model.latnt_dim=3', ['no such config field', 'Did you mean "latent_dim"']),
    ('--config.model.latent_dim=abc', ['--config.model.latent_dim=abc', 'int()']),
    ('--config.model.name=GAN', ["config.model.name='GAN' is not one of: AE, CAE, VAE, ConvVAE"]),
    ('--config.optimizer=adagrad', ['config.optimizer', 'adam, adamw, sgd']),
    ('--config.loss=l1', ['config.loss', 'mse, bce']),
    ('--config.data.source=csv', ['config.data.source', 'tfds, idx']),
    ('--config.model=CAE', ['config.model is a section, not a field',
                            '--config.model.FIELD=CAE', 'latent_dim']),
    ('--config.model.name.x=1', ['no such config field: config.model.name.x',
                                 'config.model.name is a value']),
    ('--config=configs/dae.py', ['--config is given twice: give one config file']),
])
def test_bad_config_is_one_clear_line(workdir, flag, fragments):
  _assert_one_line_error(_train(workdir, *SMALL, flag), *fragments)


def test_a_tuple_given_twice_is_refused_and_a_number_given_twice_takes_the_last(tmp_path):
  _assert_one_line_error(_train(tmp_path / 'cae', *SMALL, '--config.model.features=(2,2,2,2)',
                                '--config.model.features=(4,4,4,4)', config='configs/cae.py'),
                         '--config.model.features is given twice, and ml_collections would '
                         'join the two: give it once')
  result = _train(tmp_path / 'ae', *SMALL, '--config.num_epochs=5', '--config.num_epochs=1')
  assert result.returncode == 0 and 'epoch 1/1' in result.stdout, result.stderr


def test_arguments_that_are_not_flags_are_one_line(tmp_path):
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py', 'extra',
                      cwd=tmp_path)
  _assert_one_line_error(result, 'unexpected argument extra: give flags as --name=value')
  assert os.listdir(tmp_path) == []
  result = run_script('eval.sh', str(tmp_path / 'a'), str(tmp_path / 'b'), cwd=tmp_path)
  _assert_one_line_error(result, f'unexpected argument {tmp_path / "b"}', 'at most one workdir')


def test_missing_config_file_is_one_clear_line(workdir):
  _assert_one_line_error(_train(workdir, config='configs/nope.py'),
                         'the config file configs/nope.py does not exist',
                         'configs/cae.py', 'configs/quickstart.py')
  # a bare name most likely meant a config of the repository, not a module of the folder
  _assert_one_line_error(_train(workdir, config='cea.py', cwd=os.path.join(ROOT, 'ae_jax')),
                         'the config file cea.py does not exist; the configs are: '
                         f'{ROOT}/configs/ae.py, {ROOT}/configs/cae.py')
  assert not os.path.exists(workdir)


@pytest.mark.parametrize('text, fragments', [
    ('def get_config():\n  raise ValueError("no data here")\n',
     ['does not load: ValueError: no data here']),
    ('def get_config():\n  from configs import ae\n  config = ae.get_config()\n'
     '  config.model.latent_dim = 8.5\n  return config\n',
     ["does not load: TypeError: Could not override field 'latent_dim'"]),
    ('LATENT_DIM = 8\n', ['has no get_config(): define one']),
    ('def get_config():\n  return 5\n', ['get_config() of', 'returns int, not a config']),
])
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, text, fragments):
  (tmp_path / 'mine.py').write_text(text)
  result = run_module('ae_jax.main', f'--config={tmp_path / "mine.py"}', cwd=tmp_path)
  _assert_one_line_error(result, *fragments)
  assert os.listdir(tmp_path) == ['mine.py']


@pytest.mark.parametrize('flag, fragments', [
    ('--config.seed=-1', ['config.seed=-1']),
    ('--config.num_summary_images=-1', ['config.num_summary_images=-1']),
    ('--config.data.image_size=100000', ['out of host memory', 'config.data.image_size']),
])
def test_more_bad_values_are_one_line_and_write_nothing(tmp_path, flag, fragments):
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py', flag, cwd=tmp_path)
  _assert_one_line_error(result, *fragments)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('module, flag, fragment', [
    ('ae_jax.main', '--workdir=', '(default: runs/<config file name>'),
    ('ae_jax.study', '--seeds=', '(default: config.study.seeds, else 0)'),
    ('ae_jax.study', '--grid=', ''),
    ('ae_jax.study', '--workdir=', '(default: studies/<config name>)'),
    ('ae_jax.evaluate', '--out_dir=', '(default: WORKDIR/eval)'),
    ('ae_jax.evaluate', '--checkpoint=', '(default: best)'),
    ('ae_jax.evaluate', '--split=', ''),
    ('ae_jax.tsne', '--out_dir=', '(default: WORKDIR/tsne)'),
    ('ae_jax.generate', '--out_dir=', '(default: WORKDIR/generate)'),
    ('ae_jax.generate', '--walk=', ''),
])
def test_an_empty_flag_is_refused_like_an_unset_shell_variable(tmp_path, module, flag, fragment):
  """--seeds=$SEEDS with SEEDS unset would run the default, or write into a folder named ''."""
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text('{}')
  config = ([f'--config={ROOT}/configs/quickstart.py'] if module in ('ae_jax.main', 'ae_jax.study')
            else [f'--workdir={run}'])
  result = run_module(module, *config, flag, cwd=tmp_path)
  _assert_one_line_error(result, f'{flag[:-1]} is empty (an unset shell variable?)', fragment)
  assert os.listdir(tmp_path) == ['run'] and os.listdir(run) == ['config.json']


def test_a_flag_of_blanks_is_refused_as_empty(tmp_path):
  # --out_dir="$DIR " with DIR unset: a folder named ' ' otherwise
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text('{}')
  result = run_module('ae_jax.evaluate', f'--workdir={run}', '--out_dir= ', cwd=tmp_path)
  _assert_one_line_error(result, '--out_dir is empty (an unset shell variable?)')
  assert os.listdir(tmp_path) == ['run'] and os.listdir(run) == ['config.json']


def test_a_workdir_of_another_run_names_the_fields_that_differ(trained_ae):
  workdir, _ = trained_ae
  before = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
  result = _train(workdir, *SMALL, '--config.model.latent_dim=16', '--config.noise.std=0.1')
  _assert_one_line_error(result, 'holds another run',
                         'config.model.latent_dim is 32 there, 16 here',
                         'config.noise.std is 0.0 there, 0.1 here')
  assert 'hidden_dim' not in result.stderr  # only what differs
  assert before == {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}


@pytest.mark.parametrize('flag, fragment', [
    ('--config.data.path.x=a', 'no such config field: config.data.path.x'),
    ("--config.noise={'std': 0.5}", 'config.noise.mean is missing: set single fields'),
    # absl takes the last --workdir, config.json was read from the first
    ('--workdir=runs/elsewhere', 'two workdirs, '),
])
def test_a_scripts_flag_it_cannot_take_is_one_line(trained_ae, flag, fragment):
  _assert_one_line_error(run_script('eval.sh', trained_ae[0], flag), fragment)


def test_a_damaged_config_json_is_named(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"seed": 0,')
  for result in (_train(str(workdir), *SMALL), run_script('eval.sh', str(workdir))):
    _assert_one_line_error(result, f'{workdir}/config.json is not valid JSON')


SHARED_MNIST = os.path.join(ROOT, '..', 'shared', 'data', 'mnist')


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason='needs ../shared/data/mnist')
def test_a_manual_dir_file_with_the_wrong_checksum_is_named(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  shutil.copytree(SHARED_MNIST, manual, ignore=shutil.ignore_patterns('*.md'))
  # real MNIST images, but not the official file's bytes
  shutil.copy(os.path.join(MNIST_SMALL, 'train-images-idx3-ubyte.gz'), manual)
  result = _train(str(tmp_path / 'run'), f'--config.data.data_dir={tmp_path / "tfds"}',
                  f'--config.data.manual_dir={manual}')
  _assert_one_line_error(result, f'{manual}/train-images-idx3-ubyte.gz is not the official file',
                         'its checksum differs', '--config.data.source=idx')
  assert not os.path.exists(tmp_path / 'run')


def test_offline_mnist_fails_within_seconds_and_says_what_to_do(tmp_path):
  # A proxy on a closed loopback port: no network, whatever the machine has.
  offline = {'https_proxy': 'http://127.0.0.1:9', 'http_proxy': 'http://127.0.0.1:9',
             'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9'}
  # the error comes from the check before tfds's download (minutes of retries offline)
  result = _train(str(tmp_path / 'run'), f'--config.data.data_dir={tmp_path / "tfds"}',
                  env=offline, timeout=120)
  _assert_one_line_error(result, 'no network', 'train-images-idx3-ubyte.gz',
                         '--config.data.manual_dir', '--config.data.source=idx',
                         'configs/quickstart.py')
  # nothing before it: tfds warned of the dataset it had not prepared yet
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_training_twice_in_one_workdir_resumes(workdir):
  first = _train(workdir, *SMALL, '--config.num_epochs=1')
  assert first.returncode == 0, first.stderr
  assert 'model AE: 419,120 parameters' in first.stdout
  assert 'epoch 1/1: train_loss' in first.stdout
  second = _train(workdir, *SMALL, '--config.num_epochs=2')
  assert second.returncode == 0, second.stderr
  assert 'resumed from the checkpoint of step 4' in second.stdout
  assert 'epoch 2/2: train_loss' in second.stdout and 'epoch 1/2' not in second.stdout
  assert 'epoch 2/2' in second.stderr  # the progress bar
  third = _train(workdir, *SMALL, '--config.num_epochs=2')
  assert 'nothing to train' in third.stdout
  assert sorted(os.listdir(workdir)) == sorted(
      ['checkpoints', 'config.json', 'loss_curve.png', 'metrics.jsonl', 'reconstructions.png'] +
      [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')])


@pytest.mark.slow
def test_the_first_commands_work_as_written_without_a_workdir(tmp_path):
  """python -m ae_jax.main --config=..., then scripts/eval.sh and scripts/tsne.sh, no arguments."""
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py',
                      '--config.num_epochs=3', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0].startswith('training into runs/quickstart')
  run = tmp_path / 'runs' / 'quickstart'
  assert (run / 'checkpoints').is_dir() and (run / 'metrics.jsonl').exists()
  for script in ('eval.sh', 'tsne.sh'):
    result = run_script(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('runs/quickstart: the run under runs/ that trained last')
    assert 'split: validation (the data has no test split' in result.stdout
  assert (run / 'eval' / 'validation.json').exists()
  assert (run / 'tsne' / 'validation.png').exists()


def test_a_coordinator_that_does_not_answer_is_one_line_within_the_timeout(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py',
                      f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                      '--process_id=1', '--coordinator_timeout=3', cwd=tmp_path, timeout=60)
  assert result.stdout.startswith(f'waiting for the coordinator at 127.0.0.1:{port} as process 1 '
                                  'of 2 (for at most 3 s')
  _assert_one_line_error(result, f'not every process joined within 3 s at the coordinator '
                         f'127.0.0.1:{port}', '--coordinator_timeout')
  assert os.listdir(tmp_path) == []


def test_under_distributed_the_waiting_line_names_only_what_was_given(tmp_path):
  """The cluster may number the processes: the line must not read 'as process None of None'."""
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py',
                      '--coordinator_address=127.0.0.1:1', '--distributed', '--num_processes=2',
                      '--coordinator_timeout=3', cwd=tmp_path, timeout=60)
  assert result.stdout.startswith('waiting for the coordinator at 127.0.0.1:1 as one of 2 '
                                  'processes (for at most 3 s'), result.stdout
  _assert_one_line_error(result, 'cannot start jax.distributed')
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('module, flag, fragment', [
    ('ae_jax.main', '--num_epochs=5', '--num_epochs is not a flag; config.num_epochs is a config '
     'field: write --config.num_epochs=5'),
    ('ae_jax.main', '--model.latent_dim=4', 'write --config.model.latent_dim=4'),
    ('ae_jax.main', '--latent_dim=4', 'write --config.model.latent_dim=4'),
    ('ae_jax.main', '--num-epochs=5', 'write --config.num_epochs=5'),
    ('ae_jax.main', '--nograyscale', 'write --config.data.grayscale='),  # absl's --noBOOL
    ('ae_jax.study', '--noise.std=0.1', 'write --config.noise.std=0.1'),
    ('ae_jax.evaluate', '--batch_size=8', 'write --config.batch_size=8'),
    ('ae_jax.main', '--workdirr=x', "Did you mean: workdir"),
])
def test_a_config_field_given_as_a_flag_names_the_flag_that_sets_it(tmp_path, module, flag,
                                                                    fragment):
  config = [] if module == 'ae_jax.evaluate' else [f'--config={ROOT}/configs/quickstart.py']
  result = run_module(module, *config, flag, cwd=tmp_path)
  _assert_one_line_error(result, fragment)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('flags, fragments', [
    (['--num_processes=2', '--process_id=1'],
     ['--num_processes and --process_id without --coordinator_address']),
    (['--process_id=0'], ['--process_id without --coordinator_address']),
    (['--coordinator_timeout=30'], ['--coordinator_timeout without --coordinator_address']),
    (['--coordinator_address=', '--num_processes=2', '--process_id=1'],
     ['--coordinator_address is empty (an unset shell variable?)']),
    (['--coordinator_address=localhost:1234'],
     ['--coordinator_address=localhost:1234 needs --num_processes and --process_id']),
    (['--coordinator_address=localhost:1234', '--num_processes=2'], ['needs --process_id']),
    (['--coordinator_address=localhost', '--num_processes=2', '--process_id=1'],
     ['--coordinator_address=localhost is not host:port']),
    (['--coordinator_address=:1234', '--num_processes=2', '--process_id=1'], ['is not host:port']),
    (['--coordinator_address=localhost:1234', '--num_processes=2', '--process_id=2'],
     ['--process_id=2 must be from 0 to --num_processes - 1 (1)']),
    (['--coordinator_address=localhost:1234', '--num_processes=0', '--process_id=0'],
     ['--num_processes=0 must be at least 1']),
])
def test_processes_flags_that_need_each_other_are_refused_before_any_work(tmp_path, flags,
                                                                           fragments):
  """Every process given only some of them would train alone, into the same workdir."""
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py', *flags,
                      cwd=tmp_path, timeout=60)
  _assert_one_line_error(result, *fragments)
  assert 'waiting for the coordinator' not in result.stdout
  assert os.listdir(tmp_path) == []


def test_verbosity_shows_the_whole_traceback_for_a_bug_report(tmp_path):
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/quickstart.py',
                      '--config.seed=-1', '--verbosity=1', cwd=tmp_path)
  assert 'Traceback' in result.stderr and 'config_lib.py' in result.stderr
  assert any(l.startswith('error: config.seed=-1') for l in result.stderr.splitlines())


def test_ae_jax_commands_restart_themselves_with_huge_pages(monkeypatch):
  import gc  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from ae_jax import launch  # pylint: disable=g-import-not-at-top
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    pytest.skip('glibc only')
  calls = []
  monkeypatch.setattr(os, 'execv', lambda *args: calls.append(args))
  monkeypatch.setattr(launch, 'pause_gc', lambda: None)
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv('AE_JAX_HUGE_PAGES', raising=False)
  command = [sys.executable, '-m', 'ae_jax.main', '--config=configs/cae.py']
  monkeypatch.setattr(sys, 'orig_argv', command)
  launch.start()
  assert calls == [(sys.executable, command)]
  assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  launch.start()
  assert len(calls) == 1  # once set, never again
  monkeypatch.setenv('GLIBC_TUNABLES', '')
  monkeypatch.setenv('AE_JAX_HUGE_PAGES', '0')
  launch.start()
  assert len(calls) == 1  # switched off
  assert gc.isenabled()


def test_huge_pages_are_added_to_the_users_own_glibc_tunables():
  import platform  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from ae_jax import launch  # pylint: disable=g-import-not-at-top
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    pytest.skip('glibc only')
  environ = launch.huge_pages_environ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  if environ is None:
    pytest.skip('glibc before 2.35')
  assert environ['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


def test_importing_the_package_leaves_the_process_as_it_was():
  check = ('import gc, os, sys; pid = os.getpid(); environ = dict(os.environ); '
           'import ae_jax; assert dict(os.environ) == environ; '
           'import ae_jax.main, ae_jax.evaluate, ae_jax.tsne, ae_jax.study; '
           "assert gc.isenabled() and os.getpid() == pid; print('unchanged')")
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  result = subprocess.run([sys.executable, '-c', check], cwd=ROOT, env=env, capture_output=True,
                          text=True)
  assert result.stdout.strip() == 'unchanged', result.stderr[-2000:]


def test_the_commands_load_scikit_learn_only_when_they_use_it():
  # it takes 1.4 s to import: a mistyped flag of tsne.sh, anomaly.sh or the study need not wait
  check = ('import sys; import ae_jax.tsne, ae_jax.anomaly, ae_jax.study, ae_jax.maps; '
           "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))")
  result = subprocess.run([sys.executable, '-c', check], cwd=ROOT, capture_output=True,
                          text=True)
  assert result.stdout.strip() == '[]', result.stdout + result.stderr[-2000:]


def test_a_command_starts_with_the_garbage_collector_off(tmp_path):
  config = tmp_path / 'gc_config.py'
  config.write_text('import gc\nfrom configs import ae\n\n\ndef get_config():\n'
                    "  print('collector on:', gc.isenabled())\n  return ae.get_config()\n")
  result = run_module('ae_jax.main', f'--config={config}', '--config.seed=-1', cwd=ROOT)
  assert 'collector on: False' in result.stdout, result.stdout + result.stderr
  _assert_one_line_error(result, 'config.seed=-1')
  imported = subprocess.run([sys.executable, '-c', 'import gc, ae_jax; print(gc.isenabled())'],
                            cwd=ROOT, capture_output=True, text=True, check=True)
  assert imported.stdout.strip() == 'True'  # importing the library leaves it alone


def test_training_turns_the_garbage_collector_on_once_the_update_is_compiled(workdir,
                                                                             monkeypatch):
  import gc  # pylint: disable=g-import-not-at-top
  from ae_jax import launch  # pylint: disable=g-import-not-at-top
  from ae_jax import train  # pylint: disable=g-import-not-at-top
  from conftest import small_config  # pylint: disable=g-import-not-at-top
  compiled_with = []
  log = train._log  # pylint: disable=protected-access
  monkeypatch.setattr(train, '_log', lambda message: (
      compiled_with.append(gc.isenabled()) if message.startswith('compiled') else None,
      log(message)))
  launch.pause_gc()  # as a command starts
  try:
    train.train_and_evaluate(small_config('ae', num_train=64), workdir)
    assert compiled_with == [False]
    assert gc.isenabled() and gc.get_freeze_count() > 0  # on for the loop; start-up's frozen
  finally:
    gc.enable()
    gc.unfreeze()


def test_a_python_without_the_dependencies_is_told_to_activate_the_environment(monkeypatch,
                                                                               capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from ae_jax import launch  # pylint: disable=g-import-not-at-top
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'jax' else real(name, *a))
  with pytest.raises(SystemExit):
    launch.check_installed()
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'lacks jax' in err and '. .venv/bin/activate' in err


@pytest.mark.parametrize('where', ['a_file', 'a_file/cache'])
def test_a_compilation_cache_that_cannot_be_written_is_one_warning_and_training_goes_on(
    tmp_path, capsys, where):
  from ae_jax import cli  # pylint: disable=g-import-not-at-top
  (tmp_path / 'a_file').write_text('')
  cli.use_compilation_cache(str(tmp_path / where))
  err = capsys.readouterr().err
  assert err.startswith(f'warning: no compilation cache in {tmp_path / where} (') and (
      err.count('\n') == 1), err
  assert "--compilation_cache=FOLDER, or '' for none" in err


def _fake_run(folder, step=None):
  os.makedirs(os.path.join(folder, 'checkpoints'))
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    f.write('{}')
  if step is not None:
    os.makedirs(os.path.join(folder, 'checkpoints', str(step)))


def test_the_run_that_trained_last_is_one_with_a_checkpoint(tmp_path):
  from ae_jax import cli  # pylint: disable=g-import-not-at-top
  _fake_run(tmp_path / 'runs' / 'trained', step=4)
  time.sleep(0.05)
  _fake_run(tmp_path / 'runs' / 'stopped_before_its_first_checkpoint')
  assert cli.latest_run(str(tmp_path / 'runs')) == str(tmp_path / 'runs' / 'trained')


def test_the_run_that_trained_last_is_one_resumed_after_a_newer_run_started(tmp_path):
  runs = tmp_path / 'runs'
  _fake_run(runs / 'resumed', step=4)
  time.sleep(0.05)
  _fake_run(runs / 'newer', step=4)
  time.sleep(0.05)
  os.makedirs(runs / 'resumed' / 'checkpoints' / '8')  # trained on: its config.json is older
  from ae_jax import cli  # pylint: disable=g-import-not-at-top
  assert cli.latest_run(str(runs)) == str(runs / 'resumed')


def test_a_file_given_as_a_run_is_named_a_file_with_the_run_that_holds_it(tmp_path):
  from ae_jax import UserError  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top
  _fake_run(tmp_path / 'run')
  config_json = str(tmp_path / 'run' / 'config.json')
  with pytest.raises(UserError, match=f"^{config_json} is a file, not a run's folder: give the "
                     f'folder that holds it, {tmp_path}/run$'):
    cli.run_workdir(config_json)
  (tmp_path / 'notes.txt').write_text('')
  with pytest.raises(UserError, match="notes.txt is a file, not a run's folder: give the "
                     '--workdir of a training run'):
    cli.run_workdir(str(tmp_path / 'notes.txt'))


@pytest.mark.parametrize('script', ['eval.sh', 'tsne.sh', 'generate.sh'])
def test_help_names_no_run(tmp_path, script):
  _fake_run(tmp_path / 'runs' / 'trained', step=4)
  result = run_script(script, '--help', cwd=tmp_path)
  assert 'error' not in result.stderr, result.stderr  # (absl's --help exits with 1)
  assert 'the run under runs/ that trained last' not in result.stdout.splitlines()[0]
  assert '--checkpoint' in result.stdout
