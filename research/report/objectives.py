"""The objective tables (kind 'objectives'): every arm's downstream measures
(research/evaluate/downstream.py) by architecture and objective, beside the paper's numbers.

sweep.json's "report" (declared by the experiment file, experiments/objectives/*.py):
  title      the table's title
  rows       [[group, label], ...]: the groups in the order the table lists them
  published  optional: {"source", "columns": [...], "rows": {group: [value per column]},
             "compare": {column: measure}} — the paper's numbers, and which of our measures
             each paper column is set against for the ordering comparison
  note       optional text under the published table

Cells are mean ± sample standard deviation over a group's seeds. As T5 marks its tables, a cell
is bold (**) when it is within two standard deviations of the column's best, the deviation
pooled over the groups' seeds; a cell marked † does not separate from chance: an accuracy less
than two binomial standard errors above chance, or bits per byte no better than the held-out
text's byte-unigram entropy.
"""

import math
import os

import numpy as np

from research.report.common import (MISSING, format_params, markdown_table, mean_std,
                                    new_figure, read_json, read_sweep, save_figure, style,
                                    train_tokens_per_sec, write_text)

RESULT = 'downstream.json'
# measure -> (column title, higher is better, digits)
MEASURES = {
    'infilling': ('infilling bits/byte', False, 3),
    'continuation': ('continuation bits/byte', False, 3),
    'multiple_choice': ('zero-shot MC acc.', True, 3),
    'finetuned': ('fine-tuned acc.', True, 3),
}


def load(workdir: str):
  """(spec, {group: [arm record]}, [(arm, why missing)]): each record holds the arm's summary
  and downstream.json."""
  spec = read_sweep(workdir)
  groups, missing = {}, []
  for entry in spec['arms']:
    d = os.path.join(workdir, entry['name'])
    if not os.path.exists(os.path.join(d, 'summary.json')):
      missing.append((entry['name'], 'training not finished (no summary.json)'))
      continue
    if not os.path.exists(os.path.join(d, RESULT)):
      missing.append((entry['name'], f'not evaluated (no {RESULT})'))
      continue
    summary, down = read_json(os.path.join(d, 'summary.json')), read_json(os.path.join(d, RESULT))
    if down.get('step') != summary.get('step'):
      missing.append((entry['name'], f'{RESULT} is from step {down.get("step")}, the run ended '
                      f'at step {summary.get("step")}'))
      continue
    groups.setdefault(entry.get('group') or entry['name'], []).append({
        'name': entry['name'], 'summary': summary, 'measures': down['measures'],
        'tokens_per_sec': train_tokens_per_sec(os.path.join(d, 'metrics.jsonl')),
        'downstream': down})
  if not groups:
    from research.errors import ConfigError
    raise ConfigError(f'--workdir={workdir}: no arm is finished and evaluated yet (run '
                      f'launch.evaluate --kind=downstream on each arm)')
  rows = [g for g, _ in ((spec.get('report') or {}).get('rows') or [])]
  order = [g for g in rows if g in groups] + sorted(set(groups) - set(rows))
  return spec, {g: groups[g] for g in order}, missing


def _value(record, measure):
  r = record['measures'].get(measure, {})
  if r.get('applicable') is False:
    return None
  return r.get('bits_per_byte', r.get('accuracy'))


def _at_chance(records, measure) -> bool:
  """Whether the group's mean does not separate from chance (see the module docstring)."""
  values = [v for v in (_value(r, measure) for r in records) if v is not None]
  if not values:
    return False
  result = records[0]['measures'][measure]
  if 'accuracy' in result:
    chance = result['chance']
    n = result.get('items') or result.get('test_examples') or 1
    return np.mean(values) - chance < 2 * math.sqrt(chance * (1 - chance) / n)
  unigram = records[0]['summary'].get('byte_unigram_entropy_bits')
  return unigram is not None and np.mean(values) >= unigram


def column_marks(groups, measure):
  """{group: (cell text, bold, at chance)} for one measure."""
  _, higher, digits = MEASURES[measure]
  stats = {g: mean_std([_value(r, measure) for r in recs]) for g, recs in groups.items()}
  means = {g: m for g, (m, _) in stats.items() if m is not None}
  variances = [s ** 2 for _, s in stats.values() if s is not None]
  pooled = math.sqrt(np.mean(variances)) if variances else None
  best = (max if higher else min)(means.values()) if means else None
  out = {}
  for g, (m, s) in stats.items():
    if m is None:
      out[g] = (MISSING if not any(_value(r, measure) is None for r in groups[g]) else 'n/a',
                False, False)
      continue
    text = f'{m:.{digits}f}' + (f' ± {s:.{digits}f}' if s is not None else '')
    bold = pooled is not None and abs(m - best) <= 2 * pooled
    out[g] = (text, bold, _at_chance(groups[g], measure))
  return out


def _cell(text, bold, chance):
  return (f'**{text}**' if bold else text) + (' †' if chance else '')


def labels(spec) -> dict:
  return {g: label for g, label in ((spec.get('report') or {}).get('rows') or [])}


def main_table(spec, groups) -> str:
  names = labels(spec)
  marks = {m: column_marks(groups, m) for m in MEASURES}
  header = ['arm', 'seeds', *(MEASURES[m][0] for m in MEASURES)]
  rows = []
  for g, recs in groups.items():
    rows.append([names.get(g, g), str(len(recs)),
                 *(_cell(*marks[m][g]) for m in MEASURES)])
  return markdown_table(header, rows)


def cost_table(spec, groups) -> str:
  names = labels(spec)
  header = ['arm', 'params', 'FLOPs/token', 'tokens seen', 'train tokens/s', 'wall s']
  rows = []
  for g, recs in groups.items():
    s = recs[0]['summary']
    tps, _ = mean_std([r['tokens_per_sec'] for r in recs])
    wall, _ = mean_std([r['summary'].get('wall_seconds') for r in recs])
    rows.append([names.get(g, g), format_params(s.get('num_params')),
                 f'{s.get("flops_per_token", 0) / 1e6:.2f}M', f'{s.get("tokens_seen", 0):,}',
                 MISSING if tps is None else f'{tps:,.0f}',
                 MISSING if wall is None else f'{wall:.0f}'])
  return markdown_table(header, rows)


def chance_line(groups) -> str:
  rec = next(iter(groups.values()))[0]
  parts = []
  for m, (title, _, _) in MEASURES.items():
    r = rec['measures'].get(m, {})
    if 'chance' in r:
      parts.append(f'{title}: {r["chance"]:.3f}')
  unigram = rec['summary'].get('byte_unigram_entropy_bits')
  if unigram is not None:
    parts.append(f'bits/byte of a model knowing only byte frequencies: {unigram:.3f}')
  return 'Chance: ' + '; '.join(parts) + '.'


def kendall_tau(a, b) -> float:
  """Kendall's tau between two orderings' scores (ties count as neither)."""
  n, score, pairs = len(a), 0, 0
  for i in range(n):
    for j in range(i + 1, n):
      s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
      score += s
      pairs += 1
  return float(score / pairs) if pairs else float('nan')


def published_section(spec, groups) -> list:
  published = (spec.get('report') or {}).get('published')
  if not published:
    return []
  names = labels(spec)
  parts = [f'## Published ({published["source"]})', '']
  if published.get('rows'):
    header = ['arm', *published['columns']]
    rows = [[names.get(g, g), *(MISSING if v is None else f'{v:g}' for v in values)]
            for g, values in published['rows'].items()]
    parts += [markdown_table(header, rows), '']
  for column, measure in (published.get('compare') or {}).items():
    i = published['columns'].index(column)
    common = [g for g in published['rows'] if g in groups
              and published['rows'][g][i] is not None]
    ours = {g: mean_std([_value(r, measure) for r in groups[g]])[0] for g in common}
    common = [g for g in common if ours[g] is not None]
    if len(common) < 2:
      continue
    sign = 1 if MEASURES[measure][1] else -1
    by_ours = sorted(common, key=lambda g: -sign * ours[g])
    by_paper = sorted(common, key=lambda g: -published['rows'][g][i])
    tau = kendall_tau([sign * ours[g] for g in common], [published['rows'][g][i] for g in common])
    parts += [f'Ordering by {MEASURES[measure][0]} (ours): ' + ' > '.join(names.get(g, g) for g in by_ours)
              + f'; by {column} (paper): ' + ' > '.join(names.get(g, g) for g in by_paper)
              + f'; Kendall tau {tau:+.2f}.', '']
  if published.get('note'):
    parts += [published['note'], '']
  return parts


def plot(spec, groups, path: str):
  names = labels(spec)
  order = list(groups)
  fig = new_figure(12, 3.6)
  axes = fig.subplots(1, len(MEASURES))
  for ax, (m, (title, higher, _)) in zip(axes, MEASURES.items()):
    for i, (g, recs) in enumerate(groups.items()):
      mean, std = mean_std([_value(r, m) for r in recs])
      if mean is None:
        continue
      ax.bar(i, mean, yerr=std or 0.0, color=style(g, order)['color'], capsize=3)
    rec = next(iter(groups.values()))[0]
    chance = rec['measures'].get(m, {}).get('chance')
    if chance is not None:
      ax.axhline(chance, color='grey', linestyle=':', linewidth=1)
    ax.set_title(title + (' (higher better)' if higher else ' (lower better)'), fontsize=9)
    ax.set_xticks(range(len(order)), [names.get(g, g) for g in order], rotation=60,
                  ha='right', fontsize=7)
    ax.grid(True, axis='y', alpha=0.3)
  save_figure(fig, path)


def write(workdir: str) -> dict:
  spec, groups, missing = load(workdir)
  report = spec.get('report') or {}
  first = next(iter(groups.values()))[0]
  down = first['downstream']
  table = main_table(spec, groups)
  out = {'report': os.path.join(workdir, 'report.md'),
         'plots': [os.path.join(workdir, 'objectives.png')], 'table': table, 'missing': missing}
  plot(spec, groups, out['plots'][0])
  parts = [f'# {report.get("title", "Objectives")}', '',
           f'Runs: `{spec.get("config", "?")}`; downstream measures of each arm\'s last '
           f'checkpoint on held-out passages of {down["length"]} tokens, {down["items"]} rows '
           f'per measure, {down["finetune_steps"]} fine-tuning steps '
           '(research/evaluate/downstream.py). Cells: mean ± std over seeds; **bold**: within two '
           'pooled standard deviations of the best; †: not separated from chance.', '',
           table, '', chance_line(groups), '']
  if missing:
    parts += ['Missing: ' + '; '.join(f'{n}: {w}' for n, w in missing) + '.', '']
  parts += ['## Cost', '', cost_table(spec, groups), '']
  parts += published_section(spec, groups)
  parts += ['![objectives](objectives.png)', '']
  write_text(out['report'], '\n'.join(parts))
  return out
