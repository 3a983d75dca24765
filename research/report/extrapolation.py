"""The length-extrapolation report (kind 'extrapolation'): markdown tables and plots of held-out
perplexity by positional scheme and evaluation length, beside a paper's numbers.

Reads, besides sweep.json (whose "report" the experiment file declares: the scheme order and the
published numbers, experiments/positional/extrapolation.py):

  <arm>/summary.json        written when training finishes
  <arm>/metrics.jsonl       train rows carry tokens_per_sec
  <arm>/eval_lengths.json   written by launch.evaluate (research/evaluate/lengths.py)

An arm that is not finished, not evaluated, or evaluated on an older checkpoint than its last
step is left out of the tables and named under them.
"""

import dataclasses
import os
from typing import Optional

import numpy as np
from matplotlib import ticker

from research.errors import ConfigError
from research.report.common import (MISSING, bold, by_group, format_cell, format_params,
                                    markdown_table, mean_std, near_best, new_figure, read_json,
                                    read_sweep, save_figure, style, train_tokens_per_sec,
                                    write_text)

RESULT = 'eval_lengths.json'


@dataclasses.dataclass(frozen=True)
class Arm:
  """One finished, evaluated run of the sweep."""
  name: str
  group: str
  step: int
  train_length: int
  max_tokens: int
  num_params: Optional[int]
  tokens_per_sec: Optional[float]  # mean of the train rows after the first; None if none
  lengths: dict  # eval_lengths.json's 'lengths', keyed by int token count


@dataclasses.dataclass(frozen=True)
class Sweep:
  config: str
  arms: list  # [Arm], finished and evaluated, in sweep.json's order
  missing: list  # [(arm name, why it is not in the tables)]
  spec: dict = dataclasses.field(default_factory=dict)  # sweep.json's "report"

  @property
  def order(self) -> tuple:
    return tuple(self.spec.get('order', ()))

  @property
  def train_length(self) -> int:
    return self.arms[0].train_length


def _load_arm(workdir: str, entry: dict):
  """(Arm, None) for a finished, evaluated arm, else (None, why it is missing)."""
  name = entry['name']
  arm_dir = os.path.join(workdir, name)
  if not os.path.isdir(arm_dir):
    return None, 'not started'
  has_summary = os.path.exists(os.path.join(arm_dir, 'summary.json'))
  has_eval = os.path.exists(os.path.join(arm_dir, 'eval_lengths.json'))
  if not has_summary:
    return None, 'training not finished (no summary.json)'
  if not has_eval:
    return None, 'not evaluated (no eval_lengths.json)'
  summary = read_json(os.path.join(arm_dir, 'summary.json'))
  ev = read_json(os.path.join(arm_dir, 'eval_lengths.json'))
  if ev.get('step') != summary.get('step'):
    # launch.evaluate scores the latest checkpoint; an older one is not the run's result.
    return None, f'eval_lengths.json is from step {ev.get("step")}, the run ended at step {summary.get("step")}'
  arm = Arm(name=name, group=entry.get('group') or name, step=summary['step'],
            train_length=int(ev['train_length']), max_tokens=int(ev['max_tokens']),
            num_params=summary.get('num_params'),
            tokens_per_sec=train_tokens_per_sec(os.path.join(arm_dir, 'metrics.jsonl')),
            lengths={int(k): v for k, v in ev['lengths'].items()})
  return arm, None


def load_sweep(workdir: str) -> Sweep:
  """The finished, evaluated arms of the sweep in workdir, and why the others are missing."""
  spec = read_sweep(workdir)
  arms, missing = [], []
  for entry in spec['arms']:
    arm, why = _load_arm(workdir, entry)
    if arm:
      arms.append(arm)
    else:
      missing.append((entry['name'], why))
  if not arms:
    evaluated = [(n, why) for n, why in missing if os.path.exists(os.path.join(workdir, n, 'eval_lengths.json'))]
    if not evaluated:
      raise ConfigError(f'--workdir={workdir}: no arm has eval_lengths.json yet; run launch.evaluate on each arm')
    raise ConfigError(f'--workdir={workdir}: no arm is both finished and evaluated yet '
                      f'({evaluated[0][0]}: {evaluated[0][1]})')
  train_lengths = sorted({a.train_length for a in arms})
  if len(train_lengths) > 1:
    raise ConfigError(f'--workdir={workdir}: arms trained at different lengths {train_lengths}; '
                      'the extrapolation report compares schemes at one training length')
  return Sweep(config=spec.get('config', '?'), arms=arms, missing=missing,
               spec=spec.get('report') or {})


def format_multiple(length: int, train_length: int) -> str:
  """'1x', '1.5x', '0.25x': a length as a multiple of the training length."""
  return f'{length / train_length:.3g}x'


def eval_lengths(arms) -> list:
  """Every token length any arm was evaluated at, ascending."""
  return sorted({length for a in arms for length in a.lengths})


def _metric(arm: Arm, length: int, kind: str, key: str):
  entry = arm.lengths.get(length, {}).get(kind)
  return entry[key] if entry else None


def _ratio_to_first(arm: Arm, length: int, first: int):
  at, base = _metric(arm, length, 'non_overlapping', 'perplexity'), _metric(arm, first, 'non_overlapping', 'perplexity')
  return at / base if at is not None and base else None


def _column(groups, values_of, digits: int = 2, higher: bool = False) -> dict:
  """{group: cell} for one column, bold where within two standard deviations of its best
  (common.near_best). values_of(arm) -> a value or None."""
  values = {g: [values_of(a) for a in arms] for g, arms in groups.items()}
  near = near_best({g: mean_std(v) for g, v in values.items()}, higher=higher)
  return {g: bold(format_cell(v, digits), g in near and format_cell(v) != MISSING)
          for g, v in values.items()}


def perplexity_table(sweep: Sweep, kind: str = 'non_overlapping', speed: bool = True) -> str:
  """Table 1 (non_overlapping) or 2 (sliding): perplexity per scheme and length, bold within two
  standard deviations of the column's lowest; with speed, the train tokens/s and parameter count
  columns too (Table 2 leaves out what Table 1 already shows)."""
  lengths, L = eval_lengths(sweep.arms), sweep.train_length
  header = ['scheme', *(f'{format_multiple(n, L)} ({n})' for n in lengths)]
  if speed:
    header += ['train tokens/s', 'params']
  groups = by_group(sweep.arms, sweep.order)
  columns = [_column(groups, lambda a, n=n: _metric(a, n, kind, 'perplexity')) for n in lengths]
  rows = []
  for group, arms in groups.items():
    row = [group, *(col[group] for col in columns)]
    if speed:
      tps, _ = mean_std([a.tokens_per_sec for a in arms])
      params, _ = mean_std([a.num_params for a in arms])
      row += [MISSING if tps is None else f'{tps:,.0f}', format_params(params)]
    rows.append(row)
  return markdown_table(header, rows)


def bits_per_byte_table(sweep: Sweep) -> str:
  """Table 3: bits per byte at the training length (or the shortest evaluated) and the longest."""
  lengths, L = eval_lengths(sweep.arms), sweep.train_length
  first = L if L in lengths else lengths[0]
  cols = [first] if lengths[-1] == first else [first, lengths[-1]]
  header = ['scheme', *(f'{format_multiple(n, L)} ({n})' for n in cols)]
  rows = [[g, *(format_cell([_metric(a, n, 'non_overlapping', 'bits_per_byte') for a in arms], 3) for n in cols)]
          for g, arms in by_group(sweep.arms, sweep.order).items()]
  return markdown_table(header, rows)


# A ratio to 1x counts as a change past the training length when it differs from 1 by more than
# two standard deviations over seeds and by more than this: seeds can agree to 0.1%, which is
# not a change worth naming.
MIN_CHANGE = 0.02


def behaviour(ratios: dict, train_length: int) -> str:
  """'degrades from 2x', 'improves', 'holds' or '—' from {length: [ratio per seed]}: the first
  length past the training length whose mean ratio exceeds 1 + max(2 std, MIN_CHANGE) (degrades);
  else improves if the longest length's mean ratio is below 1 - max(2 std, MIN_CHANGE)."""
  past = sorted(n for n in ratios if n > train_length)

  def change(n):
    mean, std = mean_std(ratios[n])
    return (None, 0.0) if mean is None else (mean - 1, max(2 * (std or 0.0), MIN_CHANGE))

  for n in past:
    delta, margin = change(n)
    if delta is not None and delta > margin:
      return f'degrades from {format_multiple(n, train_length)}'
  if not past or change(past[-1])[0] is None:
    return MISSING
  delta, margin = change(past[-1])
  return 'improves' if delta < -margin else 'holds'


def ratio_table(sweep: Sweep) -> str:
  """Table 4: perplexity at each length over the same seed's at 1x: the shape the paper shows,
  and each scheme's behaviour past the training length (behaviour)."""
  lengths, L = eval_lengths(sweep.arms), sweep.train_length
  first = L if L in lengths else lengths[0]
  header = ['scheme', *(f'{format_multiple(n, L)} ({n})' for n in lengths), 'past 1x']
  rows = []
  for g, arms in by_group(sweep.arms, sweep.order).items():
    ratios = {n: [_ratio_to_first(a, n, first) for a in arms] for n in lengths}
    rows.append([g, *(format_cell(ratios[n]) for n in lengths), behaviour(ratios, L)])
  return markdown_table(header, rows)


def published_table(published: dict) -> str:
  """The paper's perplexities, each with its ratio to the scheme's own value at L_valid = L."""
  names, ppl_by_scheme = published['names'], published['perplexity']
  header = ['L_valid', *(names.get(s, s) for s in ppl_by_scheme)]
  rows = []
  for i, n in enumerate(published['lengths']):
    cells = []
    for ppl in ppl_by_scheme.values():
      cells.append('OOM' if ppl[i] is None else f'{ppl[i]:.2f} ({ppl[i] / ppl[0]:.2f}x)')
    rows.append([f'{n} ({format_multiple(n, published["train_length"])})', *cells])
  return markdown_table(header, rows)


def _plot_order(sweep: Sweep) -> list:
  """Every group of the sweep and scheme of the paper, in one order: a scheme keeps its colour
  and marker in both panels."""
  groups = list(by_group(sweep.arms, sweep.order))
  published = list(sweep.spec.get('published', {}).get('perplexity', {}))
  return list(sweep.order) + sorted(set(groups + published) - set(sweep.order))


def _setup_line(sweep: Sweep) -> str:
  groups = by_group(sweep.arms, sweep.order)
  seeds = {len(a) for a in groups.values()}
  seeds_text = (f'{seeds.pop()} seed(s) per scheme' if len(seeds) == 1 else
                'seeds per scheme: ' + ', '.join(f'{g} {len(a)}' for g, a in groups.items()))
  steps = sorted({a.step for a in sweep.arms})
  steps_text = f'{steps[0]} steps' if len(steps) == 1 else f'{steps[0]}–{steps[-1]} steps'
  tokens = sorted({e['non_overlapping']['tokens'] for a in sweep.arms for e in a.lengths.values()})
  tokens_text = f'{tokens[0]:,}' if len(tokens) == 1 else f'{tokens[0]:,}–{tokens[-1]:,}'
  return (f'Runs: `{sweep.config}`, trained at length {sweep.train_length} for {steps_text}; '
          f'{seeds_text}; {tokens_text} held-out tokens scored per evaluation length.')


def render(sweep: Sweep) -> str:
  """The whole report.md."""
  L = sweep.train_length
  parts = [
      '# Length extrapolation of positional schemes', '',
      _setup_line(sweep), '',
      f'Cells: perplexity, mean ± sample std over seeds (std only with two seeds or more); columns: '
      f'evaluation length as a multiple of the training length ({L}) and in tokens. '
      f'{MISSING}: not evaluated at that length. **Bold**: within two standard deviations of the '
      'column\'s best (the deviation pooled over the two schemes compared), so bold cells do not '
      'separate from the best at this number of seeds. Train tokens/s: mean over seeds of the '
      'mean over train log rows, the first row (compilation, warm-up) left out.', '',
      '## Table 1: perplexity, non-overlapping windows', '',
      perplexity_table(sweep, 'non_overlapping'),
  ]
  if sweep.missing:
    parts += ['', 'Missing from the tables: ' + '; '.join(f'{n}: {why}' for n, why in sweep.missing) + '.']
  if any(e.get('sliding') for a in sweep.arms for e in a.lengths.values()):
    strides = sorted({f'{e["sliding"]["stride"] / n:.3g}' for a in sweep.arms for n, e in a.lengths.items()
                      if e.get('sliding')})
    parts += ['', '## Table 2: perplexity, sliding windows', '',
              f'A window starts every stride = {"/".join(strides)} × its length and only its last stride '
              'tokens are scored, so every token past the first window has at least length − stride '
              'tokens of context.', '',
              perplexity_table(sweep, 'sliding', speed=False)]
  parts += ['', '## Table 3: bits per byte, non-overlapping windows', '', bits_per_byte_table(sweep),
            '', '## Table 4: perplexity relative to 1x (mean over seeds of each seed\'s ratio)', '',
            f'Past 1x: "degrades from Nx" at the first length whose ratio exceeds 1 by more than '
            f'two standard deviations and by more than {MIN_CHANGE:g}; otherwise "improves" or '
            '"holds" by the same test at the longest length.', '',
            ratio_table(sweep),
            '']
  published = sweep.spec.get('published')
  if published:
    parts += [f'## Published ({published["source"]})', '',
              'Validation perplexity, non-overlapping windows of L_valid tokens; in parentheses the '
              f'ratio to the same scheme at L_valid = {published["train_length"]}. '
              + published.get('note', ''), '', published_table(published), '']
  parts += ['![extrapolation](extrapolation.png)', '', '![per-position loss](per_position.png)', '']
  return '\n'.join(parts)


def plot_extrapolation(sweep: Sweep, path: str):
  """Left: our perplexity against length / training length; right: the paper's, same axes."""
  fig = new_figure(11, 4.2)
  ours, paper = fig.subplots(1, 2)
  groups = by_group(sweep.arms, sweep.order)
  order = _plot_order(sweep)
  L = sweep.train_length
  for group, arms in groups.items():
    xs, means, stds = [], [], []
    for n in eval_lengths(arms):
      mean, std = mean_std([_metric(a, n, 'non_overlapping', 'perplexity') for a in arms])
      xs.append(n / L)
      means.append(mean)
      stds.append(std or 0.0)
    ours.errorbar(xs, means, yerr=stds, label=group, capsize=3, **style(group, order))
  published = sweep.spec.get('published')
  if published:
    train = published['train_length']
    for scheme, ppl in published['perplexity'].items():
      pts = [(n / train, p) for n, p in zip(published['lengths'], ppl) if p is not None]
      paper.plot(*zip(*pts), label=published['names'].get(scheme, scheme),
                 **style(scheme, order))
    paper.set_title(f'{published.get("short", published["source"])} (L={train})')
  ours.set_title(f'this sweep (trained at L={L})')
  ticks = {ours: [n / L for n in eval_lengths(sweep.arms)], paper: [1, 2, 4, 8, 16]}
  for ax in (ours, paper):
    # Log x: the paper's lengths run to ~16x, which would crush the short ones on a linear axis.
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xticks(ticks[ax], [f'{t:g}x' for t in ticks[ax]])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    # Plain numbers on the log y axis: perplexities read better as 40 than as 4×10^1.
    ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel('evaluation length / training length')
    ax.set_ylabel('perplexity (non-overlapping)')
    ax.axvline(1.0, color='grey', linewidth=0.8, linestyle=':')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  save_figure(fig, path)


def plot_per_position(sweep: Sweep, path: str):
  """Mean loss at each position of the longest windows each scheme was evaluated at."""
  fig = new_figure(8, 4.2)
  ax = fig.subplots()
  groups = by_group(sweep.arms, sweep.order)
  longest = eval_lengths(sweep.arms)[-1]
  # Each position's mean rests on few windows at the longest lengths (max_tokens / length of
  # them per seed): means over bins of positions keep the curves readable.
  width = max(1, longest // 64)
  for group, arms in groups.items():
    n = eval_lengths(arms)[-1]
    curves = [a.lengths[n]['non_overlapping']['per_position_loss'] for a in arms if n in a.lengths]
    curve = np.mean(curves, axis=0)
    starts = np.arange(0, len(curve), width)
    binned = [curve[i:i + width].mean() for i in starts]
    label = group if n == longest else f'{group} (at {n})'
    ax.plot(starts + (min(width, len(curve)) - 1) / 2, binned, label=label, linewidth=1.0,
            color=style(group, _plot_order(sweep))['color'])
  ax.axvline(sweep.train_length, color='grey', linestyle='--', linewidth=1.0, label='training length')
  ax.set_xlabel('position in window')
  ax.set_ylabel('mean loss (nats)')
  ax.set_title(f'per-position loss, non-overlapping windows of {longest} tokens'
               + (f' (means over {width} positions)' if width > 1 else ''))
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  save_figure(fig, path)


def write(workdir: str) -> dict:
  """Writes report.md and its plots into workdir; returns their paths and the main table."""
  sweep = load_sweep(workdir)
  out = {'report': os.path.join(workdir, 'report.md'),
         'plots': [os.path.join(workdir, 'extrapolation.png'),
                   os.path.join(workdir, 'per_position.png')],
         'table': perplexity_table(sweep), 'missing': sweep.missing}
  plot_extrapolation(sweep, out['plots'][0])
  plot_per_position(sweep, out['plots'][1])
  write_text(out['report'], render(sweep))
  return out
