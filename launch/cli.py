"""What every launch/ command shares: flag parsing and turning user mistakes into one line, exit 2."""

import functools
import os
import sys

from absl import app, flags, logging

from research.errors import ConfigError


def _parse(argv):
  try:
    _check_override_keys(argv)
    return flags.FLAGS(argv)
  except ConfigError as e:
    fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    # Flag values, and the experiment file, which config_flags runs while parsing: a mistake in
    # either is the user's, so one line, not a traceback.
    fail(_one_line(e))


def _one_line(e: BaseException) -> str:
  """The innermost ConfigError behind a wrapped exception if any, else the exception's last line."""
  seen, found = e, None
  while seen is not None:  # the innermost: ml_collections re-raises it with a traceback inside
    if isinstance(seen, ConfigError):
      found = seen
    seen = seen.__cause__ or seen.__context__
  if found is not None:
    return str(found)
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


def _check_override_keys(argv):
  """Names an unknown --config.a.b key (and the nearest known one) before ml_collections does."""
  import difflib
  from research.config import default_config, flat
  known = flat(default_config())
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg[len('--config='):].split(':', 1)[0]
      if not os.path.isfile(path):
        raise ConfigError(f'--config={path}: no such config file')
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].split('=', 1)[0]
      if key not in known:
        near = difflib.get_close_matches(key, known, n=1)
        hint = f' (did you mean {near[0]!r}?)' if near else ''
        raise ConfigError(f'unknown config key {key!r}{hint}')


def args_after_dashes(argv):
  """(our positional arguments, the arguments after '--' verbatim).

  absl drops the first '--' and appends what follows it to argv; sys.argv still shows where it was.
  """
  rest = sys.argv[sys.argv.index('--') + 1:] if '--' in sys.argv else []
  return argv[1:len(argv) - len(rest)], rest


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _quiet_closed_loops(unraisable):
  """sys.unraisablehook: after an orbax save fails (a full disk), tensorstore's writes still under
  way complete into orbax's event loop, closed by the failure, and each reports 'Event loop is
  closed' as an unraisable error; the run's own one-line error says what happened."""
  if isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(
      unraisable.exc_value):
    return
  sys.__unraisablehook__(unraisable)


def run(main):
  """absl's app.run, with ConfigError (and flag errors) as 'error: ...' and exit status 2."""
  sys.unraisablehook = _quiet_closed_loops

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


def load_config(holder):
  """The validated config of a --config flag (config_flags loads the file on first access).

  On the CPU, for a step with large temporaries, also makes malloc keep the memory XLA frees
  each step (research/cpu.py): here, because every main loads its config before starting JAX.
  """
  from research import config as config_lib
  path = flags.FLAGS[holder.name].config_filename if holder.present else None
  if path and not os.path.isfile(path.split(':', 1)[0]):
    raise ConfigError(f'--{holder.name}={path}: no such config file')
  if not path:
    raise ConfigError(f'--{holder.name} is required, e.g. --{holder.name}=experiments/quickstart.py')
  try:
    config = holder.value
  except Exception as e:  # an error inside the experiment file's get_config
    raise ConfigError(f'--{holder.name}={path}: {_one_line(e)}') from None
  config_lib.validate(config)
  from research import cpu
  if cpu.will_run_on_cpu() and cpu.needs_large_temporaries(config):
    cpu.keep_freed_memory()  # before JAX starts: the mains load their config first
  return config
