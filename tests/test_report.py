"""launch.report on a made-up sweep directory: table values, missing arms, plots, errors."""

import json
import math
import os

import pytest

from experiments.positional import extrapolation as experiment
from experiments.positional import lost_in_middle
from research import report
from research.report import common, extrapolation
from tests.conftest import run_cli

TRAIN_LEN = 64
LENGTHS = (64, 96, 128)
# arm -> perplexity at each of LENGTHS. alibi-s1 has trained but is not evaluated yet.
PPL = {'rope-s0': (10.0, 20.0, 40.0), 'rope-s1': (12.0, 24.0, 44.0),
       'alibi-s0': (11.0, 11.5, 12.0), 'alibi-s1': None}
# Train rows' tokens/s; the first of each is the warm-up row the report must leave out.
TPS = {'rope-s0': (1000.0, 2000.0, 4000.0), 'rope-s1': (500.0, 3000.0, 5000.0),
       'alibi-s0': (100.0, 900.0, 1100.0), 'alibi-s1': (100.0, 900.0, 1100.0)}


def _write(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f)


def _eval_entry(ppl, length, sliding):
  loss = math.log(ppl)
  e = {'loss': loss, 'perplexity': ppl, 'bits_per_byte': loss / math.log(2) / 4,
       'tokens': 1024, 'windows': 1024 // length}
  if not sliding:
    # Rising past the training length, as for a scheme that does not extrapolate.
    e['per_position_loss'] = [loss + 0.01 * max(0, i - TRAIN_LEN) for i in range(length)]
  else:
    e['stride'] = length // 2
  return e


def make_sweep(root, *, evaluated=True):
  """A sweep directory as launch.sweep + launch.train + launch.evaluate leave it."""
  os.makedirs(root, exist_ok=True)
  arms = [{'name': name, 'group': name.split('-')[0],
           'overrides': {'model.positional': name.split('-')[0], 'seed': int(name[-1])}} for name in PPL]
  _write(os.path.join(root, 'sweep.json'), {'config': 'experiments/positional.py', 'arms': arms,
                                            'report': experiment.REPORT})
  for arm in arms:
    d = os.path.join(root, arm['name'])
    os.makedirs(d)
    _write(os.path.join(d, 'config.json'), {'data': {'seq_len': TRAIN_LEN},
                                            'model': {'positional': arm['group']}, 'seed': arm['overrides']['seed']})
    _write(os.path.join(d, 'summary.json'), {'step': 100, 'num_params': 1_234_567, 'wall_seconds': 9.0,
                                             'eval': {'loss': 2.0, 'perplexity': 7.39, 'bits_per_byte': 3.0}})
    with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
      for i, tps in enumerate(TPS[arm['name']]):
        f.write(json.dumps({'step': 10 * (i + 1), 'split': 'train', 'loss': 3.0, 'tokens_per_sec': tps}) + '\n')
      f.write(json.dumps({'step': 100, 'split': 'eval', 'loss': 2.0, 'perplexity': 7.39}) + '\n')
    ppl = PPL[arm['name']]
    if evaluated and ppl:
      _write(os.path.join(d, 'eval_lengths.json'), {
          'step': 100, 'train_length': TRAIN_LEN, 'max_tokens': 1024,
          'lengths': {str(n): {'non_overlapping': _eval_entry(p, n, False), 'sliding': _eval_entry(p * 0.9, n, True)}
                      for n, p in zip(LENGTHS, ppl)}})
  return str(root)


def _row(table, scheme):
  return next([c.strip() for c in line.strip('|').split('|')] for line in table.splitlines()
              if line.startswith(f'| {scheme} '))


def test_report_cli_writes_tables_and_plots(tmp_path):
  workdir = make_sweep(tmp_path / 'sweep')
  r = run_cli('launch.report', f'--workdir={workdir}')
  assert r.returncode == 0, r.stderr
  assert f'{workdir}/report.md' in r.stdout and '| rope ' in r.stdout
  with open(os.path.join(workdir, 'report.md')) as f:
    md = f.read()
  assert md.startswith('# ') and 'experiments/positional.py' in md and 'length 64' in md

  table1 = md.split('## Table 1')[1].split('## Table 2')[0]
  header = [c.strip() for c in table1.strip().splitlines()[2].strip('|').split('|')]
  assert header == ['scheme', '1x (64)', '1.5x (96)', '2x (128)', 'train tokens/s', 'params']
  # rope: 10 and 12 -> mean 11, sample std sqrt(2); alibi has one evaluated seed: no std.
  # Bold: within two standard deviations of the column's best (rope ties alibi only at 1x).
  assert _row(table1, 'rope') == ['rope', '**11.00 ± 1.41**', '22.00 ± 2.83', '42.00 ± 2.83',
                                  '3,500', '1.23M']
  assert _row(table1, 'alibi') == ['alibi', '**11.00**', '**11.50**', '**12.00**', '1,000', '1.23M']
  assert 'within two standard deviations' in md.split('## Table 1')[0]
  # Fixed scheme order: rope before alibi, whatever sweep.json's order.
  assert table1.index('| rope ') < table1.index('| alibi ')
  assert 'alibi-s1: not evaluated (no eval_lengths.json)' in table1

  table2 = md.split('## Table 2')[1].split('## Table 3')[0]
  assert _row(table2, 'rope')[1] == '**9.90 ± 1.27**'  # 0.9 x (10, 12)
  table3 = md.split('## Table 3')[1].split('## Table 4')[0]
  assert len(_row(table3, 'rope')) == 3  # scheme, 1x, the longest length
  table4 = md.split('## Table 4')[1].split('## Published')[0]
  assert _row(table4, 'rope')[1:] == ['1.00 ± 0.00', '2.00 ± 0.00', '3.83 ± 0.24',
                                      'degrades from 1.5x']
  published = md.split('## Published')[1]
  assert '453.32 (23.44x)' in published and 'OOM' in published

  for name in ('extrapolation.png', 'per_position.png'):
    with open(os.path.join(workdir, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(os.path.join(workdir, name)) > 10_000


def test_report_is_deterministic_and_skips_stale_evals(tmp_path):
  workdir = make_sweep(tmp_path / 'sweep')
  def written(out):
    return [open(p, 'rb').read() for p in [out['report'], *out['plots']]]

  first = written(report.write_report(workdir))
  assert written(report.write_report(workdir)) == first

  # An evaluation of an older checkpoint than the run's last is not that run's result.
  path = os.path.join(workdir, 'rope-s1', 'summary.json')
  with open(path) as f:
    summary = json.load(f)
  _write(path, dict(summary, step=200))
  sweep = extrapolation.load_sweep(workdir)
  assert [a.name for a in sweep.arms] == ['rope-s0', 'alibi-s0']
  assert dict(sweep.missing)['rope-s1'] == 'eval_lengths.json is from step 100, the run ended at step 200'


def test_near_best_pools_the_two_groups_compared():
  stats = {'a': (10.0, 1.0), 'b': (12.5, 1.0), 'c': (13.0, 1.0), 'd': (11.0, None),
           'e': (None, None), 'wild': (30.0, 20.0)}
  # b: 2.5 > 2 * 1; d (one seed) against a's std alone: 1 <= 2 * sqrt(1 / 2); wild: 20 <=
  # 2 * sqrt((400 + 1) / 2) = 28.3, and its deviation widens no one else's margin (b, c out).
  assert common.near_best(stats, higher=False) == {'a', 'd', 'wild'}
  assert common.near_best({'a': (0.9, 0.05), 'b': (0.75, 0.05), 'c': (0.85, 0.01)},
                          higher=True) == {'a', 'c'}
  assert common.near_best({}, higher=True) == set()


@pytest.mark.parametrize('ratios, expected', [
    ({64: [1, 1, 1], 128: [1.01, 1.0, 1.02], 256: [1.3, 1.2, 1.25]}, 'degrades from 4x'),
    ({64: [1, 1, 1], 128: [1.3, 1.0, 1.6], 256: [1.0, 1.01, 0.99]}, 'holds'),  # 1.3 within 2 std
    ({64: [1, 1, 1], 128: [0.97, 0.96, 0.97], 256: [0.9, 0.91, 0.9]}, 'improves'),
    ({64: [1, 1, 1], 128: [1.01, 1.01, 1.01]}, 'holds'),  # above 2 std, below MIN_CHANGE
    ({64: [1.0]}, '—'),
])
def test_behaviour_past_the_training_length(ratios, expected):
  assert extrapolation.behaviour(ratios, 64) == expected


def test_tokens_per_sec_leaves_out_the_first_train_row(tmp_path):
  workdir = make_sweep(tmp_path / 'sweep')
  assert common.train_tokens_per_sec(os.path.join(workdir, 'rope-s0', 'metrics.jsonl')) == 3000.0
  assert common.train_tokens_per_sec(os.path.join(workdir, 'nowhere.jsonl')) is None


def test_group_order():
  assert common.group_order({'zeta', 'alibi', 'learned', 'abs', 'rope'}, experiment.SCHEMES) == [
      'learned', 'rope', 'alibi', 'abs', 'zeta']


@pytest.mark.parametrize('case', ['no_dir', 'no_sweep', 'no_eval'])
def test_report_errors(tmp_path, case):
  workdir = str(tmp_path / 'sweep')
  expected = {
      'no_dir': f'error: --workdir={workdir}: no such directory',
      'no_sweep': f'error: --workdir={workdir} holds no sweep (no sweep.json); run launch.sweep first',
      'no_eval': f'error: --workdir={workdir}: no arm has eval_lengths.json yet; run launch.evaluate on each arm',
  }[case]
  if case == 'no_sweep':
    os.makedirs(workdir)
  if case == 'no_eval':
    make_sweep(workdir, evaluated=False)
  r = run_cli('launch.report', f'--workdir={workdir}')
  assert r.returncode == 2 and r.stderr.strip() == expected, r.stderr


def test_depth_report_for_kv_retrieval_arms(tmp_path):
  arms = [('rope-s0', 'rope', [0.5, 0.2, 0.6]), ('rope-s1', 'rope', [0.7, 0.2, 0.4]),
          ('alibi-s0', 'alibi', [0.1, 0.1, 0.1]), ('alibi-s1', 'alibi', None)]
  _write(tmp_path / 'sweep.json', {'config': 'lim.py', 'arms': [
      {'name': n, 'group': g, 'overrides': {}} for n, g, _ in arms],
      'report': lost_in_middle.REPORT})
  for name, _, acc in arms:
    (tmp_path / name).mkdir()
    if acc:
      _write(tmp_path / name / 'kv_depths.json', {
          'step': 10, 'seq_len': 32, 'num_pairs': 6, 'key_len': 1, 'value_len': 1,
          'depths': [0, 2, 5], 'accuracy': acc, 'rows': 64})
  out = report.write_report(str(tmp_path))
  lines = out['table'].splitlines()
  assert lines[0].split('|')[2].strip() == 'pair 1 of 6'
  # Bold: the depth's best (alibi is far below); †: within two binomial standard errors of the
  # guess level 1/6 over the seeds' rows (0.2 - 1/6 < 2 * sqrt(1/6 * 5/6 / 128) = 0.066).
  assert [c.strip() for c in lines[2].split('|')[1:-1]] == [
      'rope', '**0.600 ± 0.141**', '**0.200 ± 0.000** †', '**0.500 ± 0.141**']
  assert [c.strip() for c in lines[3].split('|')[1:-1]] == ['alibi', '0.100 †', '0.100 †',
                                                            '0.100 †']
  assert 'guessing one of the row\'s values scores 1/6' in open(out['report']).read()
  assert out['missing'] == [('alibi-s1', 'not scored (no kv_depths.json)')]
  assert os.path.getsize(out['plots'][0]) > 5000
  assert 'Lost in the middle' in open(out['report']).read()
