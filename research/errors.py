"""The exception types the CLI prints as one line, exit status 2: user mistakes (ConfigError) and
runs that cannot go on (RunError), with write_errors, which names the path and cause of a failed write."""

import contextlib
import os
import re


class ConfigError(ValueError):
  """A bad config key or value, path, corpus or workdir, named in the message."""


class RunError(ConfigError):
  """A run that cannot go on (a non-finite loss, a full disk, a workdir another process is
  training in), named in one line like a ConfigError; the workdir keeps its last good checkpoint."""


def first_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message (orbax's run to pages)."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return (lines[0] if lines else type(e).__name__)[:300]


_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")  # how tensorstore reports an errno
_FAILED_PATH = re.compile(r'Failed (?:writing|to open|to write)[^"]*"([^"]+)"')


def os_error(e: BaseException):
  """(errno, path or None) of an operating-system error behind e (also inside orbax's and
  tensorstore's wrappers), else None."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return seen.errno, seen.filename
    code = _OS_ERROR_CODE.search(str(seen))
    if code:
      path = _FAILED_PATH.search(str(seen))
      return int(code.group(1)), path.group(1) if path else None
    seen = seen.__cause__ or seen.__context__
  return None


@contextlib.contextmanager
def write_errors(what: str):
  """An operating-system error while writing `what` (a full disk, a quota, a read-only or vanished
  filesystem) becomes a RunError naming the cause and the path that failed."""
  try:
    yield
  except RunError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # orbax wraps the OSError in others
    found = os_error(e)
    if found is None:
      raise
    code, path = found
    raise RunError(f'cannot write {what}: {os.strerror(code)}'
                   + (f' ({path})' if path and path != what else '')) from e
