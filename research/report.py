"""The ablation report of a sweep directory: markdown tables and plots of length extrapolation.

Reads only what the runs left on disk (DESIGN.md: a report never talks to live processes):

  <workdir>/sweep.json            {"config": ..., "arms": [{"name", "group", "overrides"}, ...]}
  <workdir>/<arm>/summary.json    written when training finishes
  <workdir>/<arm>/metrics.jsonl   train rows carry tokens_per_sec
  <workdir>/<arm>/eval_lengths.json  written by launch.evaluate

Arms of one group differ only by seed; every number in a table is the mean over a group's seeds,
with the sample standard deviation beside it when there are two seeds or more. An arm that is
not finished, not evaluated, or evaluated on an older checkpoint than its last step is left out
of the tables and named under them, so a report can be written while a sweep is still running.
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from research.errors import ConfigError

# Tables and plots list schemes in this order (others follow alphabetically), so two reports of
# the same sweep are identical and a scheme keeps its row, colour and marker across reports.
SCHEME_ORDER = ('learned', 'sinusoidal', 'rope', 't5_bias', 'alibi', 'shaw', 'none')

# Press, Smith & Lewis 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
# Length Extrapolation" (ALiBi), ICLR 2022: WikiText-103 validation perplexity of 16-layer,
# d_model=1024 models trained at L=1024 and evaluated with non-overlapping windows of L_valid
# tokens. Copied from /work/shared/PAPERS.md, which marks them [S] (from a secondary source).
# None: the run did not fit in memory (OOM).
PUBLISHED_SOURCE = 'Press et al. 2022, ALiBi, WikiText-103, trained at L=1024'
PUBLISHED_TRAIN_LENGTH = 1024
PUBLISHED_LENGTHS = (1024, 1524, 2024, 3024, 6024, 16024)
PUBLISHED = {  # our scheme name -> perplexity at each PUBLISHED_LENGTHS
    'sinusoidal': (19.34, 29.82, 51.09, 96.46, 214.02, 453.32),
    'rope': (19.33, 22.59, 31.17, 35.67, 54.78, 106.99),
    't5_bias': (18.80, 18.42, 18.34, 18.62, 21.76, None),
    'alibi': (18.66, 18.22, 18.05, 17.92, 18.01, 17.98),
}
PUBLISHED_NAMES = {'sinusoidal': 'sinusoidal', 'rope': 'rotary', 't5_bias': 'T5 bias', 'alibi': 'ALiBi'}

_MISSING = '—'


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

  @property
  def train_length(self) -> int:
    return self.arms[0].train_length


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e.msg}, line {e.lineno})') from None


def train_tokens_per_sec(metrics_path: str) -> Optional[float]:
  """Mean tokens/s of the train rows, without the first: it includes compilation and warm-up."""
  if not os.path.exists(metrics_path):
    return None
  rates = []
  with open(metrics_path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a run still writing, or killed mid-write
      if row.get('split') == 'train' and 'tokens_per_sec' in row:
        rates.append(row['tokens_per_sec'])
  return float(np.mean(rates[1:])) if len(rates) > 1 else None


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
  summary = _read_json(os.path.join(arm_dir, 'summary.json'))
  ev = _read_json(os.path.join(arm_dir, 'eval_lengths.json'))
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
  if not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir}: no such directory')
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    raise ConfigError(f'--workdir={workdir} holds no sweep (no sweep.json); run launch.sweep first')
  spec = _read_json(path)
  if not isinstance(spec, dict) or not spec.get('arms'):
    raise ConfigError(f'{path} lists no arms')
  if not all(isinstance(e, dict) and e.get('name') for e in spec['arms']):
    raise ConfigError(f'{path}: every arm needs a "name"')
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
  return Sweep(config=spec.get('config', '?'), arms=arms, missing=missing)


def group_order(groups) -> list:
  """SCHEME_ORDER first, then any other group alphabetically."""
  known = [g for g in SCHEME_ORDER if g in groups]
  return known + sorted(set(groups) - set(SCHEME_ORDER))


def by_group(arms) -> dict:
  """group -> its arms, groups in group_order, arms in sweep order."""
  out = {g: [] for g in group_order({a.group for a in arms})}
  for a in arms:
    out[a.group].append(a)
  return out


def mean_std(values):
  """(mean, sample std or None when fewer than two values); (None, None) for no values."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = float(np.mean(values))
  return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def format_cell(values, digits: int = 2) -> str:
  """'12.34 ± 0.56' over seeds, '12.34' for one seed, '—' for none."""
  mean, std = mean_std(values)
  if mean is None:
    return _MISSING
  return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def format_multiple(length: int, train_length: int) -> str:
  """'1x', '1.5x', '0.25x': a length as a multiple of the training length."""
  return f'{length / train_length:.3g}x'


def _format_params(n) -> str:
  if n is None:
    return _MISSING
  return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}k'


def markdown_table(header, rows) -> str:
  """A markdown table with columns padded to one width, so it also reads well as plain text."""
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  line = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'
  return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|',
                    *(line(r) for r in rows)])


def eval_lengths(arms) -> list:
  """Every token length any arm was evaluated at, ascending."""
  return sorted({length for a in arms for length in a.lengths})


def _metric(arm: Arm, length: int, kind: str, key: str):
  entry = arm.lengths.get(length, {}).get(kind)
  return entry[key] if entry else None


def _ratio_to_first(arm: Arm, length: int, first: int):
  at, base = _metric(arm, length, 'non_overlapping', 'perplexity'), _metric(arm, first, 'non_overlapping', 'perplexity')
  return at / base if at is not None and base else None


def perplexity_table(sweep: Sweep, kind: str = 'non_overlapping', speed: bool = True) -> str:
  """Table 1 (non_overlapping) or 2 (sliding): perplexity per scheme and length; with speed, the
  train tokens/s and parameter count columns too (Table 2 leaves out what Table 1 already shows)."""
  lengths, L = eval_lengths(sweep.arms), sweep.train_length
  header = ['scheme', *(f'{format_multiple(n, L)} ({n})' for n in lengths)]
  if speed:
    header += ['train tokens/s', 'params']
  rows = []
  for group, arms in by_group(sweep.arms).items():
    row = [group, *(format_cell([_metric(a, n, kind, 'perplexity') for a in arms]) for n in lengths)]
    if speed:
      tps, _ = mean_std([a.tokens_per_sec for a in arms])
      params, _ = mean_std([a.num_params for a in arms])
      row += [_MISSING if tps is None else f'{tps:,.0f}', _format_params(params)]
    rows.append(row)
  return markdown_table(header, rows)


def bits_per_byte_table(sweep: Sweep) -> str:
  """Table 3: bits per byte at the training length (or the shortest evaluated) and the longest."""
  lengths, L = eval_lengths(sweep.arms), sweep.train_length
  first = L if L in lengths else lengths[0]
  cols = [first] if lengths[-1] == first else [first, lengths[-1]]
  header = ['scheme', *(f'{format_multiple(n, L)} ({n})' for n in cols)]
  rows = [[g, *(format_cell([_metric(a, n, 'non_overlapping', 'bits_per_byte') for a in arms], 3) for n in cols)]
          for g, arms in by_group(sweep.arms).items()]
  return markdown_table(header, rows)


def ratio_table(sweep: Sweep) -> str:
  """Table 4: perplexity at each length over the same seed's at 1x: the shape the paper shows."""
  lengths, L = eval_lengths(sweep.arms), sweep.train_length
  first = L if L in lengths else lengths[0]
  header = ['scheme', *(f'{format_multiple(n, L)} ({n})' for n in lengths)]
  rows = [[g, *(format_cell([_ratio_to_first(a, n, first) for a in arms]) for n in lengths)]
          for g, arms in by_group(sweep.arms).items()]
  return markdown_table(header, rows)


def published_table() -> str:
  """The paper's perplexities, each with its ratio to the scheme's own value at L_valid = L."""
  header = ['L_valid', *(PUBLISHED_NAMES[s] for s in PUBLISHED)]
  rows = []
  for i, n in enumerate(PUBLISHED_LENGTHS):
    cells = []
    for ppl in PUBLISHED.values():
      cells.append('OOM' if ppl[i] is None else f'{ppl[i]:.2f} ({ppl[i] / ppl[0]:.2f}x)')
    rows.append([f'{n} ({format_multiple(n, PUBLISHED_TRAIN_LENGTH)})', *cells])
  return markdown_table(header, rows)


def _setup_line(sweep: Sweep) -> str:
  groups = by_group(sweep.arms)
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
      f'{_MISSING}: not evaluated at that length. Train tokens/s: mean over seeds of the mean over '
      'train log rows, the first row (compilation, warm-up) left out.', '',
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
            ratio_table(sweep),
            '', f'## Published ({PUBLISHED_SOURCE})', '',
            'Validation perplexity, non-overlapping windows of L_valid tokens; in parentheses the '
            'ratio to the same scheme at L_valid = 1024. Numbers taken from a secondary source, '
            'not yet checked against the paper. A 16-layer, d=1024 model on WikiText-103 is far '
            'from these runs: compare only the shape (Table 4 against the ratios here), not the '
            'absolute values.', '',
            published_table(), '',
            '![extrapolation](extrapolation.png)', '', '![per-position loss](per_position.png)', '']
  return '\n'.join(parts)


def _style(scheme: str, order: list) -> dict:
  """One colour and marker per scheme, fixed by its place in SCHEME_ORDER + the sweep's others."""
  known = list(SCHEME_ORDER) + [g for g in order if g not in SCHEME_ORDER]
  i = known.index(scheme)
  return {'color': f'C{i % 10}', 'marker': 'osD^v<>ph*'[i % 10]}


def _new_figure(width: float, height: float):
  # A bare Figure with an Agg canvas: no pyplot, so no global backend or figure registry.
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str):
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=120, bbox_inches='tight', metadata={'Software': None})
  os.replace(tmp, path)  # a reader never sees half a PNG


def plot_extrapolation(sweep: Sweep, path: str):
  """Left: our perplexity against length / training length; right: the paper's, same axes."""
  fig = _new_figure(11, 4.2)
  ours, paper = fig.subplots(1, 2)
  groups = by_group(sweep.arms)
  order = list(groups)
  L = sweep.train_length
  for group, arms in groups.items():
    xs, means, stds = [], [], []
    for n in eval_lengths(arms):
      mean, std = mean_std([_metric(a, n, 'non_overlapping', 'perplexity') for a in arms])
      xs.append(n / L)
      means.append(mean)
      stds.append(std or 0.0)
    ours.errorbar(xs, means, yerr=stds, label=group, capsize=3, **_style(group, order))
  for scheme, ppl in PUBLISHED.items():
    pts = [(n / PUBLISHED_TRAIN_LENGTH, p) for n, p in zip(PUBLISHED_LENGTHS, ppl) if p is not None]
    paper.plot(*zip(*pts), label=PUBLISHED_NAMES[scheme], **_style(scheme, order))
  ours.set_title(f'this sweep (trained at L={L})')
  paper.set_title(f'Press et al. 2022, WikiText-103 (L={PUBLISHED_TRAIN_LENGTH})')
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
  _save(fig, path)


def plot_per_position(sweep: Sweep, path: str):
  """Mean loss at each position of the longest windows each scheme was evaluated at."""
  fig = _new_figure(8, 4.2)
  ax = fig.subplots()
  groups = by_group(sweep.arms)
  longest = eval_lengths(sweep.arms)[-1]
  for group, arms in groups.items():
    n = eval_lengths(arms)[-1]
    curves = [a.lengths[n]['non_overlapping']['per_position_loss'] for a in arms if n in a.lengths]
    label = group if n == longest else f'{group} (at {n})'
    ax.plot(np.mean(curves, axis=0), label=label, linewidth=1.0, color=_style(group, list(groups))['color'])
  ax.axvline(sweep.train_length, color='grey', linestyle='--', linewidth=1.0, label='training length')
  ax.set_xlabel('position in window')
  ax.set_ylabel('mean loss (nats)')
  ax.set_title(f'per-position loss, non-overlapping windows of {longest} tokens')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)


def write_report(workdir: str) -> dict:
  """Writes report.md and its plots into workdir; returns their paths and the main table. A sweep
  of kv-retrieval arms gets the depth report, any other the length-extrapolation report."""
  if has_depth_results(workdir):
    return write_depth_report(workdir)
  sweep = load_sweep(workdir)
  out = {'report': os.path.join(workdir, 'report.md'),
         'plots': [os.path.join(workdir, 'extrapolation.png'),
                   os.path.join(workdir, 'per_position.png')],
         'table': perplexity_table(sweep), 'missing': sweep.missing}
  plot_extrapolation(sweep, out['plots'][0])
  plot_per_position(sweep, out['plots'][1])
  tmp = out['report'] + '.tmp'
  with open(tmp, 'w') as f:
    f.write(render(sweep))
  os.replace(tmp, out['report'])
  return out


# Lost in the middle: arms scored by research/objectives/kv_retrieval.evaluate_run.

def has_depth_results(workdir: str) -> bool:
  spec_path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(spec_path):
    return False
  return any(os.path.exists(os.path.join(workdir, e['name'], 'kv_depths.json'))
             for e in _read_json(spec_path).get('arms', []))


def load_depths(workdir: str):
  """({group: [kv_depths.json of each scored arm]}, [(arm, why missing)], config)."""
  spec = _read_json(os.path.join(workdir, 'sweep.json'))
  groups, missing = {}, []
  for entry in spec['arms']:
    path = os.path.join(workdir, entry['name'], 'kv_depths.json')
    if os.path.exists(path):
      groups.setdefault(entry.get('group') or entry['name'], []).append(_read_json(path))
    else:
      missing.append((entry['name'], 'not scored (no kv_depths.json)'))
  return {g: groups[g] for g in group_order(groups)}, missing, spec.get('config', '?')


def depth_table(groups) -> str:
  depths = next(iter(groups.values()))[0]['depths']
  n = next(iter(groups.values()))[0]['num_pairs']
  header = ['scheme'] + [f'pair {d + 1} of {n}' for d in depths]
  rows = [[g] + [format_cell([r['accuracy'][i] for r in runs], 3) for i in range(len(depths))]
          for g, runs in groups.items()]
  return markdown_table(header, rows)


def plot_depths(groups, path: str):
  fig = _new_figure(6.5, 4.2)
  ax = fig.subplots()
  for g, runs in groups.items():
    depths = np.asarray(runs[0]['depths']) + 1
    ax.plot(depths, np.mean([r['accuracy'] for r in runs], axis=0), label=g,
            **_style(g, list(groups)))
  ax.set_xlabel(f'position of the gold pair (of {runs[0]["num_pairs"]})')
  ax.set_ylabel('exact-match accuracy')
  ax.set_title('key-value retrieval accuracy by depth')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)


def write_depth_report(workdir: str) -> dict:
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
      'match of the value (teacher-forced argmax, the same as greedy decoding\'s exact match); '
      'chance is 1/64. Mean ± std over seeds where there are several.', '',
      out['table'], '',
      *(['Missing: ' + '; '.join(f'{n}: {w}' for n, w in missing) + '.', ''] if missing else []),
      'Liu et al. 2023 see a U shape (best at the start and the end of the context).', '',
      '![accuracy by depth](depth_accuracy.png)', ''])
  tmp = out['report'] + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, out['report'])
  return out
