"""launch.report on a made-up objectives sweep: cells against the arms' own JSON, the two-sigma
marks, chance marks, the paper's ordering, missing arms."""

import json
import math
import os

import numpy as np

from experiments.objectives import t5_architectures as experiment
from research import report
from tests.conftest import run_cli

# group -> fine-tuned accuracy per seed; 'dec-lm' lies near chance (1/8 over 64 examples).
FINETUNED = {'ed-denoise': (0.60, 0.62, 0.64), 'ed-lm': (0.58, 0.60, 0.63),
             'dec-denoise': (0.30, 0.31, 0.29), 'dec-lm': (0.13, 0.12, 0.14)}


def _write(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f)


def make_sweep(root):
  arms = [{'name': f'{g}-s{s}', 'group': g, 'overrides': {}} for g in FINETUNED for s in range(3)]
  arms.append({'name': 'plm-lm-s0', 'group': 'plm-lm', 'overrides': {}})  # never started
  _write(os.path.join(root, 'sweep.json'), {'config': 'experiments/objectives/t5_architectures.py',
                                            'arms': arms, 'report': experiment.REPORT})
  for g, accs in FINETUNED.items():
    for s, acc in enumerate(accs):
      d = os.path.join(root, f'{g}-s{s}')
      os.makedirs(d)
      _write(os.path.join(d, 'summary.json'), {
          'step': 300, 'num_params': 1_000_000, 'flops_per_token': 4e6, 'tokens_seen': 1_228_800,
          'wall_seconds': 60.0, 'byte_unigram_entropy_bits': 4.3})
      with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
        for i, tps in enumerate((10.0, 2000.0, 4000.0)):
          f.write(json.dumps({'step': i, 'split': 'train', 'tokens_per_sec': tps}) + '\n')
      measures = {
          'infilling': {'bits_per_byte': 2.0 + 0.1 * s, 'bytes': 100, 'rows': 200},
          'continuation': {'bits_per_byte': 5.0 if g == 'dec-lm' else 1.5, 'bytes': 100,
                           'rows': 200},
          'multiple_choice': {'accuracy': 0.40, 'items': 200, 'chance': 0.25},
          'finetuned': {'accuracy': acc, 'chance': 0.125, 'test_examples': 64, 'classes': 8},
      }
      _write(os.path.join(d, 'downstream.json'), {'step': 300, 'length': 64, 'items': 200,
                                                  'finetune_steps': 60, 'measures': measures})
  return root


def _row(md, label):
  line = next(l for l in md.splitlines() if l.startswith(f'| {label} '))
  return [c.strip() for c in line.strip('|').split('|')]


def test_objectives_report_cells_marks_and_ordering(tmp_path):
  root = make_sweep(str(tmp_path))
  r = run_cli('launch.report', f'--workdir={root}')
  assert r.returncode == 0, r.stderr
  md = open(os.path.join(root, 'report.md')).read()
  table = md.split('## Cost')[0]
  ed = _row(table, 'encoder-decoder, span corruption')
  # The cells are the mean and sample std of the arms' own downstream.json values.
  for path_group, cell in (('ed-denoise', ed[5]),):
    values = [json.load(open(os.path.join(root, f'{path_group}-s{s}', 'downstream.json')))
              ['measures']['finetuned']['accuracy'] for s in range(3)]
    assert cell == f'**{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}**'
  # ed-lm is within two pooled standard deviations of the best: bold; dec-denoise is not.
  assert _row(table, 'encoder-decoder, prefix LM')[5].startswith('**')
  assert not _row(table, 'decoder-only, span corruption')[5].startswith('**')
  # dec-lm's accuracy does not separate from chance, nor its continuation from the unigram.
  dec_lm = _row(table, 'decoder-only, causal LM')
  assert dec_lm[5].endswith('†') and dec_lm[3].endswith('†') and not ed[3].endswith('†')
  assert 'plm-lm-s0: training not finished' in md
  assert 'Kendall tau +1.00' in md  # our fine-tuned order of these four matches T5's GLUE order
  assert '83.28' in md and os.path.getsize(os.path.join(root, 'objectives.png')) > 10_000
  cost = _row(md.split('## Cost')[1], 'decoder-only, causal LM')
  assert cost[1:] == ['1.00M', '4.00M', '1,228,800', '3,000', '60']
  assert report.report_kind(root) == 'objectives'
  assert math.isclose(float(ed[2].strip('*').split(' ± ')[0]), 2.1)
