"""Sweeps: a config file's `sweep(add)` lists its arms; each arm is a run in its own directory.

An experiment file that sweeps defines, beside `get_config(arg)`:
  def sweep(add, arg):  add(name='rope-s0', group='rope', **{'model.positional': 'rope', 'seed': 0})
  EVALUATE = dict(lengths='1x,2x,4x', stride=0.5, max_tokens=8192)   # optional: launch.evaluate
`group` names arms that differ only by seed, for the report's mean and std.
"""

import dataclasses
import importlib.util
import os

import ml_collections

from research import config as config_lib
from research.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  group: str
  overrides: dict


def load_module(spec: str):
  """The experiment module and the argument after ':' in 'path.py[:arg]'."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'--config={path}: no such config file')
  mod_spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  if not hasattr(module, 'sweep'):
    raise ConfigError(f'--config={path} defines no sweep(add, arg)')
  return module, arg or None


def arms(module, arg) -> list:
  out = []

  def add(*, name, group=None, **overrides):
    if any(a.name == name for a in out):
      raise ConfigError(f'sweep: two arms named {name!r}')
    if not name or os.sep in name or name.startswith('.'):
      raise ConfigError(f'sweep: bad arm name {name!r}')
    out.append(Arm(name, group or name, overrides))

  module.sweep(add, arg)
  if not out:
    raise ConfigError('sweep: the config file adds no arms')
  return out


def arm_config(base, arm: Arm, sweep_dir: str = '') -> ml_collections.ConfigDict:
  """base with the arm's dotted-key overrides, validated. '{sweep}' in a string value is the
  sweep's directory (an arm can start from another arm's checkpoint: train.init_from)."""
  c = ml_collections.ConfigDict(base.to_dict())
  known = config_lib.flat(config_lib.default_config())
  for key, value in arm.overrides.items():
    if isinstance(value, str) and '{sweep}' in value:
      value = value.replace('{sweep}', sweep_dir)
    if key not in known:
      raise ConfigError(f'sweep arm {arm.name}: unknown config key {key!r}')
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  config_lib.validate(c)
  return c
