"""The report of a sweep directory: one module per report kind, named by the experiment file.

An experiment file declares `REPORT = dict(kind=..., ...)`, with whatever the kind needs (the
group order, the paper's numbers); launch.sweep copies it into sweep.json, and `write_report`
hands the directory to that kind's `write(workdir)`, which returns {'report', 'plots', 'table',
'missing'}. A sweep.json without "report" (written by hand, or by an older launch.sweep) gets
the kind whose result file its arms hold.

  extrapolation  perplexity by positional scheme and evaluation length (extrapolation.py)
  kv_depths      key-value retrieval accuracy by depth (kv_depths.py)
  objectives     downstream measures by architecture and objective (objectives.py)
  scaling        scaling-law fits of a size x budget sweep (scaling.py)
"""

import importlib
import os

from research.errors import ConfigError
from research.report.common import read_sweep

KINDS = ('extrapolation', 'kv_depths', 'objectives', 'scaling')


def kind_module(kind: str):
  if kind not in KINDS:
    raise ConfigError(f'report kind {kind!r} is not one of {", ".join(KINDS)}')
  return importlib.import_module(f'research.report.{kind}')


def report_kind(workdir: str) -> str:
  spec = read_sweep(workdir)
  kind = (spec.get('report') or {}).get('kind')
  if kind:
    return kind
  for name in KINDS:  # the first kind with a result in any arm; else the first kind
    result = kind_module(name).RESULT
    if any(os.path.exists(os.path.join(workdir, e['name'], result)) for e in spec['arms']):
      return name
  return KINDS[0]


def before_arm(workdir: str, arm: str, config) -> None:
  """What the sweep's report kind does before an arm (its config) trains: the scaling report
  writes its held-out prediction then; most kinds do nothing."""
  spec = read_sweep(workdir)
  kind = (spec.get('report') or {}).get('kind')
  hook = getattr(kind_module(kind), 'before_arm', None) if kind else None
  if hook is not None:
    hook(workdir, arm, config)


def write_report(workdir: str) -> dict:
  """Writes <workdir>/report.md and its plots; returns their paths and the main table."""
  return kind_module(report_kind(workdir)).write(workdir)
