"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class ConfigError(ValueError):
  """A bad config key or value, path, corpus or workdir, named in the message."""
