"""The one exception type the command line turns into a one-line message."""


class FlaxMnistError(Exception):
  """A user-facing error: bad input, bad config, missing data.

  The CLI prints its message on one line with no traceback; library callers can
  catch it like any exception.
  """


class DataError(FlaxMnistError):
  """A data file or folder is missing, damaged or not MNIST."""


class ConfigError(FlaxMnistError):
  """An unknown config field, preset or model, or a bad value."""


def check_choice(kind: str, value: str, choices) -> None:
  """Raises a `ConfigError` listing `choices` unless `value` is one of them."""
  if value not in choices:
    raise ConfigError(
        f'unknown {kind} {value!r}; choose one of: {", ".join(choices)}')


class TrainingStopped(FlaxMnistError):
  """Training stopped on a signal (preemption, Ctrl-C) after saving a checkpoint."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.signal_number = signal_number


class TrainingDiverged(FlaxMnistError):
  """The loss or the parameters stopped being finite; nothing after is saved."""


def first_line(error: BaseException, with_type: bool = False) -> str:
  """The first line of `error`'s message, after its type's name if asked;
  the type's name alone when the message is empty."""
  text = str(error).strip()
  if not text:
    return type(error).__name__
  line = text.splitlines()[0]
  return f'{type(error).__name__}: {line}' if with_type else line
