"""The lost-in-the-middle report (kind 'kv_depths'): key-value retrieval accuracy by the gold
pair's depth, per positional scheme, from each arm's kv_depths.json
(research/evaluate/kv_depths.py).

Cells are mean ± sample std over a group's seeds; bold within two standard deviations of the
depth's best (common.near_best); † where the accuracy does not separate from guessing one of the
row's values (1 / pairs): less than two binomial standard errors above it, over all the seeds'
rows. A scheme with † at every depth has not learned the task, so its curve says nothing about
depth.
"""

import math
import os

import numpy as np

from research.errors import ConfigError
from research.report.common import (bold, format_cell, group_order, markdown_table, mean_std,
                                    near_best, new_figure, read_json, read_sweep, save_figure,
                                    style, write_text)

RESULT = 'kv_depths.json'


def load_depths(workdir: str):
  """({group: [kv_depths.json of each scored arm]}, [(arm, why missing)], config)."""
  spec = read_sweep(workdir)
  groups, missing = {}, []
  for entry in spec['arms']:
    path = os.path.join(workdir, entry['name'], 'kv_depths.json')
    if os.path.exists(path):
      groups.setdefault(entry.get('group') or entry['name'], []).append(read_json(path))
    else:
      missing.append((entry['name'], 'not scored (no kv_depths.json)'))
  if not groups:
    raise ConfigError(f'--workdir={workdir}: no arm has kv_depths.json yet; run launch.evaluate '
                      'on each arm')
  order = (spec.get('report') or {}).get('order', ())
  return {g: groups[g] for g in group_order(groups, order)}, missing, spec.get('config', '?')


def guess_level(runs) -> float:
  """Accuracy of guessing one of the row's values: 1 / pairs."""
  return 1.0 / runs[0]['num_pairs']


def at_guess(runs, i: int) -> bool:
  """Depth i's accuracy is less than two binomial standard errors above the guess level."""
  p, n = guess_level(runs), sum(r['rows'] for r in runs)
  return float(np.mean([r['accuracy'][i] for r in runs])) - p < 2 * math.sqrt(p * (1 - p) / n)


def depth_table(groups) -> str:
  depths = next(iter(groups.values()))[0]['depths']
  n = next(iter(groups.values()))[0]['num_pairs']
  header = ['scheme'] + [f'pair {d + 1} of {n}' for d in depths]
  near = [near_best({g: mean_std([r['accuracy'][i] for r in runs]) for g, runs in groups.items()},
                    higher=True) for i in range(len(depths))]
  rows = [[g] + [bold(format_cell([r['accuracy'][i] for r in runs], 3), g in near[i])
                 + (' †' if at_guess(runs, i) else '') for i in range(len(depths))]
          for g, runs in groups.items()]
  return markdown_table(header, rows)


def plot_depths(groups, path: str):
  fig = new_figure(6.5, 4.2)
  ax = fig.subplots()
  for g, runs in groups.items():
    depths = np.asarray(runs[0]['depths']) + 1
    acc_SD = np.asarray([r['accuracy'] for r in runs])
    std_D = acc_SD.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(acc_SD.shape[1])
    ax.errorbar(depths, acc_SD.mean(axis=0), yerr=std_D, label=g, capsize=3,
                **style(g, list(groups)))
  ax.axhline(guess_level(runs), color='grey', linestyle='--', linewidth=1.0,
             label=f'guess from the context (1/{runs[0]["num_pairs"]})')
  ax.set_xlabel(f'position of the gold pair (of {runs[0]["num_pairs"]})')
  ax.set_ylabel('exact-match accuracy')
  seeds = sorted({len(r) for r in groups.values()})
  ax.set_title('key-value retrieval accuracy by depth'
               + (f' (mean ± std, {"/".join(map(str, seeds))} seeds)' if seeds[-1] > 1 else ''))
  ax.set_ylim(0, 1.02)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  save_figure(fig, path)


def write(workdir: str) -> dict:
  """report.md and depth_accuracy.png for a sweep of kv-retrieval arms."""
  groups, missing, config = load_depths(workdir)
  first = next(iter(groups.values()))[0]
  out = {'report': os.path.join(workdir, 'report.md'),
         'plots': [os.path.join(workdir, 'depth_accuracy.png')],
         'table': depth_table(groups), 'missing': missing}
  plot_depths(groups, out['plots'][0])
  text = '\n'.join([
      '# Lost in the middle: key-value retrieval accuracy by depth', '',
      f'Runs: `{config}`; {first["num_pairs"]} pairs (keys of {first["key_len"]} and values of '
      f'{first["value_len"]} symbols out of 64), {first["rows"]} held-out rows per depth, exact '
      'match of the value (teacher-forced argmax, the same as greedy decoding\'s exact match). '
      f'Chance is 1/64; guessing one of the row\'s values scores 1/{first["num_pairs"]} = '
      f'{1 / first["num_pairs"]:.3f}. Mean ± std over seeds where there are several; '
      '**bold**: within two standard deviations of the depth\'s best (the deviation pooled over '
      'the two schemes compared); †: less than two binomial standard errors above the guess '
      'level, over all seeds\' rows.', '',
      out['table'], '',
      *(['Missing: ' + '; '.join(f'{n}: {w}' for n, w in missing) + '.', ''] if missing else []),
      'Liu et al. 2023 see a U shape (best at the start and the end of the context).', '',
      '![accuracy by depth](depth_accuracy.png)', ''])
  write_text(out['report'], text)
  return out
