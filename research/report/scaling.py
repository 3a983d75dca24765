"""The scaling-law report (kind 'scaling'): the sweep's runs, how far a cooldown is from a cosine
run, Kaplan's and Chinchilla's fits (approaches 1-3) with bootstrap intervals beside the
published ones, counted with all parameters and without the embeddings, the compute-optimal
tokens per parameter, and the held-out prediction.

The sweep (experiments/scaling/chinchilla.py) declares, in sweep.json's "report":
  tokens_per_step  tokens of one step (rows x length)
  budgets          the IsoFLOP budgets C = 6 N D (N all parameters)
  held_out         the group left out of the fits and predicted
A run's role follows from its config: a constant-rate run is a long run (branched from, never
fitted); a cosine run is a check of the cooldowns; every other finished run is a data point.
`before_arm` writes prediction.json before the held-out arm trains (launch.sweep calls it), so
the prediction is made before its loss exists; later reports set the measured loss beside it.

Losses are the runs' final held-out losses in nats per token (bytes, for the CPU sweep): their
absolute values are not the papers' (nats per BPE token of other corpora); the exponents and
tokens per parameter are what compare.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from research import config as config_lib
from research import scaling
from research.errors import ConfigError
from research.report.common import (markdown_table, new_figure, read_json, read_sweep,
                                    save_figure, write_text)
from research.scaling import ladder

RESULT = 'summary.json'
PREDICTION = 'prediction.json'

# Published values (../shared/PAPERS.md).
PUBLISHED_A = (('Kaplan et al. 2020 (N non-embedding)', 0.73),
               ('Chinchilla approach 1', 0.50), ('Chinchilla approach 2', 0.49),
               ('Chinchilla approach 3', 0.46), ('Epoch AI refit (approach 3)', 0.513))
PUBLISHED_FIT = {'Chinchilla (Hoffmann et al. 2022)': dict(E=1.69, A=406.4, B=410.7, alpha=0.34,
                                                          beta=0.28),
                 'Epoch AI (Besiroglu et al. 2024)': dict(E=1.8172, A=482.01, B=2085.43,
                                                         alpha=0.3478, beta=0.3658)}
KAPLAN = dict(alpha_N=0.076, alpha_D=0.095)
BOOTSTRAP = 100


@dataclasses.dataclass
class Run:
  name: str
  group: str
  config: object
  summary: dict  # {} while unfinished
  curve: tuple  # (steps, train losses) of its own metrics rows
  non_embedding: int
  total: int

  @property
  def steps(self) -> int:
    return int(self.config.train.steps)

  @property
  def role(self) -> str:
    return {'constant': 'long', 'cosine': 'cosine'}.get(self.config.train.schedule, 'point')

  @property
  def loss(self):
    return self.summary.get('eval', {}).get('loss')


def _curve(path: str):
  steps, losses = [], []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        if row.get('split') == 'train' and 'loss' in row:
          steps.append(row['step'])
          losses.append(row['loss'])
  return np.array(steps), np.array(losses)


def load(workdir: str):
  spec = read_sweep(workdir)
  runs = []
  for entry in spec['arms']:
    d = os.path.join(workdir, entry['name'])
    if not os.path.exists(os.path.join(d, 'config.json')):
      continue
    c = config_lib.load_json(os.path.join(d, 'config.json'))
    counts = ladder.count_params_of(c.model)
    summary = read_json(os.path.join(d, 'summary.json')) if os.path.exists(
        os.path.join(d, 'summary.json')) else {}
    runs.append(Run(entry['name'], entry.get('group') or entry['name'], c, summary,
                    _curve(os.path.join(d, 'metrics.jsonl')), counts['non_embedding'],
                    counts['total']))
  return spec, runs


def _report_spec(spec) -> dict:
  r = spec.get('report') or {}
  for key in ('tokens_per_step', 'budgets', 'held_out'):
    if key not in r:
      raise ConfigError(f'sweep.json\'s report names no {key!r} (experiments/scaling/*.py '
                        'declares it)')
  return r


def _budget_of(run: Run, budgets, tokens_per_step: int):
  """The nominal IsoFLOP budget the run was sized for (its steps are round(C / (6 N tokens per
  step))), or None."""
  for b in budgets:
    if round(b / (6 * run.total * tokens_per_step)) == run.steps:
      return b
  return None


def points(runs, spec, count='total'):
  """(N, D, loss, name) of the finished data points, the held-out group left out."""
  r = _report_spec(spec)
  rows = [(x.total if count == 'total' else x.non_embedding, x.steps * r['tokens_per_step'],
           x.loss, x.name) for x in runs
          if x.role == 'point' and x.loss is not None and x.group != r['held_out']]
  return rows


def _fit3(rows):
  n, d, loss, _ = zip(*rows)
  fit = scaling.fit_chinchilla(n, d, loss)
  boot = scaling.bootstrap(scaling.fit_chinchilla, np.array(n, float), np.array(d, float),
                           np.array(loss, float), n=BOOTSTRAP, seed=0, init=fit)
  return fit, boot


def _sized(runs, spec) -> list:
  """(run, budget) of the finished data points sized for an IsoFLOP budget."""
  r = _report_spec(spec)
  return [(x, b) for x in runs if x.role == 'point' and x.loss is not None
          and x.group != r['held_out']
          for b in [_budget_of(x, r['budgets'], r['tokens_per_step'])] if b is not None]


def _isoflop_runs(runs, spec, count='total'):
  """(C, N, loss) of the finished data points sized for an IsoFLOP budget."""
  sized = _sized(runs, spec)
  return ([b for _, b in sized],
          [x.total if count == 'total' else x.non_embedding for x, _ in sized],
          [x.loss for x, _ in sized])


def _at_budget(runs, spec, flops: float) -> list:
  """The finished data points sized for the IsoFLOP budget `flops`."""
  return [x for x, b in _sized(runs, spec) if b == flops]


def _fit2(runs, spec, count='total'):
  # Only minima inside the sizes trained are measurements; a parabola's vertex beyond them is an
  # extrapolation, so those budgets are left out (and listed) rather than fitted.
  fit = scaling.fit_isoflop(*_isoflop_runs(runs, spec, count), require_inside=True)
  # Resampling runs would break the budgets' parabolas (3 sizes each at the smallest), so the
  # interval resamples the budgets' minima: the spread of the power law through them.
  cs = np.array([b['flops'] for b in fit['budgets']])
  n_opt = np.array([b['n_opt'] for b in fit['budgets']])
  d_opt = np.array([b['d_opt'] for b in fit['budgets']])

  def law(c_, n_, d_):
    return {'a': scaling.fit_loglog(c_, n_)['exponent'],
            'b': scaling.fit_loglog(c_, d_)['exponent']}

  boot = scaling.bootstrap(law, cs, n_opt, d_opt, n=BOOTSTRAP, seed=0)
  return fit, boot


def _stitched(runs, spec):
  """Per data point: its whole training curve, the long run's rows up to the branch then its
  own, as (FLOPs, loss, tokens) with N all parameters."""
  r = _report_spec(spec)
  by_name = {x.name: x for x in runs}
  curves = []
  for x in runs:
    if x.role != 'point' or x.loss is None or x.group == r['held_out']:
      continue
    steps, losses = x.curve
    branch = x.config.train.init_from
    if branch:
      parent = by_name.get(os.path.basename(branch.rpartition(':')[0]))
      at = int(branch.rpartition(':')[2])
      if parent is not None:
        ps, pl = parent.curve
        steps, losses = np.concatenate([ps[ps <= at], steps]), np.concatenate([pl[ps <= at], losses])
    tokens = steps * r['tokens_per_step']
    curves.append((6.0 * x.total * tokens, losses, tokens, x.total))
  return curves


def _fit1(runs, spec):
  curves = _stitched(runs, spec)
  flops, loss, tokens, n = zip(*curves)
  return scaling.fit_envelope(list(flops), list(loss), list(n), list(tokens))


def _kaplan(runs, spec):
  """L(N) at the longest budget (non-embedding N, as Kaplan) and L(D) of the largest model."""
  rows = points(runs, spec, 'non_embedding')
  longest = max(d for _, d, _, _ in rows)
  at_d = [(n, l) for n, d, l, _ in rows if d == longest]
  biggest = max(n for n, _, _, _ in rows)
  at_n = [(d, l) for n, d, l, _ in rows if n == biggest]
  out = {}
  for key, pairs in (('N', at_d), ('D', at_n)):
    x, y = zip(*sorted(pairs))
    fit = scaling.fit_power_law(x, y)
    boot = scaling.bootstrap(scaling.fit_power_law, np.array(x, float), np.array(y), n=BOOTSTRAP,
                             seed=0, init=fit)
    out[key] = (fit, boot, len(pairs))
  return out, longest, biggest


def _interval(boot, key, digits=3):
  if key not in boot['intervals']:
    return ''
  lo, hi = boot['intervals'][key]
  return f'[{lo:.{digits}g}, {hi:.{digits}g}]'


def _predict_held_out(runs, spec, arm_name: str, config):
  """The approach-3 prediction of the held-out run's loss from the other runs, with the
  interval of the bootstrap refits' predictions; config: the held-out arm's."""
  from research.data import pipeline
  r = _report_spec(spec)
  resolved = config_lib.resolve(config, vocab_size=pipeline.vocab_size(config))
  n = ladder.count_params_of(resolved.model)['total']
  fit, boot = _fit3(points(runs, spec))
  d = int(resolved.train.steps) * r['tokens_per_step']
  s = boot['samples']
  preds = s['E'] + s['A'] / n ** s['alpha'] + s['B'] / d ** s['beta']
  return {'arm': arm_name, 'n_params': n, 'n_tokens': d,
          'predicted_loss': float(scaling.predict(fit, n, d)),
          'interval': [float(np.percentile(preds, 2.5)), float(np.percentile(preds, 97.5))],
          'fitted_on': [name for _, _, _, name in points(runs, spec)],
          'written': time.strftime('%Y-%m-%d %H:%M:%S')}


def _held_out_arms(spec) -> list:
  r = spec.get('report') or {}
  return [e['name'] for e in spec['arms'] if (e.get('group') or e['name']) == r.get('held_out')]


def before_arm(workdir: str, arm_name: str, config) -> None:
  """Called by launch.sweep before each arm (config: the arm's): writes the held-out prediction
  before its arm trains (once; an existing prediction is never rewritten)."""
  spec, runs = load(workdir)
  path = os.path.join(workdir, PREDICTION)
  if arm_name not in _held_out_arms(spec) or os.path.exists(path):
    return
  prediction = _predict_held_out(runs, spec, arm_name, config)
  write_text(path, json.dumps(prediction, indent=1) + '\n')


def _count(x):
  return '—' if x is None else f'{x:,.0f}'


def _fmt(x, digits=3):
  return '—' if x is None else f'{x:.{digits}g}'


def runs_table(runs, spec) -> str:
  r = _report_spec(spec)
  header = ['arm', 'role', 'layers', 'd_model', 'N non-emb.', 'N all', 'tokens', 'C = 6ND',
            'epochs', 'loss (nats)']
  rows = []
  for x in runs:
    d = x.steps * r['tokens_per_step']
    role = 'held out' if x.group == r['held_out'] else x.role
    rows.append([x.name, role, x.config.model.num_layers, x.config.model.d_model,
                 f'{x.non_embedding:,}', f'{x.total:,}', f'{d:,}', f'{6 * x.total * d:.2e}',
                 _fmt(x.summary.get('epochs'), 3), _fmt(x.loss, 4)])
  return markdown_table(header, rows)


def cosine_table(runs) -> str:
  """Each cosine run beside the cooldown (wsd) run of the same size and length."""
  rows = []
  for x in runs:
    if x.role != 'cosine' or x.loss is None:
      continue
    twin = [y for y in runs if y.role == 'point' and y.loss is not None and y.steps == x.steps
            and y.total == x.total]
    if twin:
      y = twin[0]
      rows.append([x.config.model.num_layers, x.steps, f'{x.loss:.4f}', f'{y.loss:.4f}',
                   f'{y.loss - x.loss:+.4f}', f'{(y.loss - x.loss) / x.loss:+.2%}'])
  if not rows:
    return ''
  return markdown_table(['layers', 'steps', 'cosine loss', 'cooldown loss', 'cooldown − cosine',
                         'relative'], rows)


def plot(runs, spec, fit3, parabolas, env, path: str):
  r = _report_spec(spec)
  fig = new_figure(15, 4.3)
  by_n, by_c, iso = fig.subplots(1, 3)
  pts = points(runs, spec)
  for d in sorted({d for _, d, _, _ in pts}):
    xs = sorted((n, l) for n, dd, l, _ in pts if dd == d)
    if len(xs) > 1:
      n, l = zip(*xs)
      line, = by_n.plot(n, l, 'o', label=f'D={d:,}')
      grid = np.geomspace(min(n), max(n), 50)
      by_n.plot(grid, scaling.predict(fit3, grid, d), '-', color=line.get_color(), linewidth=0.8)
  by_n.set(xscale='log', xlabel='N (all parameters)', ylabel='held-out loss (nats)',
           title='loss against N, approach-3 fit')
  by_n.legend(fontsize=6)
  n, d, l, _ = zip(*pts)
  c = 6 * np.array(n, float) * np.array(d, float)
  by_c.scatter(c, l, s=10, color='grey', label='runs')
  if env:
    by_c.plot(env['envelope']['flops'], env['envelope']['loss'], 'k:',
              label='envelope (approach 1)')
  grid = np.geomspace(c.min(), c.max() * 4, 50)
  opt = scaling.compute_optimal(fit3, grid)
  by_c.plot(grid, scaling.predict(fit3, opt['n_params'], opt['n_tokens']), 'r-',
            label='compute-optimal frontier (approach 3)')
  pred = _read_prediction(os.path.dirname(path))
  if pred:
    by_c.errorbar([6 * pred['n_params'] * pred['n_tokens']], [pred['predicted_loss']],
                  yerr=[[pred['predicted_loss'] - pred['interval'][0]],
                        [pred['interval'][1] - pred['predicted_loss']]], fmt='rs',
                  label='held-out prediction')
    held = [x for x in runs if x.group == r['held_out'] and x.loss is not None]
    if held:
      by_c.plot([6 * pred['n_params'] * pred['n_tokens']], [held[0].loss], 'k*', markersize=10,
                label='held-out measured')
  by_c.set(xscale='log', xlabel='C = 6 N D (FLOPs)', ylabel='held-out loss (nats)',
           title='loss against compute')
  by_c.legend(fontsize=6)
  for b in parabolas:
    at = [(x.total, x.loss) for x in _at_budget(runs, spec, b['flops'])]
    nn, ll = zip(*sorted(at))
    line, = iso.plot(nn, ll, 'o', label=f'C={b["flops"]:.0e}')
    grid = np.geomspace(min(nn) / 1.5, max(nn) * 1.5, 50)
    iso.plot(grid, np.polyval(b['coef'], np.log(grid)), '-', color=line.get_color(),
             linewidth=0.8)
    if b['in_range']:  # a measured minimum; none is drawn where the vertex is extrapolated
      iso.axvline(b['n_opt'], color=line.get_color(), linestyle=':', linewidth=0.8)
  iso.set(xscale='log', xlabel='N (all parameters)', ylabel='held-out loss (nats)',
          title='IsoFLOP parabolas (approach 2)')
  iso.legend(fontsize=6)
  for ax in (by_n, by_c, iso):
    ax.grid(True, which='both', alpha=0.3)
  save_figure(fig, path)


def _read_prediction(workdir):
  path = os.path.join(workdir, PREDICTION)
  return read_json(path) if os.path.exists(path) else None


def _attempt(fn, *args):
  """(fn(*args), None), or (None, why) when the sweep's runs do not allow that fit."""
  try:
    return fn(*args), None
  except ConfigError as e:
    return None, str(e)


def write(workdir: str) -> dict:
  spec, runs = load(workdir)
  if len(points(runs, spec)) < 6:
    raise ConfigError(f'--workdir={workdir}: {len(points(runs, spec))} finished data points; the '
                      'fits need at least 6 (run launch.sweep to the end)')
  parts = ['# Scaling laws', '',
           f'Runs: `{spec.get("config", "?")}`. Loss: each run\'s final held-out loss (nats per '
           'token). Intervals: 95% of 100 bootstrap refits over the runs (approach 2: over its '
           'budgets\' minima).', '',
           '## Runs', '', runs_table(runs, spec), '']
  cosine = cosine_table(runs)
  if cosine:
    parts += ['## Cooldowns against cosine runs of the same length', '',
              'Before the fits rely on cooldowns branched from one constant-rate run per size '
              '(Hägele et al. 2024 find a 20% 1-sqrt cooldown matches cosine):', '', cosine, '']
  fits = {}
  for count in ('total', 'non_embedding'):
    fits[count] = dict(a3=_fit3(points(runs, spec, count)), a2=_attempt(_fit2, runs, spec, count))
  fit3, boot3 = fits['total']['a3']
  (fit2, _), why2 = fits['total']['a2'] if fits['total']['a2'][0] else ((None, None),
                                                                        fits['total']['a2'][1])
  env, why1 = _attempt(_fit1, runs, spec)
  header = ['fit', 'E', 'A', 'B', 'alpha', 'beta', 'a = beta/(alpha+beta)']
  rows = [['ours (approach 3, N all)', *(f'{fit3[k]:.3g} {_interval(boot3, k)}'
                                         for k in ('E', 'A', 'B', 'alpha', 'beta', 'a_opt'))]]
  for name, p in PUBLISHED_FIT.items():
    a = p['beta'] / (p['alpha'] + p['beta'])
    rows.append([name, *(f'{p[k]:g}' for k in ('E', 'A', 'B', 'alpha', 'beta')), f'{a:.3f}'])
  parts += ['## Approach 3: L = E + A / N^alpha + B / D^beta', '',
            'Hoffmann et al.\'s procedure: log-sum-exp form, Huber (delta 1e-3) summed over runs, '
            'L-BFGS from their grid of initial values (research/scaling/fits.py).', '',
            markdown_table(header, rows), '']
  exps = []
  for count, label in (('total', 'all parameters'), ('non_embedding', 'non-embedding')):
    f3, b3 = fits[count]['a3']
    (f2, b2), _ = fits[count]['a2'] if fits[count]['a2'][0] else ((None, None), None)
    exps.append([label, f'{f2["a"]:.3f} {_interval(b2, "a")}' if f2 else '—',
                 f'{f3["a_opt"]:.3f} {_interval(b3, "a_opt")}'])
  first = (f'Approach 1 (envelope of the training curves, N all parameters): a = {env["a"]:.3f}, '
           f'b = {env["b"]:.3f}.' if env else f'Approach 1 not fitted: {why1}.')
  parts += ['## N_opt ∝ C^a: the counting question (Pearce & Song 2024)', '', first, '',
            markdown_table(['N counts', 'approach 2', 'approach 3'], exps), '',
            'Published: ' + '; '.join(f'{n} {a}' for n, a in PUBLISHED_A) + '.', '']
  parabolas, why_p = _attempt(scaling.isoflop_parabolas, *_isoflop_runs(runs, spec))
  if parabolas:
    budgets = []
    for b in parabolas:  # a vertex outside the sizes trained is not shown: it is not measured
      best = min(_at_budget(runs, spec, b['flops']), key=lambda x: x.loss)
      measured = not b['why']
      budgets.append([f'{b["flops"]:.0e}', _count(b['n_opt'] if measured else None),
                      _count(b['d_opt'] if measured else None),
                      f'{b["d_opt"] / b["n_opt"]:.1f}' if measured else '—',
                      f'{best.name} ({best.loss:.4g})', 'yes' if measured else f'no: {b["why"]}'])
    parts += ['## Approach 2: IsoFLOP minima', '',
              markdown_table(['C', 'N_opt', 'D_opt', 'tokens / parameter', 'lowest loss',
                              'a measured minimum'], budgets), '']
  if not fit2:
    k = sum(not b['why'] for b in parabolas or ())
    why = (f'{k} of {len(parabolas)} budgets have a measured minimum (the table above); its '
           'power laws need 2' if parabolas and k < 2 else why2 or why_p)
    parts += [f'Approach 2 not fitted: {why}.', '']
  opt = scaling.compute_optimal(fit3, np.array([1e12, 1e13, 1e14]))
  parts += ['Compute-optimal tokens per parameter by approach 3: ' + ', '.join(
      f'{t:.1f} at C={c:.0e}' for c, t in zip(opt['flops'], opt['tokens_per_param']))
      + ' (Chinchilla: about 20).', '']
  kaplan, why_k = _attempt(_kaplan, runs, spec)
  if kaplan:
    kaplan, longest, biggest = kaplan
    krows = []
    for key, paper in (('N', KAPLAN['alpha_N']), ('D', KAPLAN['alpha_D'])):
      fit, boot, k = kaplan[key]
      krows.append([f'L({key})', f'{fit["alpha"]:.3f} {_interval(boot, "alpha")}',
                    f'{fit["E"]:.3g} {_interval(boot, "E")}', str(k), f'{paper}'])
    parts += ['## Kaplan: power laws with an irreducible term, L = E + A / x^alpha', '',
              f'L(N) over the sizes at the longest budget ({longest:,} tokens, N non-embedding); '
              f'L(D) of the largest fitted model ({biggest:,} non-embedding parameters).', '',
              markdown_table(['law', 'alpha', 'E', 'runs', 'Kaplan alpha'], krows), '']
  else:
    parts += [f'Kaplan\'s laws not fitted: {why_k}.', '']
  pred = _read_prediction(workdir)
  r = _report_spec(spec)
  held = [x for x in runs if x.group == r['held_out']]
  if pred:
    measured = held[0].loss if held and held[0].loss is not None else None
    line = (f'Held-out prediction ({pred["arm"]}, {pred["n_params"]:,} parameters, '
            f'{pred["n_tokens"]:,} tokens), written {pred["written"]} from '
            f'{len(pred["fitted_on"])} runs before it trained: {pred["predicted_loss"]:.4f} '
            f'[{pred["interval"][0]:.4f}, {pred["interval"][1]:.4f}]')
    if measured is not None:
      err = (measured - pred['predicted_loss']) / measured
      inside = pred['interval'][0] <= measured <= pred['interval'][1]
      line += (f'; measured {measured:.4f} ({err:+.2%}, '
               f'{"inside" if inside else "outside"} the interval).')
    else:
      line += '; not trained yet.'
    parts += ['## Held-out prediction', '', line, '']
  parts += ['![scaling](scaling.png)', '']
  out = {'report': os.path.join(workdir, 'report.md'),
         'plots': [os.path.join(workdir, 'scaling.png')],
         'table': markdown_table(header, rows), 'missing': [
             (x.name, 'training not finished') for x in runs if not x.summary]}
  plot(runs, spec, fit3, parabolas or [], env, out['plots'][0])
  write_text(out['report'], '\n'.join(parts))
  return out
