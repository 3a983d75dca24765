"""launch.sweep then launch.report on a two-arm sweep: arms run once, a re-run skips them."""

import json
import os

from tests.conftest import ROOT, TINY, run_cli

CONFIG = '''
from research.config import default_config

EVALUATE = dict(lengths='1x,2x', stride=0.5, max_tokens=512)


def get_config(arg=None):
  c = default_config()
  c.train.steps = 6
  c.train.warmup_steps = 1
  c.sample.num_samples = 0
  return c


def sweep(add, arg):
  for scheme in ('rope', 'alibi'):
    add(name=scheme + '-s0', group=scheme, **{'model.positional': scheme, 'seed': 0})
'''


def test_sweep_runs_arms_once_and_reports(tmp_path, cache_dir):
  config = tmp_path / 'tiny_sweep.py'
  config.write_text(CONFIG)
  workdir = str(tmp_path / 'sweep')
  args = [f'--config={config}', f'--workdir={workdir}', '--progress=false',
          f'--config.data.cache_dir={cache_dir}', *TINY]
  r = run_cli('launch.sweep', *args)
  assert r.returncode == 0, r.stderr
  with open(os.path.join(workdir, 'sweep.json')) as f:
    assert [a['name'] for a in json.load(f)['arms']] == ['rope-s0', 'alibi-s0']
  for arm in ('rope-s0', 'alibi-s0'):
    with open(os.path.join(workdir, arm, 'config.json')) as f:
      assert json.load(f)['model']['positional'] == arm.split('-')[0]
    with open(os.path.join(workdir, arm, 'eval_lengths.json')) as f:
      assert list(json.load(f)['lengths']) == ['32', '64']
  r = run_cli('launch.sweep', *args)
  assert r.returncode == 0, r.stderr
  assert r.stderr.count('already holds this finished run') == 2
  r = run_cli('launch.report', f'--workdir={os.path.relpath(workdir, ROOT)}')
  assert r.returncode == 0, r.stderr
  assert '| rope ' in r.stdout and '| alibi ' in r.stdout
  assert os.path.exists(os.path.join(workdir, 'report.md'))
