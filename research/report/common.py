"""What every report kind shares: reading run directories, cells over seeds, markdown tables and
plots. Reports read only what runs left on disk (DESIGN.md: a report never talks to a live
process), so they can be written while a sweep is still running.

Arms of one group differ only by seed; a cell is the mean over a group's seeds, with the sample
standard deviation beside it when there are two seeds or more.
"""

import json
import os
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from research.errors import ConfigError

MISSING = '—'


def read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e.msg}, line {e.lineno})') from None


def read_sweep(workdir: str) -> dict:
  """sweep.json of the sweep in workdir (launch.sweep writes it), checked."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir}: no such directory')
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    raise ConfigError(f'--workdir={workdir} holds no sweep (no sweep.json); run launch.sweep first')
  spec = read_json(path)
  if not isinstance(spec, dict) or not spec.get('arms'):
    raise ConfigError(f'{path} lists no arms')
  if not all(isinstance(e, dict) and e.get('name') for e in spec['arms']):
    raise ConfigError(f'{path}: every arm needs a "name"')
  return spec


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


def group_order(groups, order=()) -> list:
  """The groups named in `order` first, in that order, then any other alphabetically: two reports
  of one sweep are identical, and a group keeps its row, colour and marker across reports."""
  known = [g for g in order if g in groups]
  return known + sorted(set(groups) - set(order))


def by_group(arms, order=()) -> dict:
  """group -> its arms (each with a .group), groups in group_order, arms in sweep order."""
  out = {g: [] for g in group_order({a.group for a in arms}, order)}
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
    return MISSING
  return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def format_params(n) -> str:
  if n is None:
    return MISSING
  return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}k'


def markdown_table(header, rows) -> str:
  """A markdown table with columns padded to one width, so it also reads well as plain text."""
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  line = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'
  return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|',
                    *(line(r) for r in rows)])


def style(group: str, order: list) -> dict:
  """One colour and marker per group, fixed by its place in `order`."""
  i = list(order).index(group)
  return {'color': f'C{i % 10}', 'marker': 'osD^v<>ph*'[i % 10]}


def new_figure(width: float, height: float):
  # A bare Figure with an Agg canvas: no pyplot, so no global backend or figure registry.
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def save_figure(fig, path: str):
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=120, bbox_inches='tight', metadata={'Software': None})
  os.replace(tmp, path)  # a reader never sees half a PNG


def write_text(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def near_best(stats: dict, higher: bool) -> set:
  """The groups whose mean is within two standard deviations of the best group's mean.

  stats: {group: (mean, std or None)} (mean_std's output; None means are left out). The deviation
  is pooled over the two groups compared, sqrt((s**2 + s_best**2) / 2), so one unstable group does
  not widen every other group's margin; a missing std (one seed) counts as 0. The best group is
  always in the set.
  """
  means = {g: (m, s or 0.0) for g, (m, s) in stats.items() if m is not None}
  if not means:
    return set()
  best = (max if higher else min)(means, key=lambda g: means[g][0])
  m_best, s_best = means[best]
  return {g for g, (m, s) in means.items()
          if abs(m - m_best) <= 2 * np.sqrt((s ** 2 + s_best ** 2) / 2)}


def bold(text: str, on: bool = True) -> str:
  """Markdown bold when `on`: how tables mark the cells near the column's best."""
  return f'**{text}**' if on else text
