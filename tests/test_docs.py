"""The guide keeps its promises: every command in README.md and docs/ that needs no download
runs as written, page by page, from a folder laid out like the repository."""

import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from conftest import environment

# The guide's order, so that a page's commands find the runs the pages before it made.
GUIDE = ['getting_started', 'data', 'training', 'evaluation', 'latent_maps', 'using', 'studies',
         'robustness']
PAGES = ['README.md'] + sorted(
    (os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))),
    key=lambda p: (GUIDE + [p]).index(os.path.basename(p)[:-3]) if p[5:-3] in GUIDE else 99)
COMMAND = re.compile(r'^(XLA_FLAGS=\S+ )?(python -m ae_jax\.|scripts/\w+\.sh)')


def commands(page: str) -> list[str]:
  """The shell commands of a page's ```sh blocks, continuation lines joined, comments cut."""
  with open(os.path.join(ROOT, page)) as f:
    blocks = re.findall(r'```sh\n(.*?)```', f.read(), re.S)
  found = []
  for block in blocks:
    for line in block.replace('\\\n', ' ').splitlines():
      line = re.sub(r'\s+#.*$', '', line).strip()
      if COMMAND.match(line):
        found.append(re.sub(r'\s+', ' ', line))
  return found


def offline_python(pages) -> list[tuple[str, str]]:
  """The ```python blocks that need no download, those on the quickstart's run, each with the
  page's text after it (where the page says what it prints)."""
  found = []
  for page in pages:
    with open(os.path.join(ROOT, page)) as f:
      found += [(block, after) for block, after in
                re.findall(r'```python\n(.*?)```\n(.*?)(?=```|$)', f.read(), re.S)
                if 'runs/quickstart' in block]
  return found


def offline_commands(pages) -> list[str]:
  """The commands on the bundled digits, and the scripts on runs they trained: a script without
  a workdir reads the run that trained last, so it runs where that was such a run."""
  chosen, last_offline, quickstart = [], False, False
  for page in pages:
    for command in commands(page):
      configs = re.findall(r'--config=(\S+)', command)
      if '$' in command:
        offline = False  # needs files the user brings
      elif configs:
        offline = configs == ['configs/quickstart.py']
      else:
        words = command.split()
        offline = (quickstart and 'runs/quickstart' in command) or (
            last_offline and (len(words) == 1 or words[1].startswith('-')))
      if 'ae_jax.main' in command:
        last_offline = offline
        quickstart = quickstart or (offline and '--workdir' not in command)
      if offline and command not in chosen:
        chosen.append(command)
  return chosen


def test_every_page_links_the_others_and_every_link_leads_somewhere():
  assert offline_commands(['docs/getting_started.md'])[:3] == [
      'python -m ae_jax.main --config=configs/quickstart.py', 'scripts/eval.sh', 'scripts/tsne.sh']
  names = [os.path.basename(p) for p in PAGES[1:]]
  for page in PAGES:
    with open(os.path.join(ROOT, page)) as f:
      text = f.read()
    for name in names:
      if page != PAGES[0] and name != os.path.basename(page):
        assert f']({name})' in text, (page, name)
    for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', text):
      assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)), (page, target)


def test_the_readme_map_names_every_module_script_and_page():
  with open(os.path.join(ROOT, 'README.md')) as f:
    layout = f.read().split('## How the code is organised')[1].split('\n## ')[0]
  # modules of ae_jax/ and models/ by name; input_pipeline/ maps its own modules in its docstring
  modules = {os.path.basename(p) for folder in ('ae_jax', 'ae_jax/models')
             for p in glob.glob(os.path.join(ROOT, folder, '*.py'))} - {'__init__.py'}
  named = set(re.findall(r'\b(\w+\.py)\b', layout))
  assert modules <= named, sorted(modules - named)
  for package in glob.glob(os.path.join(ROOT, 'ae_jax', '*', '__init__.py')):
    assert os.path.basename(os.path.dirname(package)) + '/' in layout, package
  for script in glob.glob(os.path.join(ROOT, 'scripts', '*.sh')):
    assert re.search(rf'\b{os.path.basename(script)[:-3]}\b', layout), script
  guide = layout.split('docs/')[1]
  for page in GUIDE:
    assert page.split('_')[0] in guide, page


def test_ci_runs_the_readmes_install_and_test_commands():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  tests = re.search(r'## Run the tests\n+```sh\n(.*?)\n```', readme, re.S).group(1)
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = f.read().splitlines()
  assert ci[-1] == tests
  assert ".venv/bin/pip install -e '.[test]'" in ci and "pip install -e '.[test]'" in readme


@pytest.mark.slow
def test_offline_commands_run_as_written(tmp_path):
  for name in ('configs', 'scripts'):
    os.symlink(os.path.join(ROOT, name), tmp_path / name)
  env = {**environment(1, None), 'XLA_FLAGS': ''}
  for command in offline_commands(PAGES[1:] + PAGES[:1]):
    result = subprocess.run(['bash', '-c', command], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (command, result.stderr[-2000:])
    assert 'error:' not in result.stderr, (command, result.stderr[-2000:])
  blocks = offline_python(PAGES)
  assert blocks  # using.md's From Python
  for block, after in blocks:
    result = subprocess.run([sys.executable, '-c', block], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (block, result.stderr[-2000:])
    assert f'prints `{result.stdout.strip()}`' in after, (result.stdout, after[:200])
