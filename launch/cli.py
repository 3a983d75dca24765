"""What every launch/ command shares: flag parsing and turning user mistakes into one line, exit 2."""

import functools
import sys

from absl import app, flags, logging

from research.errors import ConfigError


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except ConfigError as e:
    fail(str(e))


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def run(main):
  """absl's app.run, with ConfigError (and flag errors) as 'error: ...' and exit status 2."""

  @functools.wraps(main)
  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      # orbax logs every checkpoint step at INFO; progress has its own bar.
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except ConfigError as e:
      fail(str(e))

  app.run(guarded, flags_parser=_parse)


def load_config(flag_value):
  """The config from --config, validated; the flag holds it after overrides."""
  from research import config as config_lib
  if flag_value is None:
    raise ConfigError('--config is required, e.g. --config=experiments/quickstart.py')
  config_lib.validate(flag_value)
  return flag_value
