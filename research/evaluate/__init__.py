"""Evaluations of a finished run, each writing its JSON into the run's directory:

  lengths     held-out perplexity and bits per byte at other lengths (lengths.py)
  kv_depths   key-value retrieval accuracy by the gold pair's depth (kv_depths.py)
  downstream  the measures every architecture and objective is compared on (downstream.py)

`evaluate(workdir, kind, **options)` runs one; kind '' is the one the run's data source names.
"""

import importlib
import json
import os

from research.errors import ConfigError

KINDS = ('lengths', 'kv_depths', 'downstream')  # each a module here with evaluate_run(workdir, ...) and RESULT


def kind_module(kind: str):
  if kind not in KINDS:
    raise ConfigError(f'evaluation {kind!r} is not one of {", ".join(KINDS)}')
  return importlib.import_module(f'research.evaluate.{kind}')



def default_kind(workdir: str) -> str:
  from research import config as config_lib
  from research.data import pipeline
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'--workdir={workdir} holds no run (no config.json)')
  return pipeline.task_class(config_lib.load_json(path)).EVALUATION


def evaluate(workdir: str, kind: str = '', **options) -> dict:
  """Runs evaluation `kind` ('' : the run's default) on the run in workdir; returns its result."""
  return kind_module(kind or default_kind(workdir)).evaluate_run(workdir, **options)


def is_current(workdir: str, kind: str, step: int) -> bool:
  """Whether the run's `kind` result exists and scores checkpoint `step`."""
  path = os.path.join(workdir, kind_module(kind or default_kind(workdir)).RESULT)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      return json.load(f).get('step') == step
  except (OSError, ValueError):
    return False
