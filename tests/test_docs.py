"""The manual against the code: README.md and docs/*.md cannot silently rot.

- docs/configuration.md has one row per config key, with the default the code has;
- every command shown (fenced blocks, and inline `python -m launch.X ...` spans) names a launch
  module that exists, flags that module defines, config keys that exist, config files that load,
  and Makefile targets that exist;
- what the README copies from elsewhere (its worked example, its result tables) matches the
  source, and every relative link points to a file and heading that exist.
Nothing here imports jax or starts a subprocess.
"""

import ast
import functools
import glob
import importlib.util
import os
import re
import shlex

import pytest

from research import config as config_lib
from tests.conftest import ROOT

PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))

# absl's own flags, accepted by every command.
ABSL_FLAGS = {'help', 'helpfull', 'helpshort', 'helpxml', 'flagfile', 'undefok', 'verbosity', 'v',
              'logtostderr', 'alsologtostderr', 'log_dir', 'stderrthreshold', 'showprefixforinfo',
              'only_check_args', 'pdb', 'pdb_post_mortem', 'run_with_pdb', 'run_with_profiling',
              'profile_file', 'use_cprofile_for_profiling', 'logger_levels'}
# Launchers whose arguments after `--` are launch.train's.
PASS_TO_TRAIN = {'slurm', 'tpu'}


def _read(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return f.read()


# ----- 1. The configuration reference


def _config_rows():
  """{key: (default cell, line number)} from the tables headed | key | default | ... |."""
  rows, duplicates, in_table = {}, [], False
  for n, line in enumerate(_read('docs/configuration.md').splitlines(), start=1):
    if re.match(r'^\|\s*key\s*\|\s*default\s*\|', line):
      in_table = True
      continue
    if not line.startswith('|'):
      in_table = False
      continue
    if not in_table or re.match(r'^\|[\s:|-]+\|$', line):
      continue
    m = re.match(r'^\|\s*`([^`]+)`\s*\|\s*`([^`]*)`\s*\|', line)
    assert m, f'docs/configuration.md:{n}: a key row must start | `key` | `default` |: {line}'
    if m.group(1) in rows:
      duplicates.append(m.group(1))
    rows[m.group(1)] = (m.group(2), n)
  assert not duplicates, f'docs/configuration.md documents these keys twice: {duplicates}'
  return rows


def test_configuration_reference_matches_the_code():
  code = config_lib.flat(config_lib.default_config())
  documented = _config_rows()
  problems = []
  for key, value in code.items():
    want = repr(value)
    if key not in documented:
      problems.append(f'config key {key!r} (default {want}) has no row in docs/configuration.md; '
                      f'add: | `{key}` | `{want}` | <values> | <meaning> |')
    elif documented[key][0] != want:
      problems.append(f'docs/configuration.md:{documented[key][1]}: {key} is documented with '
                      f'default `{documented[key][0]}`, the code has `{want}`')
  for key, (_, n) in documented.items():
    if key not in code:
      problems.append(f'docs/configuration.md:{n}: {key!r} is not a config key '
                      '(research/config.py); remove or rename the row')
  assert not problems, '\n'.join(problems)


# ----- 2. Commands


def _blocks(text):
  """(line number, line) of every line inside a fenced code block."""
  out, fence = [], None
  for n, line in enumerate(text.splitlines(), start=1):
    m = re.match(r'^\s*(```+|~~~+)', line)
    if m and fence is None:
      fence = m.group(1)
    elif m and fence is not None and line.strip().startswith(fence):
      fence = None
    elif fence is not None:
      out.append((n, line))
  return out


def _joined(lines):
  """Lines with trailing-backslash continuations joined, each with its first line number."""
  out, pending, start = [], '', None
  for n, line in lines:
    if start is None:
      start = n
    if line.endswith('\\'):
      pending += line[:-1] + ' '
      continue
    out.append((start, pending + line))
    pending, start = '', None
  if pending:
    out.append((start, pending))
  return out


def _inline_commands(text):
  """(line number, span) of inline code spans outside fenced blocks that are commands."""
  fenced = {n for n, _ in _blocks(text)}
  out = []
  for n, line in enumerate(text.splitlines(), start=1):
    if n in fenced or line.lstrip().startswith('```'):
      continue
    for span in re.findall(r'`([^`]+)`', line):
      if re.match(r'^(\S*python3?\s+-m\s+launch\.|make\s)', span):
        out.append((n, span))
  return out


def _commands():
  """(where, text) of every line that may hold a command, in every page. A `$ command` whose
  output shown below it starts with `error: ` demonstrates a mistake and is left out."""
  out = []
  for page in PAGES:
    text = _read(page)
    lines = _joined(_blocks(text))
    for (n, line), (_, after) in zip(lines, lines[1:] + [(0, '')]):
      if not (line.startswith('$ ') and after.startswith('error: ')):
        out.append((f'{page}:{n}', line))
    out += [(f'{page}:{n}', span) for n, span in _inline_commands(text)]
  return out


@functools.lru_cache(maxsize=None)
def _module_flags(module):
  """{flag name: is_bool} that launch/<module>.py defines, and the launch modules it imports."""
  path = os.path.join(ROOT, 'launch', f'{module}.py')
  tree = ast.parse(_read(path))
  found = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      name = getattr(node.func, 'attr', getattr(node.func, 'id', ''))
      if (name.startswith('DEFINE_') and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)):
        found[node.args[0].value] = name in ('DEFINE_bool', 'DEFINE_boolean')
    if isinstance(node, ast.ImportFrom) and node.module == 'launch':
      for alias in node.names:
        if os.path.isfile(os.path.join(ROOT, 'launch', f'{alias.name}.py')):
          found.update(_module_flags(alias.name))
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('launch.'):
      found.update(_module_flags(node.module.split('.', 1)[1]))
  return found


@functools.lru_cache(maxsize=None)
def _load_experiment(path, arg):
  """The validated config of an experiment file's get_config(arg), or the error it raised."""
  spec = importlib.util.spec_from_file_location('_docs_experiment', os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config_lib.validate(config)
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  return None


def _is_placeholder(token):
  return '<' in token and '>' in token


def _check_launch(module, args, where, problems):
  """Checks `python -m launch.<module> <args>`; args may hold `--` and a nested command."""
  if not os.path.isfile(os.path.join(ROOT, 'launch', f'{module}.py')):
    problems.append(f'{where}: launch.{module}: there is no launch/{module}.py')
    return
  split = args.index('--') if '--' in args else len(args)
  ours, rest = args[:split], args[split + 1:]
  known = _module_flags(module)
  i = 0
  while i < len(ours):
    token = ours[i]
    i += 1
    if not re.match(r'--[A-Za-z]', token) or _is_placeholder(token):
      continue
    name, has_value, value = token[2:].partition('=')
    if name.startswith('config.'):
      key = name[len('config.'):]
      if 'config' not in known:
        problems.append(f'{where}: launch.{module} takes no --config, so not --{name}')
      elif key not in config_lib.flat(config_lib.default_config()):
        problems.append(f'{where}: --config.{key}: no such config key (research/config.py)')
      continue
    if name == 'config' and 'config' in known:
      if not has_value and i < len(ours) and not ours[i].startswith('-'):
        value, i = ours[i], i + 1
      path, _, arg = value.partition(':')
      if not os.path.isfile(os.path.join(ROOT, path)):
        problems.append(f'{where}: --config={value}: no such file {path}')
      elif not _is_placeholder(arg):
        error = _load_experiment(path, arg or None)
        if error:
          problems.append(f'{where}: --config={value}: get_config fails: {error}')
      continue
    if name in known or name in ABSL_FLAGS:
      continue
    if name.startswith('no') and known.get(name[2:]):
      continue
    problems.append(f'{where}: launch.{module} has no flag --{name} (launch/{module}.py defines '
                    f'{", ".join(sorted("--" + f for f in known))})')
  if not rest:
    return
  if _find_launch(rest) is not None:
    _check_tokens(rest, where, problems)
  elif module in PASS_TO_TRAIN:
    _check_launch('train', rest, where, problems)
  else:
    problems.append(f'{where}: launch.{module} passes nothing on after --: {shlex.join(rest)}')


def _find_launch(tokens):
  """Index of the first `python -m launch.X` in tokens, else None."""
  for i in range(len(tokens) - 2):
    if (re.fullmatch(r'\S*python3?', tokens[i]) and tokens[i + 1] == '-m'
        and re.fullmatch(r'launch\.[A-Za-z_]\w*', tokens[i + 2])):
      return i
  return None


def _check_tokens(tokens, where, problems):
  start = _find_launch(tokens)
  if start is not None:
    module = tokens[start + 2][len('launch.'):]
    _check_launch(module, tokens[start + 3:], where, problems)


@functools.lru_cache(maxsize=None)
def _make_targets():
  targets = set()
  for line in _read('Makefile').splitlines():
    m = re.match(r'^([A-Za-z0-9_./-]+(?:\s+[A-Za-z0-9_./-]+)*)\s*:(?!=)', line)
    if m:
      targets.update(m.group(1).split())
  return targets


def _check_line(where, line, problems):
  line = line.strip()
  if line.startswith('$ '):
    line = line[2:]
  if 'python' not in line and not line.startswith('make ') and 'pip install' not in line:
    return
  line = re.sub(r'<[^<>\s][^<>]*>', '<>', line)  # a placeholder such as <arguments after -->
  try:
    tokens = shlex.split(line, comments=True)
  except ValueError as e:
    if 'python -m launch.' in line or line.startswith('make '):
      problems.append(f'{where}: cannot split the command ({e}): {line}')
    return
  # Environment assignments before the command, as in XLA_FLAGS=... python -m ...
  while tokens and re.fullmatch(r'[A-Z_][A-Z0-9_]*=\S*', tokens[0]):
    tokens = tokens[1:]
  if tokens[:1] == ['make']:
    for target in tokens[1:]:
      if not target.startswith('-') and '=' not in target and target not in _make_targets():
        problems.append(f'{where}: make {target}: no such target in the Makefile')
    return
  if tokens[:2] == ['pip', 'install']:
    for flag, value in zip(tokens, tokens[1:]):
      if flag == '-r' and not os.path.isfile(os.path.join(ROOT, value)):
        problems.append(f'{where}: pip install -r {value}: no such file')
    return
  _check_tokens(tokens, where, problems)


def _command_problems(commands):
  problems = []
  for where, line in commands:
    _check_line(where, line, problems)
  return problems


def test_every_documented_command_names_real_modules_flags_and_keys():
  commands = _commands()
  checked = [c for c in commands if 'python -m launch.' in c[1] or c[1].lstrip('$ ').startswith(
      'make ')]
  assert len(checked) > 40, 'the command parser found almost nothing to check'
  problems = _command_problems(commands)
  assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('line, expected', [
    ('python -m launch.train --config=experiments/quickstart.py --bogus_flag=1', '--bogus_flag'),
    ('python -m launch.train --config=experiments/quickstart.py --config.model.bogus=1',
     'config.model.bogus'),
    ('python -m launch.nope --workdir=x', 'launch/nope.py'),
    ('python -m launch.train --config=experiments/nope.py', 'no such file'),
    ('python -m launch.train --config=experiments/quickstart.py:nopreset', 'get_config fails'),
    ('$ python -m launch.local_cluster --num_processes=2 -- python -m launch.train --bogus',
     '--bogus'),
    ('python -m launch.slurm --nodes=2 --dry_run -- --config=experiments/quickstart.py --nope',
     '--nope'),
    ('python -m launch.tpu run --name=lm -- --workdir=x --noprogress --nodistributed --bad',
     '--bad'),
    ('make bogus', 'make bogus'),
])
def test_the_command_check_catches_mistakes(line, expected):
  problems = _command_problems([('here', line)])
  assert len(problems) == 1 and expected in problems[0], problems


def test_the_command_check_joins_continued_lines():
  first = '$ python -m launch.local_cluster --num_processes=2 -- python -m launch.train \\'
  lines = _joined([(1, first),
                   (2, '    --config=experiments/quickstart.py \\'),
                   (3, '    --bogus=1'),
                   (4, 'make test')])
  assert [(n, line.split()) for n, line in lines] == [
      (1, ['$', 'python', '-m', 'launch.local_cluster', '--num_processes=2', '--', 'python', '-m',
           'launch.train', '--config=experiments/quickstart.py', '--bogus=1']),
      (4, ['make', 'test'])]
  problems = _command_problems([('here', line) for _, line in lines])
  assert len(problems) == 1 and '--bogus' in problems[0], problems


# ----- 3. Copies and links


def test_readme_copies_match_their_sources():
  readme = _read('README.md')
  example = 'experiments/positional/rope_vs_alibi.py'
  assert f'```python\n{_read(example)}```' in readme, (
      f'README.md\'s worked example is no longer the whole of {example}: copy the file into it')
  positional = _read('docs/positional.md')
  for table in re.findall(r'(?m)^(?:\|.*\|\n)+', readme):
    if table.startswith('| scheme     |'):  # the measured ablation tables
      assert table in positional, f'README.md shows a table docs/positional.md lacks:\n{table}'


def _anchors(text):
  out = set()
  fenced = {n for n, _ in _blocks(text)}
  for n, line in enumerate(text.splitlines(), start=1):
    m = re.match(r'^#+\s+(.*)', line)
    if m and n not in fenced:
      slug = re.sub(r'[^\w\- ]', '', m.group(1).strip().lower()).replace(' ', '-')
      out.add(slug)
  return out


def test_relative_links_resolve():
  problems = []
  for page in PAGES:
    text = _read(page)
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
      if re.match(r'^[a-z]+://', target):
        continue
      path, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
      if not os.path.exists(os.path.join(ROOT, resolved)):
        problems.append(f'{page}: link {target}: no such file {resolved}')
      elif anchor and resolved.endswith('.md') and anchor not in _anchors(_read(resolved)):
        problems.append(f'{page}: link {target}: no heading #{anchor} in {resolved}')
  assert not problems, '\n'.join(problems)


def test_paths_the_manual_names_exist():
  """Every `research/...`, `launch/...`, `experiments/...`, `tests/...` or `docs/...` path in code
  spans: a moved or renamed file fails here, naming the page to update."""
  problems = []
  for page in PAGES:
    for n, line in enumerate(_read(page).splitlines(), start=1):
      for span in re.findall(r'`([^`\s]+)`', line):
        path = span.split(':', 1)[0]
        if (re.match(r'^(research|launch|experiments|tests|docs)/[\w./-]*$', path)
            and not os.path.exists(os.path.join(ROOT, path))):
          problems.append(f'{page}:{n}: `{span}`: no such file or directory {path}')
  assert not problems, '\n'.join(problems)
