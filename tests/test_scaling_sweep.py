"""The scaling sweep's design and its one-line refusals (default suite), and the whole pipeline in
miniature: long runs, cooldowns branched from their checkpoints, the prediction written before
the held-out arm trains, and the report against the runs' own JSON (slow)."""

import json
import os

import pytest

from experiments.scaling import chinchilla
from research import config as config_lib, sweep as sweep_lib
from research.errors import ConfigError
from tests.conftest import run_cli


def arms(preset):
  module, arg = sweep_lib.load_module(f'experiments/scaling/chinchilla.py:{preset}')
  return sweep_lib.arms(module, arg), module.get_config(arg)


def test_cpu_sweep_design():
  got, base = arms('cpu')
  names = [a.name for a in got]
  s = chinchilla.SWEEPS['cpu']
  assert names[:len(s['sizes'])] == [f'long-L{l}' for l in s['sizes']]
  assert names[-1] == f'L{s["held_out"]}-{s["long_steps"]}'  # held out, trained last
  tokens = chinchilla.TOKENS_PER_STEP
  for arm in got:
    c = sweep_lib.arm_config(base, arm, 'runs/scaling')
    assert c.train.steps * tokens <= chinchilla.CORPUS_TOKENS  # no token repeated
    if c.train.init_from:
      parent, step = c.train.init_from.rsplit(':', 1)
      parent_arm = next(a for a in got if a.name == os.path.basename(parent))
      assert parent_arm.overrides['train.schedule'] == 'constant'
      assert int(step) % s['checkpoint_every'] == 0
      # The branch point is at or before the stable phase's end: the rates agree up to it.
      assert int(step) <= c.train.steps - round(chinchilla.COOLDOWN * c.train.steps)
  # Every IsoFLOP budget has at least 3 sizes, each sized to C / (6 N).
  for budget in s['budgets']:
    sized = [a for a in got if a.overrides.get('train.steps') == chinchilla.isoflop_steps(
        budget, a.overrides['model.num_layers']) and not a.name.startswith(('long', 'cosine'))]
    assert len({a.overrides['model.num_layers'] for a in sized}) >= 3
  nonemb = [chinchilla.rung(l).non_embedding_params for l in s['sizes']]
  assert max(nonemb) / min(nonemb) > 100  # two orders of magnitude of parameters
  cs = [6 * chinchilla.rung(a.overrides['model.num_layers']).total_params
        * a.overrides['train.steps'] * tokens for a in got if not a.name.startswith('long')]
  assert max(cs) / min(cs) > 100  # and of compute


def test_bad_sweeps_are_one_line_errors(monkeypatch):
  add = lambda **kw: None  # noqa: E731
  small = dict(chinchilla.SWEEPS['cpu'], budgets=(1e8,))
  monkeypatch.setitem(chinchilla.SWEEPS, 'cpu', small)
  with pytest.raises(ConfigError, match=r'budget 1e\+08 has 0 sizes.*too small or too large'):
    chinchilla.sweep(add, 'cpu')
  monkeypatch.setitem(chinchilla.SWEEPS, 'cpu', dict(small, budgets=(1e11,), long_steps=8192))
  with pytest.raises(ConfigError, match='more than the 3,928,924 of the train split'):
    chinchilla.sweep(add, 'cpu')
  with pytest.raises(ConfigError, match='is for launch.compile'):
    chinchilla.sweep(add, 'tpu24')
  from research.scaling import ladder
  with pytest.raises(ConfigError, match='d_model below one head'):
    ladder.rung(1, vocab_size=257, seq_len=128, aspect_ratio=4, head_dim=8)


def test_a_run_that_would_repeat_the_corpus_is_refused(tmp_path, cache_dir):
  w = str(tmp_path / 'w')
  r = run_cli('launch.train', '--config=experiments/scaling/chinchilla.py:cpu', f'--workdir={w}',
              f'--config.data.cache_dir={cache_dir}', '--config.train.steps=4000',
              '--config.train.batch_size=8')
  assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr
  assert 'reads the train split 1.04 times' in r.stderr and 'data.max_epochs=1' in r.stderr
  assert not os.path.exists(w)


def test_init_from_names_its_problems():
  c = chinchilla.get_config('cpu')
  c.train.init_from = 'nowhere'
  config_lib.validate(c)  # checked when the run starts, where the checkpoint must exist
  from research.train import checkpoint
  with pytest.raises(ConfigError, match="expected '<workdir>:<step>'"):
    checkpoint.restore_branch('nowhere', None, seed=0)
  with pytest.raises(ConfigError, match='no checkpoint at step 3 in /no/such'):
    checkpoint.restore_branch('/no/such:3', None, seed=0)


@pytest.mark.slow
def test_smoke_sweep_branches_predicts_and_reports(tmp_path, cache_dir):
  workdir = str(tmp_path / 'scaling')
  r = run_cli('launch.sweep', '--config=experiments/scaling/chinchilla.py:smoke',
              f'--workdir={workdir}', '--progress=false', f'--config.data.cache_dir={cache_dir}',
              timeout=1800)
  assert r.returncode == 0, r.stderr
  spec = json.load(open(os.path.join(workdir, 'sweep.json')))
  held = f'L{chinchilla.SWEEPS["smoke"]["held_out"]}-{chinchilla.SWEEPS["smoke"]["long_steps"]}'
  assert spec['report']['held_out'] == held.split('-')[0]
  prediction = json.load(open(os.path.join(workdir, 'prediction.json')))
  assert prediction['arm'] == held and held not in prediction['fitted_on']
  # Written before the held-out arm trained: that arm's files are all newer.
  assert os.path.getmtime(os.path.join(workdir, 'prediction.json')) < os.path.getmtime(
      os.path.join(workdir, held, 'config.json'))
  # A branch logs only its own steps, continuing the long run's at the branch point.
  for name in os.listdir(workdir):
    cfg_path = os.path.join(workdir, name, 'config.json')
    if not os.path.exists(cfg_path):
      continue
    c = json.load(open(cfg_path))
    summary = json.load(open(os.path.join(workdir, name, 'summary.json')))
    assert summary['epochs'] <= 1.0
    if c['train']['init_from']:
      at = int(c['train']['init_from'].rsplit(':', 1)[1])
      rows = [json.loads(l) for l in open(os.path.join(workdir, name, 'metrics.jsonl'))]
      assert min(row['step'] for row in rows) > at
  r = run_cli('launch.report', f'--workdir={workdir}')
  assert r.returncode == 0, r.stderr
  md = open(os.path.join(workdir, 'report.md')).read()
  # The runs table's losses are the runs' own final held-out losses.
  for line in md.split('## Runs')[1].split('##')[0].splitlines()[3:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    if len(cells) < 10 or set(cells[0]) <= set('-:'):  # not a run's row: the rule under the head
      continue
    loss = json.load(open(os.path.join(workdir, cells[0], 'summary.json')))['eval']['loss']
    assert cells[-1] == f'{loss:.4g}', cells
  measured = json.load(open(os.path.join(workdir, held, 'summary.json')))['eval']['loss']
  assert f'measured {measured:.4f}' in md
  assert os.path.getsize(os.path.join(workdir, 'scaling.png')) > 10_000
